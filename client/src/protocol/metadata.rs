//! Folder metadata v2: unwrapping the metadata key, decrypting and encrypting the inner document,
//! and opening file-drop entries (nextcloud-e2ee.md §2.3, §2.6).
//!
//! Inner JSON → gzip → AES-128-GCM under the 16-byte metadata key with a fresh 16-byte nonce;
//! the metadata key is RSA-OAEP-SHA256-wrapped (raw bytes) for every user of the top-level folder.
//! Signatures (`protocol::signature`) and the folder-level checks (`protocol::folder`) build on this.

use std::io::{Read, Write};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::crypto::CryptoError;
use crate::crypto::gcm::{self, Aes128Key, GcmNonce, GcmTag, TAG_LEN};
use crate::crypto::rsa::{RsaPrivateKey, RsaPublicKey};
use crate::format::metadata::{
    EncryptedMetadata, FileEntry, FiledropEntry, FolderMetadata, MetadataDocument, MetadataFormatError, MetadataUser,
    MetadataVersion,
};

/// Largest inner document accepted after decompression: bounds a gzip bomb.
const MAX_INNER_LEN: u64 = 64 * 1024 * 1024;

/// Why metadata could not be opened or sealed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// The document or one of its base64 fields is malformed.
    #[error(transparent)]
    Format(#[from] MetadataFormatError),
    /// A base64 field does not decode.
    #[error("the {0} field is not valid base64")]
    Base64(&'static str),
    /// The user is not among the recipients.
    #[error("{0:?} is not a recipient of this folder's key")]
    NotARecipient(String),
    /// The wrapped key does not open with this private key, or is not a 16-byte key.
    #[error("the wrapped key does not open with this private key")]
    KeyUnwrap,
    /// The GCM tag did not verify, or the separate `authenticationTag` differs from the ciphertext's.
    #[error("the metadata does not authenticate (wrong key, or altered)")]
    Authentication,
    /// v1.2 metadata whose `checksum` is missing or differs from the one computed with this user's mnemonic:
    /// another user's folder, or the file list or the wrapped key was altered.
    #[error("the v1.2 metadata checksum does not match")]
    ChecksumMismatch,
    /// v1.2 metadata is checked against its owner's mnemonic, and none was given.
    #[error("v1.2 metadata can only be checked with its owner's mnemonic, and none was given")]
    MnemonicRequired,
    /// A v1.0 file names a metadata key index the document does not have.
    #[error("the v1.0 metadata has no key with index {0}")]
    UnknownKeyIndex(u64),
    /// The top-level metadata does not list this key's SHA-256 in `keyChecksums` (a substituted key).
    #[error("the metadata key is not listed in keyChecksums")]
    UnknownKey,
    /// The decrypted payload is not gzip or inflates past the size limit (or, when writing, gzip failed).
    #[error("the decrypted metadata is not valid gzip within {MAX_INNER_LEN} bytes")]
    Gzip,
    /// The decompressed payload is not the expected JSON.
    #[error("the decrypted metadata is malformed JSON: {0}")]
    InnerJson(serde_json::Error),
    /// The metadata's counter is lower than one this client already saw: a rollback (§2.5).
    #[error("metadata counter {counter} is below the last seen {last_seen}: rolled back")]
    RolledBack {
        /// The counter in the metadata.
        counter: u64,
        /// The highest counter this client saw for the folder.
        last_seen: u64,
    },
    /// A primitive failed (randomness, invalid lengths, backend).
    #[error(transparent)]
    Crypto(CryptoError),
}

impl From<CryptoError> for MetadataError {
    fn from(error: CryptoError) -> MetadataError {
        match error {
            CryptoError::Authentication => MetadataError::Authentication,
            other => MetadataError::Crypto(other),
        }
    }
}

/// A folder's metadata key (AES-128), shared by the top-level folder and all its subfolders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataKey(Aes128Key);

impl MetadataKey {
    /// A fresh key: on folder creation and on every change of users.
    pub fn generate() -> Result<MetadataKey, CryptoError> {
        Ok(MetadataKey(Aes128Key::generate()?))
    }

    /// Lowercase hex SHA-256 of the raw key: its `keyChecksums` entry.
    pub fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }
}

/// Someone to wrap the metadata key for.
#[derive(Debug, Clone)]
pub struct Recipient {
    /// The user id (or `s:<token>`).
    pub user_id: String,
    /// Their certificate, PEM; the key is wrapped for its public key. Checking it is the caller's job.
    pub certificate_pem: String,
}

/// Unwraps the metadata key that `document.users` holds for `user_id`.
pub fn unwrap_metadata_key(
    document: &MetadataDocument,
    user_id: &str,
    private_key: &RsaPrivateKey,
) -> Result<MetadataKey, MetadataError> {
    let user = document
        .users
        .iter()
        .find(|user| user.user_id == user_id)
        .ok_or_else(|| MetadataError::NotARecipient(user_id.to_owned()))?;
    Ok(MetadataKey(unwrap_key(&user.encrypted_metadata_key, private_key)?))
}

/// Decrypts `document` with `key`. For a top-level folder (one with `users`), also requires the key's
/// checksum to be in `keyChecksums`. Counter and signature checks are the caller's (§2.4, §2.5).
pub fn decrypt_metadata(document: &MetadataDocument, key: &MetadataKey) -> Result<FolderMetadata, MetadataError> {
    let metadata = &document.metadata;
    let inner = open_gzip(
        &key.0,
        &metadata.ciphertext,
        &metadata.nonce,
        &metadata.authentication_tag,
    )?;
    let folder: FolderMetadata = serde_json::from_slice(&inner).map_err(MetadataError::InnerJson)?;
    if !document.users.is_empty() && !folder.key_checksums.contains(&key.checksum()) {
        return Err(MetadataError::UnknownKey);
    }
    Ok(folder)
}

/// Refuses metadata older than what this client already saw. Like Android, an equal counter is accepted
/// (re-reading unchanged metadata); the writer increments the counter on every change.
pub fn check_counter(folder: &FolderMetadata, last_seen: u64) -> Result<(), MetadataError> {
    if folder.counter < last_seen {
        return Err(MetadataError::RolledBack {
            counter: folder.counter,
            last_seen,
        });
    }
    Ok(())
}

/// Moves every `filedrop` entry addressed to `user_id` into `folder.files` and empties `filedrop` (§2.6).
/// All entries are opened before anything changes, so on error neither argument is modified.
/// The caller then increments the counter, re-encrypts, signs and uploads under the folder lock.
pub fn merge_filedrop(
    document: &mut MetadataDocument,
    folder: &mut FolderMetadata,
    user_id: &str,
    private_key: &RsaPrivateKey,
) -> Result<usize, MetadataError> {
    let Some(filedrop) = &document.filedrop else {
        return Ok(0);
    };
    let mut opened = Vec::with_capacity(filedrop.len());
    for (file_id, entry) in filedrop {
        opened.push((file_id.clone(), open_filedrop_entry(entry, user_id, private_key)?));
    }
    let count = opened.len();
    folder.files.extend(opened);
    document.filedrop = None;
    Ok(count)
}

/// Encrypts `folder` under `key` as a v2.0 document with a fresh 16-byte nonce and no `|nonce` suffix.
///
/// With recipients (a top-level folder) the key is wrapped for each of them, and its checksum is appended
/// to `keyChecksums` if missing. Without recipients it is a subfolder document.
pub fn encrypt_metadata(
    folder: &FolderMetadata,
    key: &MetadataKey,
    recipients: &[Recipient],
) -> Result<MetadataDocument, MetadataError> {
    let mut folder = folder.clone();
    if !recipients.is_empty() && !folder.key_checksums.contains(&key.checksum()) {
        folder.key_checksums.push(key.checksum());
    }
    let inner = Zeroizing::new(serde_json::to_vec(&folder).map_err(MetadataError::InnerJson)?);
    let mut users = Vec::with_capacity(recipients.len());
    for recipient in recipients {
        let public_key = RsaPublicKey::from_certificate_pem(&recipient.certificate_pem)?;
        users.push(MetadataUser {
            user_id: recipient.user_id.clone(),
            certificate: recipient.certificate_pem.clone(),
            encrypted_metadata_key: STANDARD.encode(public_key.encrypt(key.0.as_bytes())?),
        });
    }
    Ok(MetadataDocument {
        metadata: seal_gzip(&key.0, &inner)?,
        users,
        filedrop: None,
        version: MetadataVersion::V2_0,
    })
}

/// Opens a file-drop entry addressed to `user_id`: unwraps its own key, then decrypts the file's details.
pub fn open_filedrop_entry(
    entry: &FiledropEntry,
    user_id: &str,
    private_key: &RsaPrivateKey,
) -> Result<FileEntry, MetadataError> {
    let inner = open_filedrop_bytes(entry, user_id, private_key)?;
    serde_json::from_slice(&inner).map_err(MetadataError::InnerJson)
}

fn open_filedrop_bytes(
    entry: &FiledropEntry,
    user_id: &str,
    private_key: &RsaPrivateKey,
) -> Result<Zeroizing<Vec<u8>>, MetadataError> {
    let user = entry
        .users
        .iter()
        .find(|user| user.user_id == user_id)
        .ok_or_else(|| MetadataError::NotARecipient(user_id.to_owned()))?;
    let filedrop_key = unwrap_key(&user.encrypted_filedrop_key, private_key)?;
    open_gzip(
        &filedrop_key,
        &entry.ciphertext,
        &entry.nonce,
        &entry.authentication_tag,
    )
}

/// base64 → RSA-OAEP → exactly 16 bytes.
fn unwrap_key(wrapped_base64: &str, private_key: &RsaPrivateKey) -> Result<Aes128Key, MetadataError> {
    let wrapped = STANDARD
        .decode(wrapped_base64)
        .map_err(|_| MetadataError::Base64("wrapped key"))?;
    let raw = private_key.decrypt(&wrapped).map_err(|_| MetadataError::KeyUnwrap)?;
    Aes128Key::from_slice(&raw).map_err(|_| MetadataError::KeyUnwrap)
}

/// Decrypts base64(ct ‖ tag)[|suffix], checks the separate tag field, and gunzips with a size bound.
fn open_gzip(
    key: &Aes128Key,
    ciphertext_field: &str,
    nonce_field: &str,
    tag_field: &str,
) -> Result<Zeroizing<Vec<u8>>, MetadataError> {
    // The desktop appends "|base64(nonce)"; the ciphertext is what precedes the first '|'.
    let ciphertext_base64 = ciphertext_field.split('|').next().unwrap_or_default();
    let ciphertext = STANDARD
        .decode(ciphertext_base64)
        .map_err(|_| MetadataError::Base64("ciphertext"))?;
    let nonce = GcmNonce::from_slice(
        &STANDARD
            .decode(nonce_field)
            .map_err(|_| MetadataError::Base64("nonce"))?,
    )?;
    let tag = GcmTag::from_slice(
        &STANDARD
            .decode(tag_field)
            .map_err(|_| MetadataError::Base64("authenticationTag"))?,
    )
    .map_err(|_| MetadataError::Authentication)?;
    let embedded_tag = ciphertext.len().checked_sub(TAG_LEN).map(|start| &ciphertext[start..]);
    if !embedded_tag.is_some_and(|embedded| tag.matches(embedded)) {
        return Err(MetadataError::Authentication);
    }
    let compressed = gcm::open(key, &nonce, &ciphertext)?;
    let mut inner = Zeroizing::new(Vec::new());
    GzDecoder::new(compressed.as_slice())
        .take(MAX_INNER_LEN + 1)
        .read_to_end(&mut inner)
        .map_err(|_| MetadataError::Gzip)?;
    if inner.len() as u64 > MAX_INNER_LEN {
        return Err(MetadataError::Gzip);
    }
    Ok(inner)
}

/// gzip → AES-128-GCM with a fresh 16-byte nonce → the three base64 fields.
fn seal_gzip(key: &Aes128Key, inner: &[u8]) -> Result<EncryptedMetadata, MetadataError> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    let compressed = Zeroizing::new(
        encoder
            .write_all(inner)
            .and_then(|()| encoder.finish())
            .map_err(|_| MetadataError::Gzip)?,
    );
    let nonce = GcmNonce::random16()?;
    let sealed = gcm::seal(key, &nonce, &compressed)?;
    let tag = &sealed[sealed.len() - TAG_LEN..];
    Ok(EncryptedMetadata {
        ciphertext: STANDARD.encode(&sealed),
        nonce: STANDARD.encode(nonce.as_bytes()),
        authentication_tag: STANDARD.encode(tag),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::gcm::GcmTag;
    use crate::format::metadata::FileEntry;

    fn json(text: &str) -> serde_json::Value {
        serde_json::from_str(text).expect("json")
    }

    struct User {
        user_id: String,
        certificate_pem: String,
        key: RsaPrivateKey,
    }

    fn user(text: &str) -> User {
        let value = json(text);
        User {
            user_id: value["userId"].as_str().expect("userId").to_owned(),
            certificate_pem: value["certificatePem"].as_str().expect("certificate").to_owned(),
            key: RsaPrivateKey::from_pkcs8_pem(value["privateKeyPem"].as_str().expect("key")).expect("pkcs8"),
        }
    }

    fn alice() -> User {
        user(include_str!("../../testdata/nextcloud/alice.json"))
    }

    fn bob() -> User {
        user(include_str!("../../testdata/nextcloud/bob.json"))
    }

    fn recipient(user: &User) -> Recipient {
        Recipient {
            user_id: user.user_id.clone(),
            certificate_pem: user.certificate_pem.clone(),
        }
    }

    fn sample_folder() -> FolderMetadata {
        let mut folder = FolderMetadata {
            counter: 3,
            deleted: Some(false),
            ..FolderMetadata::default()
        };
        folder
            .folders
            .insert("0123456789abcdef0123456789abcdef".into(), "Photos".into());
        folder.files.insert(
            "fedcba9876543210fedcba9876543210".into(),
            FileEntry {
                filename: "report — final.pdf".into(),
                mimetype: "application/pdf".into(),
                nonce: GcmNonce::random16().expect("nonce"),
                authentication_tag: GcmTag::from_slice(&[5u8; 16]).expect("tag"),
                key: Aes128Key::generate().expect("key"),
            },
        );
        folder
    }

    #[test]
    fn nextcloud_vector_android_filedrop_v2_opens() {
        let vector = json(include_str!("../../testdata/nextcloud/android-filedrop-v2.json"));
        let field = |name: &str| vector[name].as_str().expect(name).to_owned();
        let entry: FiledropEntry = serde_json::from_str(&field("filedropEntryJson")).expect("entry");
        let private_key = RsaPrivateKey::from_pkcs8_pem(&field("privateKeyPem")).expect("key");
        let user_id = field("userId");

        let unwrapped = unwrap_key(&entry.users[0].encrypted_filedrop_key, &private_key).expect("unwrap");
        assert_eq!(STANDARD.encode(unwrapped.as_bytes()), field("expectedFiledropKey"));
        let inner = open_filedrop_bytes(&entry, &user_id, &private_key).expect("open");
        assert_eq!(
            std::str::from_utf8(&inner).expect("utf-8"),
            field("expectedPlaintextJson")
        );
        let file = open_filedrop_entry(&entry, &user_id, &private_key).expect("parse");
        assert_eq!(file.filename, "test.txt");

        // Negative cases derived from the vector.
        let mut flipped_tag = entry.clone();
        let mut tag = STANDARD.decode(&entry.authentication_tag).expect("b64");
        tag[0] ^= 1;
        flipped_tag.authentication_tag = STANDARD.encode(&tag);
        assert!(matches!(
            open_filedrop_entry(&flipped_tag, &user_id, &private_key),
            Err(MetadataError::Authentication)
        ));
        let mut truncated = entry.clone();
        let ciphertext = STANDARD.decode(&entry.ciphertext).expect("b64");
        truncated.ciphertext = STANDARD.encode(&ciphertext[..ciphertext.len() - 1]);
        assert!(matches!(
            open_filedrop_entry(&truncated, &user_id, &private_key),
            Err(MetadataError::Authentication)
        ));
        let mut flipped_body = entry.clone();
        let mut body = ciphertext.clone();
        body[3] ^= 0x40;
        flipped_body.ciphertext = STANDARD.encode(&body);
        assert!(matches!(
            open_filedrop_entry(&flipped_body, &user_id, &private_key),
            Err(MetadataError::Authentication)
        ));
        assert!(matches!(
            open_filedrop_entry(&entry, "someone-else", &private_key),
            Err(MetadataError::NotARecipient(_))
        ));
        assert!(matches!(
            open_filedrop_entry(&entry, &user_id, &alice().key),
            Err(MetadataError::KeyUnwrap)
        ));
    }

    #[test]
    fn root_metadata_round_trips_for_every_recipient() {
        let (alice, bob) = (alice(), bob());
        let key = MetadataKey::generate().expect("key");
        let folder = sample_folder();
        let document = encrypt_metadata(&folder, &key, &[recipient(&alice), recipient(&bob)]).expect("encrypt");
        assert_eq!(STANDARD.decode(&document.metadata.nonce).expect("b64").len(), 16);
        assert!(!document.metadata.ciphertext.contains('|'));

        let reparsed = MetadataDocument::parse(&document.to_json().expect("json")).expect("parse");
        for user in [&alice, &bob] {
            let unwrapped = unwrap_metadata_key(&reparsed, &user.user_id, &user.key).expect("unwrap");
            assert_eq!(unwrapped, key);
            let opened = decrypt_metadata(&reparsed, &unwrapped).expect("decrypt");
            assert_eq!(opened.key_checksums, vec![key.checksum()]);
            let mut expected = folder.clone();
            expected.key_checksums = vec![key.checksum()];
            assert_eq!(opened, expected);
        }
        // The payload inside GCM is gzip.
        let sealed = STANDARD.decode(&document.metadata.ciphertext).expect("b64");
        let nonce = GcmNonce::from_slice(&STANDARD.decode(&document.metadata.nonce).expect("b64")).expect("nonce");
        assert_eq!(&gcm::open(&key.0, &nonce, &sealed).expect("open")[..2], &[0x1f, 0x8b]);
    }

    #[test]
    fn subfolder_metadata_has_no_users_and_needs_no_checksum() {
        let key = MetadataKey::generate().expect("key");
        let folder = sample_folder();
        let document = encrypt_metadata(&folder, &key, &[]).expect("encrypt");
        assert!(document.users.is_empty());
        assert!(!document.to_json().expect("json").contains("users"));
        assert_eq!(decrypt_metadata(&document, &key).expect("decrypt"), folder);
    }

    #[test]
    fn desktop_suffix_and_web_12_byte_nonces_are_read() {
        let key = MetadataKey::generate().expect("key");
        let mut document = encrypt_metadata(&sample_folder(), &key, &[recipient(&alice())]).expect("encrypt");
        let expected = decrypt_metadata(&document, &key).expect("decrypt");

        let mut desktop = document.clone();
        desktop.metadata.ciphertext = format!("{}|{}", desktop.metadata.ciphertext, desktop.metadata.nonce);
        assert_eq!(decrypt_metadata(&desktop, &key).expect("desktop form"), expected);

        let inner = serde_json::to_vec(&expected).expect("json");
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(&inner).expect("gzip");
        let nonce = GcmNonce::random12().expect("nonce");
        let sealed = gcm::seal(&key.0, &nonce, &encoder.finish().expect("gzip")).expect("seal");
        document.metadata = EncryptedMetadata {
            ciphertext: STANDARD.encode(&sealed),
            nonce: STANDARD.encode(nonce.as_bytes()),
            authentication_tag: STANDARD.encode(&sealed[sealed.len() - TAG_LEN..]),
        };
        assert_eq!(decrypt_metadata(&document, &key).expect("web form"), expected);
    }

    #[test]
    fn wrong_keys_altered_data_and_unlisted_keys_are_refused() {
        let alice = alice();
        let key = MetadataKey::generate().expect("key");
        let document = encrypt_metadata(&sample_folder(), &key, &[recipient(&alice)]).expect("encrypt");

        let other_key = MetadataKey::generate().expect("key");
        assert!(matches!(
            decrypt_metadata(&document, &other_key),
            Err(MetadataError::Authentication)
        ));
        assert!(matches!(
            unwrap_metadata_key(&document, "bob", &alice.key),
            Err(MetadataError::NotARecipient(_))
        ));
        assert!(matches!(
            unwrap_metadata_key(&document, &alice.user_id, &bob().key),
            Err(MetadataError::KeyUnwrap)
        ));

        let mut altered = document.clone();
        let mut sealed = STANDARD.decode(&altered.metadata.ciphertext).expect("b64");
        sealed[0] ^= 1;
        altered.metadata.ciphertext = STANDARD.encode(&sealed);
        assert!(matches!(
            decrypt_metadata(&altered, &key),
            Err(MetadataError::Authentication)
        ));

        let mut other_tag = document.clone();
        other_tag.metadata.authentication_tag = STANDARD.encode([0u8; 16]);
        assert!(matches!(
            decrypt_metadata(&other_tag, &key),
            Err(MetadataError::Authentication)
        ));

        // A root document whose key is not in keyChecksums: someone substituted the key.
        let mut folder = sample_folder();
        folder.key_checksums = vec![other_key.checksum()];
        let mut substituted = encrypt_metadata(&folder, &key, &[]).expect("encrypt");
        substituted.users = document.users.clone();
        assert!(matches!(
            decrypt_metadata(&substituted, &key),
            Err(MetadataError::UnknownKey)
        ));
    }

    #[test]
    fn filedrop_entries_merge_into_files() {
        let vector = json(include_str!("../../testdata/nextcloud/android-filedrop-v2.json"));
        let entry: FiledropEntry =
            serde_json::from_str(vector["filedropEntryJson"].as_str().expect("entry")).expect("entry");
        let private_key = RsaPrivateKey::from_pkcs8_pem(vector["privateKeyPem"].as_str().expect("key")).expect("key");
        let key = MetadataKey::generate().expect("key");
        let mut document = encrypt_metadata(&sample_folder(), &key, &[]).expect("encrypt");
        let file_id = "00112233445566778899aabbccddeeff".to_owned();
        document.filedrop = Some([(file_id.clone(), entry)].into_iter().collect());
        let mut folder = decrypt_metadata(&document, &key).expect("decrypt");

        let mut wrong_user = document.clone();
        let mut untouched = folder.clone();
        assert!(merge_filedrop(&mut wrong_user, &mut untouched, "alice", &private_key).is_err());
        assert_eq!((wrong_user, untouched), (document.clone(), folder.clone()));

        assert_eq!(
            merge_filedrop(&mut document, &mut folder, "android3", &private_key).expect("merge"),
            1
        );
        assert_eq!(folder.files[&file_id].filename, "test.txt");
        assert!(document.filedrop.is_none());
        assert_eq!(
            merge_filedrop(&mut document, &mut folder, "android3", &private_key).expect("merge"),
            0
        );
    }

    #[test]
    fn rolled_back_counters_are_refused() {
        let folder = FolderMetadata {
            counter: 5,
            ..FolderMetadata::default()
        };
        assert!(check_counter(&folder, 4).is_ok());
        assert!(check_counter(&folder, 5).is_ok());
        assert!(matches!(
            check_counter(&folder, 6),
            Err(MetadataError::RolledBack {
                counter: 5,
                last_seen: 6
            })
        ));
    }

    #[test]
    fn non_gzip_payloads_are_refused() {
        let key = MetadataKey::generate().expect("key");
        let nonce = GcmNonce::random16().expect("nonce");
        let sealed = gcm::seal(&key.0, &nonce, b"{\"counter\":1}").expect("seal");
        let document = MetadataDocument {
            metadata: EncryptedMetadata {
                ciphertext: STANDARD.encode(&sealed),
                nonce: STANDARD.encode(nonce.as_bytes()),
                authentication_tag: STANDARD.encode(&sealed[sealed.len() - TAG_LEN..]),
            },
            users: Vec::new(),
            filedrop: None,
            version: MetadataVersion::V2_0,
        };
        assert!(matches!(decrypt_metadata(&document, &key), Err(MetadataError::Gzip)));
    }
}
