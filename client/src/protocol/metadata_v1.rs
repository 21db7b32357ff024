//! Reading folder metadata v1.0–1.2 (nextcloud-e2ee.md §2.2): legacy folders written by desktop 2.x–3.x and
//! Android until 2023–24, read so that their files stay reachable. This client never writes v1.
//!
//! Opening one takes three steps:
//! 1. v1.2 only: recompute `checksum` from the owner's mnemonic, the sorted file ids and the wrapped key string,
//!    and refuse the document unless it matches (it is v1's only integrity check on the file list);
//! 2. unwrap the metadata key: base64 → RSA-OAEP-SHA256 → base64 → base64 → 16 bytes (base64 is applied twice
//!    before RSA); v1.0 has one key per rotation, and each file names the index of its own;
//! 3. decrypt each file's `encrypted` (AES-128-GCM under the metadata key, 16-byte IV after the separator) into
//!    base64 of the JSON `{key, filename, mimetype}`.
//!
//! v1 has no signature and no counter: apart from the v1.2 checksum, nothing protects the document as a whole.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::crypto::constant_time_eq;
use crate::crypto::gcm::{self, Aes128Key, GcmNonce};
use crate::crypto::rsa::RsaPrivateKey;
use crate::format::metadata::FileEntry;
use crate::format::metadata_v1::{
    FileEntryV1, FileSecretsV1, MetadataV1Document, MetadataV1Version, WrappedMetadataKeys, split_encrypted,
};
use crate::mnemonic::Mnemonic;
use crate::protocol::metadata::MetadataError;

/// A v1.x folder as read: the same file entries a v2 folder has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderV1 {
    /// The version the document had.
    pub version: MetadataV1Version,
    /// Files and subfolders: obfuscated id → what decrypts it.
    pub files: BTreeMap<String, FileEntry>,
}

/// Opens a v1.x document with its owner's private key; for v1.2, first checks `checksum` against `mnemonic`,
/// which v1.0 and v1.1 do not need (`MnemonicRequired` if a v1.2 document comes without it).
pub fn open_metadata_v1(
    document: &MetadataV1Document,
    private_key: &RsaPrivateKey,
    mnemonic: Option<&Mnemonic>,
) -> Result<FolderV1, MetadataError> {
    // 1. The checksum, before any decryption: a mismatch means the document is not this user's, or was altered.
    if document.version == MetadataV1Version::V1_2 {
        let mnemonic = mnemonic.ok_or(MetadataError::MnemonicRequired)?;
        let WrappedMetadataKeys::Single(wrapped_key) = &document.metadata_keys else {
            return Err(MetadataError::ChecksumMismatch);
        };
        let file_ids: Vec<&str> = document.files.keys().map(String::as_str).collect();
        let expected = v1_2_checksum(mnemonic, &file_ids, wrapped_key);
        let matches = document
            .checksum
            .as_deref()
            .is_some_and(|checksum| constant_time_eq(checksum.as_bytes(), expected.as_bytes()));
        if !matches {
            return Err(MetadataError::ChecksumMismatch);
        }
    }
    // 2. and 3. Each key is unwrapped once, when the first file under it is decrypted.
    let mut keys: BTreeMap<u64, Aes128Key> = BTreeMap::new();
    let mut files = BTreeMap::new();
    for (file_id, entry) in &document.files {
        let (index, wrapped_key) = wrapped_key_for(&document.metadata_keys, entry)?;
        let key = match keys.entry(index) {
            Entry::Occupied(occupied) => occupied.into_mut(),
            Entry::Vacant(vacant) => vacant.insert(unwrap_key_v1(wrapped_key, private_key)?),
        };
        files.insert(file_id.clone(), decrypt_file_entry(entry, key)?);
    }
    Ok(FolderV1 {
        version: document.version,
        files,
    })
}

/// The v1.2 `metadata.checksum` (§2.2): lowercase hex SHA-256 of the mnemonic passphrase, then every file id in
/// sorted order, then the base64 string of the wrapped metadata key.
pub fn v1_2_checksum(mnemonic: &Mnemonic, file_ids: &[&str], encrypted_metadata_key: &str) -> String {
    let mut sorted_ids = file_ids.to_vec();
    sorted_ids.sort_unstable();
    let mut hasher = Sha256::new();
    hasher.update(mnemonic.passphrase().as_bytes());
    for file_id in sorted_ids {
        hasher.update(file_id.as_bytes());
    }
    hasher.update(encrypted_metadata_key.as_bytes());
    hex::encode(hasher.finalize())
}

/// The wrapped key `entry` is under, with its index: in v1.0 the one it names, or the highest if it names none;
/// in v1.1/1.2 the only one.
fn wrapped_key_for<'a>(
    metadata_keys: &'a WrappedMetadataKeys,
    entry: &FileEntryV1,
) -> Result<(u64, &'a str), MetadataError> {
    match metadata_keys {
        WrappedMetadataKeys::Single(wrapped) => Ok((0, wrapped)),
        WrappedMetadataKeys::Indexed(indexed) => {
            let index = match entry.metadata_key {
                Some(index) => index,
                None => indexed.keys().next_back().copied().unwrap_or_default(),
            };
            let wrapped = indexed.get(&index).ok_or(MetadataError::UnknownKeyIndex(index))?;
            Ok((index, wrapped))
        }
    }
}

/// base64 → RSA-OAEP → base64 → base64 → exactly 16 bytes.
fn unwrap_key_v1(wrapped_base64: &str, private_key: &RsaPrivateKey) -> Result<Aes128Key, MetadataError> {
    let wrapped = STANDARD
        .decode(wrapped_base64)
        .map_err(|_| MetadataError::Base64("metadataKey"))?;
    let doubled = private_key.decrypt(&wrapped).map_err(|_| MetadataError::KeyUnwrap)?;
    let once = Zeroizing::new(
        STANDARD
            .decode(doubled.as_slice())
            .map_err(|_| MetadataError::KeyUnwrap)?,
    );
    let raw = Zeroizing::new(STANDARD.decode(once.as_slice()).map_err(|_| MetadataError::KeyUnwrap)?);
    Aes128Key::from_slice(&raw).map_err(|_| MetadataError::KeyUnwrap)
}

/// `encrypted` → AES-128-GCM open → base64 → JSON, joined with the entry's content nonce and tag.
fn decrypt_file_entry(entry: &FileEntryV1, key: &Aes128Key) -> Result<FileEntry, MetadataError> {
    let (ciphertext_base64, nonce_base64) =
        split_encrypted(&entry.encrypted).ok_or(MetadataError::Base64("encrypted"))?;
    let ciphertext = STANDARD
        .decode(ciphertext_base64)
        .map_err(|_| MetadataError::Base64("encrypted"))?;
    let nonce = GcmNonce::from_slice(
        &STANDARD
            .decode(nonce_base64)
            .map_err(|_| MetadataError::Base64("encrypted nonce"))?,
    )?;
    let plaintext = gcm::open(key, &nonce, &ciphertext)?;
    let json = Zeroizing::new(
        STANDARD
            .decode(plaintext.as_slice())
            .map_err(|_| MetadataError::Base64("decrypted file entry"))?,
    );
    let secrets: FileSecretsV1 = serde_json::from_slice(&json).map_err(MetadataError::InnerJson)?;
    Ok(FileEntry {
        filename: secrets.filename,
        mimetype: secrets.mimetype,
        nonce: entry.initialization_vector,
        authentication_tag: entry.authentication_tag,
        key: secrets.key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::rsa::RsaPublicKey;

    fn json(text: &str) -> serde_json::Value {
        serde_json::from_str(text).expect("json")
    }

    struct Owner {
        key: RsaPrivateKey,
        mnemonic: Mnemonic,
        certificate_pem: String,
    }

    fn alice() -> Owner {
        let value = json(include_str!("../../testdata/nextcloud/alice.json"));
        Owner {
            key: RsaPrivateKey::from_pkcs8_pem(value["privateKeyPem"].as_str().expect("key")).expect("pkcs8"),
            mnemonic: Mnemonic::parse(value["mnemonic"].as_str().expect("mnemonic")).expect("mnemonic"),
            certificate_pem: value["certificatePem"].as_str().expect("certificate").to_owned(),
        }
    }

    fn bob_key() -> RsaPrivateKey {
        let value = json(include_str!("../../testdata/nextcloud/bob.json"));
        RsaPrivateKey::from_pkcs8_pem(value["privateKeyPem"].as_str().expect("key")).expect("pkcs8")
    }

    /// Opens a generated document (testdata/metadata-v1, Python `cryptography`) and compares with what its
    /// generator recorded.
    fn check(document_json: &str, version: &str) -> MetadataV1Document {
        let owner = alice();
        let document = MetadataV1Document::parse(document_json).expect("parse");
        let folder = open_metadata_v1(&document, &owner.key, Some(&owner.mnemonic)).expect("open");
        let expected = &json(include_str!("../../testdata/metadata-v1/expected.json"))[version]["files"];
        let expected = expected.as_object().expect("files");
        assert_eq!(folder.files.len(), expected.len());
        for (file_id, secrets) in expected {
            let file = &folder.files[file_id];
            assert_eq!(file.filename, secrets["filename"].as_str().expect("filename"));
            assert_eq!(file.mimetype, secrets["mimetype"].as_str().expect("mimetype"));
            assert_eq!(
                STANDARD.encode(file.key.as_bytes()),
                secrets["key"].as_str().expect("key")
            );
            assert_eq!(file.nonce, document.files[file_id].initialization_vector);
        }
        document
    }

    #[test]
    fn generated_v1_0_v1_1_and_v1_2_documents_open() {
        let v1_0 = check(include_str!("../../testdata/metadata-v1/v1.0.json"), "v1.0");
        assert_eq!(v1_0.version, MetadataV1Version::V1_0);
        assert_eq!(
            check(include_str!("../../testdata/metadata-v1/v1.1.json"), "v1.1").version,
            MetadataV1Version::V1_1
        );
        let v1_2 = check(include_str!("../../testdata/metadata-v1/v1.2.json"), "v1.2");
        assert_eq!(v1_2.version, MetadataV1Version::V1_2);

        // Each wrapped key unwraps to what the generator recorded.
        let owner = alice();
        let expected = json(include_str!("../../testdata/metadata-v1/expected.json"));
        let WrappedMetadataKeys::Indexed(indexed) = &v1_0.metadata_keys else {
            panic!("v1.0 has indexed keys")
        };
        for (index, wrapped) in indexed {
            let key = unwrap_key_v1(wrapped, &owner.key).expect("unwrap");
            assert_eq!(
                STANDARD.encode(key.as_bytes()),
                expected["v1.0"]["metadataKeys"][index.to_string()]
                    .as_str()
                    .expect("key")
            );
        }
    }

    #[test]
    fn only_v1_2_needs_the_mnemonic() {
        let owner = alice();
        for document_json in [
            include_str!("../../testdata/metadata-v1/v1.0.json"),
            include_str!("../../testdata/metadata-v1/v1.1.json"),
        ] {
            let document = MetadataV1Document::parse(document_json).expect("parse");
            assert!(
                !open_metadata_v1(&document, &owner.key, None)
                    .expect("open")
                    .files
                    .is_empty()
            );
        }
        let v1_2 = MetadataV1Document::parse(include_str!("../../testdata/metadata-v1/v1.2.json")).expect("parse");
        assert!(matches!(
            open_metadata_v1(&v1_2, &owner.key, None),
            Err(MetadataError::MnemonicRequired)
        ));
    }

    #[test]
    fn nextcloud_vector_android_checksum_v1_2() {
        let vector = json(include_str!("../../testdata/nextcloud/android-checksum-v1.2.json"));
        let mnemonic = Mnemonic::parse(vector["mnemonic"].as_str().expect("mnemonic")).expect("parse");
        let file_ids: Vec<&str> = vector["fileIds"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|id| id.as_str().expect("id"))
            .collect();
        let encrypted_key = vector["encryptedMetadataKey"].as_str().expect("key");
        let expected = vector["expectedChecksum"].as_str().expect("checksum");
        assert_eq!(v1_2_checksum(&mnemonic, &file_ids, encrypted_key), expected);
        // The ids are given unsorted: the order must not matter, but every id must.
        let reversed: Vec<&str> = file_ids.iter().rev().copied().collect();
        assert_eq!(v1_2_checksum(&mnemonic, &reversed, encrypted_key), expected);
        assert_ne!(v1_2_checksum(&mnemonic, &file_ids[..1], encrypted_key), expected);
        let other = Mnemonic::generate().expect("mnemonic");
        assert_ne!(v1_2_checksum(&other, &file_ids, encrypted_key), expected);
    }

    /// A document around the Android vector: with its checksum the check passes and opening goes on to the key,
    /// which the vector truncated (not base64); with any other checksum it stops at the check.
    #[test]
    fn nextcloud_vector_android_checksum_v1_2_is_enforced_on_open() {
        let vector = json(include_str!("../../testdata/nextcloud/android-checksum-v1.2.json"));
        let mnemonic = Mnemonic::parse(vector["mnemonic"].as_str().expect("mnemonic")).expect("parse");
        let encrypted_key = vector["encryptedMetadataKey"].as_str().expect("key");
        let entry: FileEntryV1 = serde_json::from_value(serde_json::json!({
            "encrypted": "AAAA|AAAAAAAAAAAAAAAAAAAAAA==",
            "initializationVector": "AAAAAAAAAAAAAAAAAAAAAA==",
            "authenticationTag": "AAAAAAAAAAAAAAAAAAAAAA==",
        }))
        .expect("entry");
        let files: BTreeMap<String, FileEntryV1> = vector["fileIds"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|id| (id.as_str().expect("id").to_owned(), entry.clone()))
            .collect();
        let document = |checksum: &str| MetadataV1Document {
            version: MetadataV1Version::V1_2,
            metadata_keys: WrappedMetadataKeys::Single(encrypted_key.to_owned()),
            checksum: Some(checksum.to_owned()),
            files: files.clone(),
        };
        let expected = vector["expectedChecksum"].as_str().expect("checksum");
        assert!(matches!(
            open_metadata_v1(&document(expected), &alice().key, Some(&mnemonic)),
            Err(MetadataError::Base64("metadataKey"))
        ));
        let other = v1_2_checksum(&mnemonic, &[], encrypted_key);
        assert!(matches!(
            open_metadata_v1(&document(&other), &alice().key, Some(&mnemonic)),
            Err(MetadataError::ChecksumMismatch)
        ));
    }

    #[test]
    fn a_bad_or_missing_checksum_is_refused() {
        let owner = alice();
        let document = MetadataV1Document::parse(include_str!("../../testdata/metadata-v1/v1.2.json")).expect("parse");
        let checksum = document.checksum.clone().expect("checksum");

        let mut flipped = document.clone();
        let last = if checksum.ends_with('0') { "1" } else { "0" };
        flipped.checksum = Some(format!("{}{last}", &checksum[..checksum.len() - 1]));
        let mut uppercase = document.clone();
        uppercase.checksum = Some(checksum.to_uppercase());
        let mut missing = document.clone();
        missing.checksum = None;
        let mut dropped_file = document.clone();
        let first_id = dropped_file.files.keys().next().cloned().expect("a file");
        dropped_file.files.remove(&first_id);
        let mut renamed_file = document.clone();
        let entry = renamed_file.files.remove(&first_id).expect("entry");
        renamed_file
            .files
            .insert("ffffffffffffffffffffffffffffffff".into(), entry);
        for altered in [flipped, uppercase, missing, dropped_file, renamed_file] {
            assert!(matches!(
                open_metadata_v1(&altered, &owner.key, Some(&owner.mnemonic)),
                Err(MetadataError::ChecksumMismatch)
            ));
        }
        // Somebody else's mnemonic (v1.2 folders are bound to their owner's).
        let other = Mnemonic::generate().expect("mnemonic");
        assert!(matches!(
            open_metadata_v1(&document, &owner.key, Some(&other)),
            Err(MetadataError::ChecksumMismatch)
        ));
        // A document rewrapped for another key fails the checksum, before any unwrapping.
        let mut rewrapped = document.clone();
        let public_key = RsaPublicKey::from_certificate_pem(&owner.certificate_pem).expect("certificate");
        let fresh = STANDARD.encode(STANDARD.encode([7u8; 16]));
        rewrapped.metadata_keys =
            WrappedMetadataKeys::Single(STANDARD.encode(public_key.encrypt(fresh.as_bytes()).expect("wrap")));
        assert!(matches!(
            open_metadata_v1(&rewrapped, &owner.key, Some(&owner.mnemonic)),
            Err(MetadataError::ChecksumMismatch)
        ));
    }

    #[test]
    fn wrong_keys_and_altered_entries_are_refused() {
        let owner = alice();
        for document_json in [
            include_str!("../../testdata/metadata-v1/v1.0.json"),
            include_str!("../../testdata/metadata-v1/v1.1.json"),
            include_str!("../../testdata/metadata-v1/v1.2.json"),
        ] {
            let document = MetadataV1Document::parse(document_json).expect("parse");
            assert!(matches!(
                open_metadata_v1(&document, &bob_key(), Some(&owner.mnemonic)),
                Err(MetadataError::KeyUnwrap)
            ));
            let mut altered = document.clone();
            let entry = altered.files.values_mut().next().expect("a file");
            let (ciphertext, nonce) = split_encrypted(&entry.encrypted).expect("split");
            let mut sealed = STANDARD.decode(ciphertext).expect("b64");
            sealed[0] ^= 1;
            entry.encrypted = format!("{}|{nonce}", STANDARD.encode(&sealed));
            assert!(matches!(
                open_metadata_v1(&altered, &owner.key, Some(&owner.mnemonic)),
                Err(MetadataError::Authentication)
            ));
        }
        // v1.0: a file naming a key index the document lacks.
        let mut document =
            MetadataV1Document::parse(include_str!("../../testdata/metadata-v1/v1.0.json")).expect("parse");
        document.files.values_mut().next().expect("a file").metadata_key = Some(9);
        assert!(matches!(
            open_metadata_v1(&document, &owner.key, Some(&owner.mnemonic)),
            Err(MetadataError::UnknownKeyIndex(9))
        ));
        // v1.0: a file naming the older key while the entry is under the newer one.
        let mut document =
            MetadataV1Document::parse(include_str!("../../testdata/metadata-v1/v1.0.json")).expect("parse");
        for entry in document.files.values_mut() {
            entry.metadata_key = entry.metadata_key.map(|index| 1 - index);
        }
        assert!(matches!(
            open_metadata_v1(&document, &owner.key, Some(&owner.mnemonic)),
            Err(MetadataError::Authentication)
        ));
    }
}
