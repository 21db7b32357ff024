# Vectors for GCM's inc32 counter wrap with 16-byte nonces: the nonce is solved so that J0's low word is chosen.
import random
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

R = 0xE1 << 120
def gmul(x, y):  # SP 800-38D algorithm 1
    z, v = 0, y
    for i in range(128):
        if (x >> (127 - i)) & 1:
            z ^= v
        v = (v >> 1) ^ R if v & 1 else v >> 1
    return z
def gpow(x, e):
    r = 1 << 127
    while e:
        if e & 1: r = gmul(r, x)
        x = gmul(x, x); e >>= 1
    return r
def ecb(key, block):
    e = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return e.update(block) + e.finalize()
def ghash(h, blocks):
    y = 0
    for b in blocks:
        y = gmul(y ^ int.from_bytes(b, 'big'), h)
    return y

rng = random.Random(20261127)
lines = []
for key_len, low, pt_len in [(16, 0xFFFFFFF0, 300), (16, 0xFFFFFFFE, 33), (16, 0xFFFFFFFF, 64), (16, 0xFFFFFFF0, 16 * 15),
                             (16, 0xFFFFFFF0, 16 * 15 + 1), (32, 0xFFFFFFF8, 1000)]:
    key = bytes(rng.getrandbits(8) for _ in range(key_len))
    h = int.from_bytes(ecb(key, bytes(16)), 'big')
    h_inv = gpow(h, 2**128 - 2)
    assert gmul(h, h_inv) == 1 << 127
    j0 = (rng.getrandbits(96) << 32) | low
    length = 128
    iv = gmul(gmul(j0, h_inv) ^ length, h_inv).to_bytes(16, 'big')
    assert ghash(h, [iv, length.to_bytes(16, 'big')]) == j0
    pt = bytes(rng.getrandbits(8) for _ in range(pt_len))
    ct = AESGCM(key).encrypt(iv, pt, None)
    # Independent check that OpenSSL used J0 and inc32: keystream block i is E(J0 upper ‖ low+1+i mod 2^32).
    for i in range(pt_len // 16):
        counter = (j0 & ~0xFFFFFFFF) | ((low + 1 + i) & 0xFFFFFFFF)
        ks = ecb(key, counter.to_bytes(16, 'big'))
        assert bytes(a ^ b for a, b in zip(ct[16*i:16*i+16], pt[16*i:16*i+16])) == ks
    lines.append(f"# J0 = {j0:032x}")
    lines.append(" ".join([key.hex(), iv.hex(), pt.hex() or "-", ct.hex()]))
print("\n".join(lines))
