#!/usr/bin/env python3
"""Writes blobs.txt and shares.txt: escrow blobs and recovery-key shares made independently of the Rust code.

Blobs: Python `cryptography`'s HPKE (OpenSSL), DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM, single shot,
with the `info` and header of client/src/escrow/mod.rs. Shares: Shamir over GF(2^8) with the AES polynomial
(x^8 + x^4 + x^3 + x + 1), evaluated at x = 1..n, written as the 32 words of client/src/escrow/shares.rs.
Secrets, payloads and polynomials come from random.Random(SEED); HPKE's ephemeral keys come from the OS, so the
blobs differ on every run (the checked-in ones are from one run).
"""

import hashlib
import pathlib
import random

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

SEED = 20261203
HERE = pathlib.Path(__file__).resolve().parent
WORDS = (HERE.parent.parent / "wordlist" / "bip39-english.txt").read_text().split()
assert len(WORDS) == 2048

rng = random.Random(SEED)
suite = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)


def secret_bytes():
    """32 random bytes, clamped as X25519 (and x25519-dalek's StaticSecret) stores them."""
    key = bytearray(rng.randbytes(32))
    key[0] &= 248
    key[31] &= 127
    key[31] |= 64
    return bytes(key)


def spki(secret):
    public = x25519.X25519PrivateKey.from_private_bytes(secret).public_key()
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def info(user_id, fingerprint, prefixed=True):
    user = user_id.encode()
    if not prefixed:
        return b"e2ee-ca escrow v1" + user + fingerprint
    return b"e2ee-ca escrow v1" + len(user).to_bytes(2, "big") + user + len(fingerprint).to_bytes(2, "big") + fingerprint


def seal(secret, user_id, payload, header_secret=None, prefixed=True, version=1):
    fingerprint = hashlib.sha256(spki(secret)).digest()
    header_fingerprint = hashlib.sha256(spki(header_secret or secret)).digest()
    public = x25519.X25519PrivateKey.from_private_bytes(secret).public_key()
    sealed = suite.encrypt(payload, public, info=info(user_id, fingerprint, prefixed))
    return b"e2ee-esc" + bytes([version]) + header_fingerprint + sealed


def blob_cases():
    alice_key, other_key = secret_bytes(), secret_bytes()
    alice_payload = rng.randbytes(1217)
    alice_blob = seal(alice_key, "alice", alice_payload)
    zoe_payload = rng.randbytes(1)
    cases = [
        ("alice", "opens", alice_key, "alice", alice_payload, alice_blob),
        ("unicode-user-id", "opens", other_key, "Zoë_Ünal@example.org", zoe_payload,
         seal(other_key, "Zoë_Ünal@example.org", zoe_payload)),
        ("fail_other_user", "does-not-open", alice_key, "bob", None, alice_blob),
        ("fail_user_id_case", "does-not-open", alice_key, "Alice", None, alice_blob),
        ("fail_other_recovery_key", "wrong-recovery-key", other_key, "alice", None, alice_blob),
        ("fail_header_names_the_other_key", "does-not-open", other_key, "alice", None,
         seal(alice_key, "alice", alice_payload, header_secret=other_key)),
        ("fail_info_without_length_prefixes", "does-not-open", alice_key, "alice", None,
         seal(alice_key, "alice", alice_payload, prefixed=False)),
        ("fail_version_2", "unsupported-version", alice_key, "alice", None,
         seal(alice_key, "alice", alice_payload, version=2)),
        ("fail_truncated", "malformed", alice_key, "alice", None, alice_blob[:8 + 1 + 32 + 32 + 16]),
        ("fail_flipped_tag_bit", "does-not-open", alice_key, "alice", None,
         alice_blob[:-1] + bytes([alice_blob[-1] ^ 0x80])),
    ]
    lines = [
        "# Escrow blobs made by make-vectors.py with Python cryptography's HPKE (see README.md).",
        "# secret: the raw X25519 recovery secret; spki: its public key as cryptography encodes it;",
        "# payload: what the blob opens to (expect: opens only).",
    ]
    for name, expect, secret, user_id, payload, blob in cases:
        lines += ["", f"name: {name}", f"expect: {expect}", f"secret: {secret.hex()}", f"spki: {spki(secret).hex()}",
                  f"user_id: {user_id}"]
        if payload is not None:
            lines.append(f"payload: {payload.hex()}")
        lines.append(f"blob: {blob.hex()}")
    (HERE / "blobs.txt").write_text("\n".join(lines) + "\n")


def gf_mul(a, b):
    result = 0
    while b:
        if b & 1:
            result ^= a
        a = (a << 1) ^ (0x11B if a & 0x80 else 0)
        b >>= 1
    return result


def evaluate(coefficients, x):
    """coefficients[0] is the secret byte."""
    result = 0
    for coefficient in reversed(coefficients):
        result = gf_mul(result, x) ^ coefficient
    return result


def words(threshold, index, split_id, value):
    payload = bytes([1, threshold, index]) + split_id + value
    encoded = payload + hashlib.sha256(b"e2ee-ca recovery share v1" + payload).digest()[:5]
    number = int.from_bytes(encoded, "big")
    return " ".join(WORDS[(number >> (11 * (31 - position))) & 0x7FF] for position in range(32))


def share_cases():
    lines = [
        "# Shares of X25519 recovery secrets made by make-vectors.py (see README.md): a split, then one share per line.",
        "# `combine:` lists 1-based indices of shares that together give the secret; `fail_*` splits list",
        "# shares one of which is wrong, with `expect: wrong-key`.",
    ]
    for name, threshold, count, combine, corrupt in [
        ("2-of-2", 2, 2, [1, 2], None),
        ("3-of-5", 3, 5, [5, 1, 3], None),
        ("16-of-16", 16, 16, list(range(16, 0, -1)), None),
        ("fail_3-of-5_one_value_byte_changed", 3, 5, [2, 4, 5], 4),
    ]:
        secret = secret_bytes()
        split_id = rng.randbytes(4)
        polynomials = [[byte] + [rng.randrange(256) for _ in range(threshold - 1)] for byte in secret]
        lines += ["", f"name: {name}", f"expect: {'wrong-key' if corrupt else 'combines'}", f"secret: {secret.hex()}",
                  f"spki: {spki(secret).hex()}", f"split_id: {split_id.hex()}", f"threshold: {threshold}",
                  f"combine: {' '.join(map(str, combine))}"]
        for index in range(1, count + 1):
            value = bytearray(evaluate(polynomial, index) for polynomial in polynomials)
            if index == corrupt:
                value[10] ^= 0x5A
            lines.append(f"share {index}: {words(threshold, index, split_id, bytes(value))}")
    (HERE / "shares.txt").write_text("\n".join(lines) + "\n")


blob_cases()
share_cases()
