//! Folder metadata v2.0/2.1 documents (nextcloud-e2ee.md §2.3, §2.6): the outer signed JSON and the inner JSON.
//!
//! These are the JSON shapes only; `protocol::metadata` encrypts and decrypts them. Binary values in the
//! inner document (file keys, nonces, tags) are parsed into typed values at the edge; the outer document keeps
//! its base64 strings, because they are what gets signed.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::crypto::CryptoError;
use crate::crypto::gcm::{Aes128Key, GcmNonce, GcmTag};

/// Why a metadata document does not parse.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataFormatError {
    /// The text is not JSON of the expected shape.
    #[error("malformed metadata JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The `version` is not one this client reads: 2.0 or 2.1 here, 1.0, 1.1 or 1.2 in `metadata_v1`.
    #[error("unsupported metadata version {0}")]
    UnsupportedVersion(String),
    /// A v1.x document lacks the key field its version requires, or names a key index that is not a number.
    #[error("malformed v1 metadata: {0}")]
    MalformedV1(&'static str),
}

/// The metadata versions this client reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataVersion {
    /// "2.0": users, one metadata key per top-level folder, signature, counter.
    V2_0,
    /// "2.1": 2.0 plus public-share users `s:<token>`.
    V2_1,
}

impl MetadataVersion {
    /// Reads `version` as clients write it: "2.0", "2.1", "2", or the numbers 2, 2.0, 2.1.
    fn from_json(value: &serde_json::Value) -> Option<MetadataVersion> {
        let text = match value {
            serde_json::Value::String(text) => text.clone(),
            serde_json::Value::Number(number) => number.to_string(),
            _ => return None,
        };
        match text.as_str() {
            "2" | "2.0" => Some(MetadataVersion::V2_0),
            "2.1" => Some(MetadataVersion::V2_1),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            MetadataVersion::V2_0 => "2.0",
            MetadataVersion::V2_1 => "2.1",
        }
    }
}

impl Serialize for MetadataVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for MetadataVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<MetadataVersion, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        MetadataVersion::from_json(&value)
            .ok_or_else(|| serde::de::Error::custom(format!("unsupported metadata version {value}")))
    }
}

/// The outer document stored on the server (the part the CMS signature covers, plus `filedrop`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataDocument {
    /// The encrypted inner metadata.
    pub metadata: EncryptedMetadata,
    /// Who holds the metadata key; only in the top-level encrypted folder.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<MetadataUser>,
    /// File-drop entries waiting to be moved into `files` (unsigned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filedrop: Option<BTreeMap<String, FiledropEntry>>,
    /// The format version.
    pub version: MetadataVersion,
}

impl MetadataDocument {
    /// Parses the JSON text the server returns in `meta-data`.
    pub fn parse(json: &str) -> Result<MetadataDocument, MetadataFormatError> {
        MetadataDocument::from_value(serde_json::from_str(json)?)
    }

    /// `parse` for JSON already parsed.
    pub(crate) fn from_value(value: serde_json::Value) -> Result<MetadataDocument, MetadataFormatError> {
        let version = &value["version"];
        if MetadataVersion::from_json(version).is_none() {
            return Err(MetadataFormatError::UnsupportedVersion(version.to_string()));
        }
        Ok(serde_json::from_value(value)?)
    }

    /// Compact JSON for upload (field order as declared; the signature's canonical form is separate).
    pub fn to_json(&self) -> Result<String, MetadataFormatError> {
        Ok(serde_json::to_string(self)?)
    }

    /// What the CMS signature covers (§2.4): standard base64 of the document without `filedrop`,
    /// as compact JSON with object keys sorted at every level, `/` not escaped. The signature is over
    /// the ASCII bytes of the returned string.
    pub fn signed_content(&self) -> Result<String, MetadataFormatError> {
        let mut value = serde_json::to_value(self)?;
        if let serde_json::Value::Object(object) = &mut value {
            object.remove("filedrop");
        }
        let mut canonical = String::new();
        write_sorted(&value, &mut canonical)?;
        Ok(STANDARD.encode(canonical))
    }
}

/// Compact JSON with keys sorted, independent of whether serde_json's `preserve_order` feature is on
/// somewhere in the build. Strings are escaped by serde_json, which matches JSON.stringify.
fn write_sorted(value: &serde_json::Value, output: &mut String) -> Result<(), serde_json::Error> {
    match value {
        serde_json::Value::Object(object) => {
            let mut entries: Vec<_> = object.iter().collect();
            entries.sort_by(|left, right| left.0.cmp(right.0));
            output.push('{');
            for (index, (key, member)) in entries.into_iter().enumerate() {
                if index > 0 {
                    output.push(',');
                }
                output.push_str(&serde_json::to_string(key)?);
                output.push(':');
                write_sorted(member, output)?;
            }
            output.push('}');
        }
        serde_json::Value::Array(items) => {
            output.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    output.push(',');
                }
                write_sorted(item, output)?;
            }
            output.push(']');
        }
        scalar => output.push_str(&serde_json::to_string(scalar)?),
    }
    Ok(())
}

/// `metadata`: the AES-128-GCM-encrypted, gzipped inner JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptedMetadata {
    /// base64(ciphertext ‖ tag); the desktop appends `|base64(nonce)`, which readers ignore.
    pub ciphertext: String,
    /// base64 of the 16-byte (desktop, Android, iOS) or 12-byte (web) nonce.
    pub nonce: String,
    /// base64 of the tag (also the last 16 bytes of the ciphertext).
    pub authentication_tag: String,
}

/// One entry of `users[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetadataUser {
    /// The Nextcloud user id, or `s:<token>` for a public share (2.1).
    pub user_id: String,
    /// The user's certificate, PEM.
    pub certificate: String,
    /// base64(RSA-OAEP-SHA256(raw 16-byte metadata key)).
    pub encrypted_metadata_key: String,
}

/// One `filedrop{}` entry: a file uploaded through a drop, with its own key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FiledropEntry {
    /// base64(AES-128-GCM(gzip(JSON of a `FileEntry`)) ‖ tag).
    pub ciphertext: String,
    /// base64 nonce.
    pub nonce: String,
    /// base64 tag.
    pub authentication_tag: String,
    /// The file-drop key, wrapped for each folder user.
    pub users: Vec<FiledropUser>,
}

/// A recipient of a file-drop key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FiledropUser {
    /// The user id.
    pub user_id: String,
    /// base64(RSA-OAEP-SHA256(raw 16-byte file-drop key)).
    pub encrypted_filedrop_key: String,
}

/// The decrypted inner metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FolderMetadata {
    /// Top-level folder only: lowercase hex SHA-256 of every metadata key ever used (append-only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_checksums: Vec<String>,
    /// Set when the top-level folder was deleted; the desktop omits it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<bool>,
    /// Incremented on every change (replay protection, §2.5).
    #[serde(default)]
    pub counter: u64,
    /// Subfolders: obfuscated id → cleartext name.
    #[serde(default)]
    pub folders: BTreeMap<String, String>,
    /// Files: obfuscated id → what decrypts it.
    #[serde(default)]
    pub files: BTreeMap<String, FileEntry>,
}

/// One file in `files{}` (also the content of a file-drop entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileEntry {
    /// The cleartext file name.
    pub filename: String,
    /// The MIME type; `application/octet-stream` when absent.
    #[serde(default = "default_mimetype")]
    pub mimetype: String,
    /// The file's GCM nonce (older desktops write `initializationVector`).
    #[serde(alias = "initializationVector", with = "base64_field")]
    pub nonce: GcmNonce,
    /// The file's GCM tag.
    #[serde(with = "base64_field")]
    pub authentication_tag: GcmTag,
    /// The file's AES-128 key.
    #[serde(with = "base64_field")]
    pub key: Aes128Key,
}

pub(crate) fn default_mimetype() -> String {
    "application/octet-stream".to_owned()
}

/// Values stored in JSON as standard base64 of their bytes.
pub(crate) trait Base64Field: Sized {
    fn field_bytes(&self) -> &[u8];
    fn from_field_bytes(bytes: &[u8]) -> Result<Self, CryptoError>;
}

impl Base64Field for GcmNonce {
    fn field_bytes(&self) -> &[u8] {
        self.as_bytes()
    }
    fn from_field_bytes(bytes: &[u8]) -> Result<GcmNonce, CryptoError> {
        GcmNonce::from_slice(bytes)
    }
}

impl Base64Field for GcmTag {
    fn field_bytes(&self) -> &[u8] {
        self.as_bytes()
    }
    fn from_field_bytes(bytes: &[u8]) -> Result<GcmTag, CryptoError> {
        GcmTag::from_slice(bytes)
    }
}

impl Base64Field for Aes128Key {
    fn field_bytes(&self) -> &[u8] {
        self.as_bytes()
    }
    fn from_field_bytes(bytes: &[u8]) -> Result<Aes128Key, CryptoError> {
        Aes128Key::from_slice(bytes)
    }
}

/// serde `with` module for `Base64Field`s.
pub(crate) mod base64_field {
    use super::*;
    use zeroize::Zeroizing;

    pub(crate) fn serialize<S: Serializer, T: Base64Field>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&Zeroizing::new(STANDARD.encode(value.field_bytes())))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, T: Base64Field>(deserializer: D) -> Result<T, D::Error> {
        let text = Zeroizing::new(String::deserialize(deserializer)?);
        let bytes = Zeroizing::new(STANDARD.decode(text.as_bytes()).map_err(serde::de::Error::custom)?);
        T::from_field_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &str = r#"{"metadata":{"ciphertext":"Y3Q=|bm9uY2U=","nonce":"bm9uY2U=","authenticationTag":"dGFn"},
        "users":[{"userId":"alice","certificate":"PEM","encryptedMetadataKey":"a2V5"}],"version":"2.0"}"#;

    #[test]
    fn signed_content_is_base64_of_sorted_compact_json_without_filedrop() {
        let mut document = MetadataDocument::parse(SAMPLE).expect("parse");
        document.users[0].certificate = "-----BEGIN CERTIFICATE-----\nMII/+\"é\n".into();
        document.filedrop = Some(BTreeMap::new());
        let signed = STANDARD
            .decode(document.signed_content().expect("signed"))
            .expect("base64");
        let expected = concat!(
            r#"{"metadata":{"authenticationTag":"dGFn","ciphertext":"Y3Q=|bm9uY2U=","nonce":"bm9uY2U="},"#,
            r#""users":[{"certificate":"-----BEGIN CERTIFICATE-----\nMII/+\"é\n","encryptedMetadataKey":"a2V5","userId":"alice"}],"#,
            r#""version":"2.0"}"#
        );
        assert_eq!(String::from_utf8(signed).expect("utf-8"), expected);
    }

    #[test]
    fn every_version_spelling_is_read() {
        for (spelling, expected) in [
            ("\"2.0\"", MetadataVersion::V2_0),
            ("\"2\"", MetadataVersion::V2_0),
            ("2", MetadataVersion::V2_0),
            ("2.0", MetadataVersion::V2_0),
            ("\"2.1\"", MetadataVersion::V2_1),
            ("2.1", MetadataVersion::V2_1),
        ] {
            let json = SAMPLE.replace("\"2.0\"", spelling);
            assert_eq!(MetadataDocument::parse(&json).expect(spelling).version, expected);
        }
        for unsupported in ["\"1.2\"", "1.2", "1", "\"3.0\"", "null"] {
            let json = SAMPLE.replace("\"2.0\"", unsupported);
            assert!(matches!(
                MetadataDocument::parse(&json),
                Err(MetadataFormatError::UnsupportedVersion(_))
            ));
        }
        let without_version = SAMPLE.replace(",\"version\":\"2.0\"", "");
        assert!(MetadataDocument::parse(&without_version).is_err());
    }

    #[test]
    fn documents_round_trip_and_write_version_as_a_string() {
        let document = MetadataDocument::parse(SAMPLE).expect("parse");
        assert_eq!(document.users[0].user_id, "alice");
        assert!(document.filedrop.is_none());
        let json = document.to_json().expect("json");
        assert!(json.contains("\"version\":\"2.0\""));
        assert!(!json.contains("filedrop"));
        assert_eq!(MetadataDocument::parse(&json).expect("reparse"), document);
    }

    #[test]
    fn file_entries_accept_initialization_vector_and_default_the_mimetype() {
        let json = r#"{"filename":"a.txt","initializationVector":"AAAAAAAAAAAAAAAAAAAAAA==",
            "authenticationTag":"AAAAAAAAAAAAAAAAAAAAAA==","key":"AAAAAAAAAAAAAAAAAAAAAA=="}"#;
        let entry: FileEntry = serde_json::from_str(json).expect("parse");
        assert_eq!(entry.mimetype, "application/octet-stream");
        assert_eq!(entry.nonce.as_bytes(), &[0u8; 16]);
        let bad_key = json.replace("\"key\":\"AAAAAAAAAAAAAAAAAAAAAA==\"", "\"key\":\"AAAA\"");
        assert!(serde_json::from_str::<FileEntry>(&bad_key).is_err());
    }

    proptest! {
        /// The parser never panics, whatever the input.
        #[test]
        fn parsing_arbitrary_text_does_not_panic(text in "\\PC{0,200}", structured in "\\{\"metadata\":.{0,80}\\}") {
            let _ = MetadataDocument::parse(&text);
            let _ = MetadataDocument::parse(&structured);
            let _ = serde_json::from_str::<FolderMetadata>(&text);
        }

        #[test]
        fn folder_metadata_json_round_trip(
            counter in any::<u64>(),
            names in proptest::collection::btree_map("[0-9a-f]{32}", "\\PC{0,20}", 0..5),
            key in any::<[u8; 16]>(), nonce in any::<[u8; 16]>(), tag in any::<[u8; 16]>(),
        ) {
            let mut folder = FolderMetadata { counter, deleted: Some(false), ..FolderMetadata::default() };
            for (id, name) in &names {
                folder.folders.insert(format!("f{id}"), name.clone());
                folder.files.insert(id.clone(), FileEntry {
                    filename: name.clone(),
                    mimetype: "text/plain".into(),
                    nonce: GcmNonce::from_slice(&nonce).expect("nonce"),
                    authentication_tag: GcmTag::from_slice(&tag).expect("tag"),
                    key: Aes128Key::from_slice(&key).expect("key"),
                });
            }
            let json = serde_json::to_string(&folder).expect("json");
            prop_assert_eq!(serde_json::from_str::<FolderMetadata>(&json).expect("parse"), folder);
        }
    }
}
