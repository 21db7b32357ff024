//! Folder metadata v1.0–1.2 documents (nextcloud-e2ee.md §2.2), read-only: the outer JSON and a file's decrypted JSON.
//!
//! Version 1 differs from 2 in shape, not only in fields: the version sits inside `metadata`, the metadata key
//! is wrapped once per folder for its owner only (no `users`), and each file is encrypted separately under the
//! metadata key instead of one encrypted inner document. `protocol::metadata_v1` decrypts what this parses.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::metadata::{MetadataDocument, MetadataFormatError, base64_field, default_mimetype};
use crate::crypto::gcm::{Aes128Key, GcmNonce, GcmTag};

/// The v1 versions this client reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataV1Version {
    /// `1` or "1.0": `metadataKeys`, one wrapped key per rotation, and files naming theirs.
    V1_0,
    /// "1.1": a single `metadataKey`.
    V1_1,
    /// `1.2` (number or string): a single `metadataKey` plus `checksum`.
    V1_2,
}

impl MetadataV1Version {
    /// Reads `metadata.version` as clients wrote it: a string or a number.
    fn from_json(value: &serde_json::Value) -> Option<MetadataV1Version> {
        let text = match value {
            serde_json::Value::String(text) => text.clone(),
            serde_json::Value::Number(number) => number.to_string(),
            _ => return None,
        };
        match text.as_str() {
            "1" | "1.0" => Some(MetadataV1Version::V1_0),
            "1.1" => Some(MetadataV1Version::V1_1),
            "1.2" => Some(MetadataV1Version::V1_2),
            _ => None,
        }
    }
}

/// The wrapped metadata key(s): each is base64(RSA-OAEP-SHA256(base64(base64(raw 16-byte key)))).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WrappedMetadataKeys {
    /// v1.0: by index; a file names the index of its key, and writers used the highest.
    Indexed(BTreeMap<u64, String>),
    /// v1.1 and v1.2: one key for every file.
    Single(String),
}

/// A v1.x metadata document as the server stores it (the unsigned `filedrop` and never-implemented `sharing`
/// blocks are ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataV1Document {
    /// The format version.
    pub version: MetadataV1Version,
    /// The owner's wrapped metadata key(s).
    pub metadata_keys: WrappedMetadataKeys,
    /// v1.2: lowercase hex SHA-256 binding the mnemonic, the file ids and the wrapped key.
    pub checksum: Option<String>,
    /// Files (and subfolders, mimetype `httpd/unix-directory`): obfuscated id → encrypted entry.
    pub files: BTreeMap<String, FileEntryV1>,
}

/// One `files{}` entry of a v1.x document.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileEntryV1 {
    /// `b64(ct‖tag)|b64(iv)` (older clients: `fA==` instead of `|`): the `FileSecretsV1` as base64 JSON,
    /// AES-128-GCM under the metadata key.
    pub encrypted: String,
    /// The file content's GCM nonce.
    #[serde(with = "base64_field")]
    pub initialization_vector: GcmNonce,
    /// The file content's GCM tag.
    #[serde(with = "base64_field")]
    pub authentication_tag: GcmTag,
    /// v1.0: the index of the metadata key `encrypted` is under.
    #[serde(default)]
    pub metadata_key: Option<u64>,
}

/// What `FileEntryV1::encrypted` decrypts to (old clients also wrote `"version": 1`, ignored).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FileSecretsV1 {
    /// The file's AES-128 key.
    #[serde(with = "base64_field")]
    pub key: Aes128Key,
    /// The cleartext file name.
    pub filename: String,
    /// The MIME type; `application/octet-stream` when absent.
    #[serde(default = "default_mimetype")]
    pub mimetype: String,
}

#[derive(Deserialize)]
struct RawDocument {
    metadata: RawMetadata,
    #[serde(default)]
    files: BTreeMap<String, FileEntryV1>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMetadata {
    #[serde(default)]
    metadata_keys: Option<BTreeMap<String, String>>,
    #[serde(default)]
    metadata_key: Option<String>,
    #[serde(default)]
    checksum: Option<String>,
    #[serde(default)]
    version: serde_json::Value,
}

impl MetadataV1Document {
    /// Parses the JSON text the server returns in `meta-data` for a v1.x folder.
    pub fn parse(json: &str) -> Result<MetadataV1Document, MetadataFormatError> {
        MetadataV1Document::from_value(serde_json::from_str(json)?)
    }

    /// `parse` for JSON already parsed.
    fn from_value(value: serde_json::Value) -> Result<MetadataV1Document, MetadataFormatError> {
        let raw: RawDocument = serde_json::from_value(value)?;
        let version = MetadataV1Version::from_json(&raw.metadata.version)
            .ok_or_else(|| MetadataFormatError::UnsupportedVersion(raw.metadata.version.to_string()))?;
        let metadata_keys = match version {
            MetadataV1Version::V1_0 => {
                let keys = raw
                    .metadata
                    .metadata_keys
                    .filter(|keys| !keys.is_empty())
                    .ok_or(MetadataFormatError::MalformedV1("v1.0 without metadataKeys"))?;
                let mut indexed = BTreeMap::new();
                for (index, wrapped) in keys {
                    let index = index
                        .parse::<u64>()
                        .map_err(|_| MetadataFormatError::MalformedV1("a metadataKeys index is not a number"))?;
                    indexed.insert(index, wrapped);
                }
                WrappedMetadataKeys::Indexed(indexed)
            }
            MetadataV1Version::V1_1 | MetadataV1Version::V1_2 => WrappedMetadataKeys::Single(
                raw.metadata
                    .metadata_key
                    .ok_or(MetadataFormatError::MalformedV1("v1.1/1.2 without metadataKey"))?,
            ),
        };
        Ok(MetadataV1Document {
            version,
            metadata_keys,
            checksum: raw.metadata.checksum,
            files: raw.files,
        })
    }
}

/// A stored metadata document of either generation.
#[derive(Debug, Clone)]
pub enum AnyMetadataDocument {
    /// v2.0 or 2.1.
    V2(MetadataDocument),
    /// v1.0, 1.1 or 1.2.
    V1(MetadataV1Document),
}

impl AnyMetadataDocument {
    /// Parses the JSON the server returns in `meta-data`, telling the generations apart by where `version`
    /// sits: at the top level in v2, inside `metadata` in v1 (§2.1, §2.2). Unknown versions of either, and a
    /// document with no version at all, are refused.
    pub fn parse(json: &str) -> Result<AnyMetadataDocument, MetadataFormatError> {
        let value: serde_json::Value = serde_json::from_str(json)?;
        if value.get("version").is_some() {
            Ok(AnyMetadataDocument::V2(MetadataDocument::from_value(value)?))
        } else if value["metadata"].get("version").is_some() {
            Ok(AnyMetadataDocument::V1(MetadataV1Document::from_value(value)?))
        } else {
            Err(MetadataFormatError::UnsupportedVersion("(none)".to_owned()))
        }
    }
}

/// Splits `encrypted` into base64(ct‖tag) and base64(iv): at the first `|`, or for the legacy form at the `fA==`
/// (base64 of "|") before the last 24 characters (a 16-byte IV). Searching for `fA==` from either end could
/// cut inside the ciphertext's or the IV's own base64, which may end in those characters.
pub fn split_encrypted(encrypted: &str) -> Option<(&str, &str)> {
    if let Some(parts) = encrypted.split_once('|') {
        return Some(parts);
    }
    const IV_BASE64_LEN: usize = 24;
    const SEPARATOR: &str = "fA==";
    let separator_start = encrypted.len().checked_sub(IV_BASE64_LEN + SEPARATOR.len())?;
    let (ciphertext, rest) = encrypted.split_at_checked(separator_start)?;
    let initialization_vector = rest.strip_prefix(SEPARATOR)?;
    Some((ciphertext, initialization_vector))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENTRY: &str = r#"{"encrypted":"Y3Q=|AAAAAAAAAAAAAAAAAAAAAA==","initializationVector":"AAAAAAAAAAAAAAAAAAAAAA==",
        "authenticationTag":"AAAAAAAAAAAAAAAAAAAAAA=="}"#;

    fn document(metadata: &str) -> String {
        format!(r#"{{"metadata":{metadata},"files":{{"0123456789abcdef0123456789abcdef":{ENTRY}}}}}"#)
    }

    #[test]
    fn every_version_and_key_layout_is_read() {
        for (metadata, version) in [
            (
                r#"{"metadataKeys":{"0":"a","1":"b"},"version":1}"#,
                MetadataV1Version::V1_0,
            ),
            (r#"{"metadataKeys":{"0":"a"},"version":"1.0"}"#, MetadataV1Version::V1_0),
            (r#"{"metadataKey":"a","version":"1.1"}"#, MetadataV1Version::V1_1),
            (r#"{"metadataKey":"a","version":1.1}"#, MetadataV1Version::V1_1),
            (
                r#"{"metadataKey":"a","checksum":"00","version":1.2}"#,
                MetadataV1Version::V1_2,
            ),
            (
                r#"{"metadataKey":"a","checksum":"00","version":"1.2"}"#,
                MetadataV1Version::V1_2,
            ),
        ] {
            let parsed = MetadataV1Document::parse(&document(metadata)).expect(metadata);
            assert_eq!(parsed.version, version);
            assert_eq!(parsed.files.len(), 1);
        }
        let indexed =
            MetadataV1Document::parse(&document(r#"{"metadataKeys":{"0":"a","1":"b"},"version":1}"#)).expect("parse");
        assert_eq!(
            indexed.metadata_keys,
            WrappedMetadataKeys::Indexed([(0, "a".to_owned()), (1, "b".to_owned())].into())
        );
    }

    #[test]
    fn unknown_versions_and_missing_keys_are_refused() {
        for metadata in [
            r#"{"metadataKey":"a","version":1.7}"#,
            r#"{"metadataKey":"a","version":"1.3"}"#,
            r#"{"metadataKey":"a","version":"2.0"}"#,
            r#"{"metadataKey":"a"}"#,
        ] {
            assert!(matches!(
                MetadataV1Document::parse(&document(metadata)),
                Err(MetadataFormatError::UnsupportedVersion(_))
            ));
        }
        for metadata in [
            r#"{"metadataKey":"a","version":1}"#,
            r#"{"metadataKeys":{},"version":1}"#,
            r#"{"metadataKeys":{"x":"a"},"version":1}"#,
            r#"{"metadataKeys":{"0":"a"},"version":1.2}"#,
        ] {
            assert!(matches!(
                MetadataV1Document::parse(&document(metadata)),
                Err(MetadataFormatError::MalformedV1(_))
            ));
        }
    }

    #[test]
    fn either_generation_is_told_apart_by_where_its_version_sits() {
        let v1 = AnyMetadataDocument::parse(&document(r#"{"metadataKey":"a","version":"1.2"}"#)).expect("v1");
        assert!(matches!(v1, AnyMetadataDocument::V1(ref document) if document.version == MetadataV1Version::V1_2));
        let v2 = r#"{"metadata":{"ciphertext":"YQ==","nonce":"YQ==","authenticationTag":"YQ=="},"version":"2.0"}"#;
        assert!(matches!(AnyMetadataDocument::parse(v2), Ok(AnyMetadataDocument::V2(_))));
        for unknown in [
            r#"{"metadata":{"ciphertext":"YQ==","nonce":"YQ==","authenticationTag":"YQ=="},"version":"3.0"}"#,
            r#"{"metadata":{"ciphertext":"YQ==","nonce":"YQ==","authenticationTag":"YQ=="},"version":"1.2"}"#,
            r#"{"metadata":{"metadataKey":"a","version":"1.7"},"files":{}}"#,
            r#"{"metadata":{"metadataKey":"a"},"files":{}}"#,
        ] {
            assert!(
                matches!(
                    AnyMetadataDocument::parse(unknown),
                    Err(MetadataFormatError::UnsupportedVersion(_))
                ),
                "{unknown}"
            );
        }
    }

    #[test]
    fn both_separators_split() {
        let iv = "AAAAAAAAAAAAAAAAAAAAfA==";
        assert_eq!(split_encrypted(&format!("Y3Q=|{iv}")), Some(("Y3Q=", iv)));
        // The ciphertext's base64 and the IV's both end in "fA==" here: only the position is reliable.
        assert_eq!(split_encrypted(&format!("AAAAfA==fA=={iv}")), Some(("AAAAfA==", iv)));
        assert_eq!(split_encrypted("Y3Q="), None);
        assert_eq!(split_encrypted(&format!("Y3Q=xxxx{iv}")), None);
    }
}
