# Builds metadata v1.0, v1.1 and v1.2 documents for alice (../nextcloud/alice.json) as nextcloud-e2ee.md §2.2
# describes them, independently of the Rust client: Python `cryptography` (OpenSSL) for RSA-OAEP-SHA256 and AES-GCM.
# Run from this directory: python3 generate.py
import base64, hashlib, json, random
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

rng = random.Random(20261127)
alice = json.load(open("../nextcloud/alice.json"))
public_key = x509.load_pem_x509_certificate(alice["certificatePem"].encode()).public_key()
b64 = lambda data: base64.b64encode(data).decode()

def random_bytes(count):
    return bytes(rng.getrandbits(8) for _ in range(count))

def wrap(raw_key):
    # RSA-OAEP (SHA-256, MGF1-SHA-256) over base64(base64(raw key)); OAEP's own randomness comes from the OS.
    doubled = base64.b64encode(base64.b64encode(raw_key))
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    return b64(public_key.encrypt(doubled, oaep))

def file_entry(metadata_key, name, mimetype, separator="|", key_index=None):
    inner = {"key": b64(random_bytes(16)), "filename": name, "mimetype": mimetype, "version": 1}
    iv = random_bytes(16)
    sealed = AESGCM(metadata_key).encrypt(iv, base64.b64encode(json.dumps(inner).encode()), None)
    entry = {
        "encrypted": b64(sealed) + separator + b64(iv),
        "initializationVector": b64(random_bytes(16)),
        "authenticationTag": b64(random_bytes(16)),
    }
    if key_index is not None:
        entry["metadataKey"] = key_index
    return entry, inner

def file_id():
    return "%032x" % rng.getrandbits(128)

expected = {}

# v1.0: two keys (a rotation); one file under each; the older file uses the legacy "fA==" separator.
old_key, new_key = random_bytes(16), random_bytes(16)
(first_id, second_id) = (file_id(), file_id())
first, first_inner = file_entry(old_key, "old report.pdf", "application/pdf", separator="fA==", key_index=0)
second, second_inner = file_entry(new_key, "Photos", "httpd/unix-directory", key_index=1)
v1_0 = {"metadata": {"metadataKeys": {"0": wrap(old_key), "1": wrap(new_key)}, "version": 1},
        "files": {first_id: first, second_id: second}}
expected["v1.0"] = {"metadataKeys": {"0": b64(old_key), "1": b64(new_key)}, "files": {first_id: first_inner, second_id: second_inner}}

# v1.1: a single key, version as a string.
key = random_bytes(16)
third_id = file_id()
third, third_inner = file_entry(key, "notes.txt", "text/plain")
v1_1 = {"metadata": {"metadataKey": wrap(key), "version": "1.1"}, "files": {third_id: third}}
expected["v1.1"] = {"metadataKey": b64(key), "files": {third_id: third_inner}}

# v1.2: a single key plus the checksum over alice's mnemonic, the sorted file ids and the wrapped key string.
key = random_bytes(16)
files, inners = {}, {}
for name in ["b.txt", "a.txt", "ünïcode name.md"]:
    identifier = file_id()
    files[identifier], inners[identifier] = file_entry(key, name, "text/plain")
wrapped = wrap(key)
passphrase = "".join(alice["mnemonic"].split())
checksum = hashlib.sha256((passphrase + "".join(sorted(files)) + wrapped).encode()).hexdigest()
v1_2 = {"metadata": {"metadataKey": wrapped, "checksum": checksum, "version": 1.2}, "files": files}
expected["v1.2"] = {"metadataKey": b64(key), "checksum": checksum, "files": inners}

for name, document in [("v1.0.json", v1_0), ("v1.1.json", v1_1), ("v1.2.json", v1_2)]:
    with open(name, "w") as output:
        json.dump(document, output, indent=1)
        output.write("\n")
with open("expected.json", "w") as output:
    json.dump(expected, output, indent=1, ensure_ascii=False)
    output.write("\n")
