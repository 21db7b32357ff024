//! Encrypted folders (nextcloud-e2ee.md §2.3–§2.5, §4): create a top-level folder with subfolders and files,
//! share and unshare it with metadata-key rotation, and open it with certificate, signature, key-checksum and
//! counter checks.
//!
//! A `Folder` is the decrypted tree of one top-level encrypted folder: its metadata key, its users, and the
//! inner metadata of the root and of every subfolder (all encrypted under the root's key). Changes are made in
//! memory, bump the changed documents' counters, and are written by `Folder::save`, which encrypts and signs
//! every changed document (subfolders before the root that names them).
//! Sharing and unsharing rotate the metadata key: a fresh key wrapped for every remaining user, its checksum
//! appended to `keyChecksums`, every document re-encrypted with a higher counter. File blobs are never touched.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};

use crate::crypto::CryptoError;
use crate::crypto::rsa::RsaPrivateKey;
use crate::format::metadata::{FolderMetadata, MetadataDocument};
use crate::format::metadata_v1::{MetadataV1Document, MetadataV1Version};
use crate::pins::TrustError;
use crate::protocol::file::FileCryptoError;
use crate::protocol::metadata::{self, MetadataError, MetadataKey, Recipient};
use crate::protocol::signature::{self, SignatureError};

mod entries;
mod legacy;
mod open;
mod sharing;

pub use entries::Listing;
pub use open::{CertificateTrust, SeenCounters};

/// Why a folder operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FolderError {
    /// Metadata does not decrypt, is not for this user, lists no checksum for its key, or was rolled back.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// The metadata signature is missing, malformed, not by a folder user, or does not verify.
    #[error("metadata of {folder}: {source}")]
    Signature {
        /// Where, as `top-level/id/…`.
        folder: String,
        /// Why.
        source: SignatureError,
    },
    /// A folder user's certificate is not trusted (not from the CA, or its key differs from the pin).
    #[error("the certificate of folder user {user_id:?} is not trusted: {source}")]
    UntrustedCertificate {
        /// The user.
        user_id: String,
        /// Why.
        source: TrustError,
    },
    /// A file could not be encrypted or decrypted.
    #[error(transparent)]
    File(#[from] FileCryptoError),
    /// The storage failed.
    #[error("storage, {what}: {source}")]
    Storage {
        /// What was being read or written.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No subfolder or file by that name or id.
    #[error("no such entry: {0}")]
    NotFound(String),
    /// A name that is empty or contains `/`.
    #[error("{0:?} is not a valid name")]
    InvalidName(String),
    /// The folder already has an entry with that name.
    #[error("an entry named {0:?} already exists here")]
    NameTaken(String),
    /// The user is already a member of the folder.
    #[error("{0:?} already has access")]
    AlreadyAUser(String),
    /// The user is not a member of the folder (or the acting user is not, and cannot sign).
    #[error("{0:?} is not a user of this folder")]
    NotAUser(String),
    /// Removing the last user would leave a folder nobody can open.
    #[error("cannot remove the last user of a folder")]
    LastUser,
    /// The root's `keyChecksums` lost an entry this device saw: the history is append-only (§2.4).
    #[error("keyChecksums lost an entry seen before: the metadata was rolled back or forged")]
    KeyChecksumRemoved,
    /// The folder has v1.x metadata, which this client reads but never writes (see `Folder::open`).
    #[error("this folder has {0:?} metadata, which is read-only here: copy its files into a new folder to change them")]
    LegacyReadOnly(MetadataV1Version),
    /// This device saw the folder with signed v2 metadata, and is now served unsigned v1.x: a downgrade.
    #[error("the folder had v2 metadata on this device and is now served as v1: refused as a downgrade")]
    Downgraded,
    /// A subfolder's metadata is of the other generation (v1 or v2) than its top-level folder's.
    #[error("metadata of {0} is not of the same version as its top-level folder's")]
    MixedVersions(String),
    /// A primitive failed (randomness, backend).
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// A folder's place under its top-level folder: the ids of the subfolders leading to it (empty for the root).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FolderPath(Vec<String>);

impl FolderPath {
    /// The top-level folder itself.
    pub fn root() -> FolderPath {
        FolderPath(Vec::new())
    }

    /// The obfuscated ids from the top-level folder down.
    pub fn ids(&self) -> &[String] {
        &self.0
    }

    /// True for the top-level folder.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    fn child(&self, id: &str) -> FolderPath {
        let mut ids = self.0.clone();
        ids.push(id.to_owned());
        FolderPath(ids)
    }

    /// `top-level/id/id`: the key of `SeenCounters` and of error messages.
    fn display(&self, top_level: &str) -> String {
        std::iter::once(top_level)
            .chain(self.0.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join("/")
    }
}

/// One metadata document with its CMS signature, as stored on the server.
#[derive(Debug, Clone)]
pub struct SignedMetadata {
    /// The outer metadata v2 document.
    pub document: MetadataDocument,
    /// The base64 CMS signature (`X-NC-E2EE-SIGNATURE`).
    pub signature: String,
}

/// One folder's metadata as stored: a signed v2 document, or a legacy v1.x one, which has no signature.
#[derive(Debug, Clone)]
pub enum StoredMetadata {
    /// v2.0 or 2.1, with its CMS signature.
    V2(SignedMetadata),
    /// v1.0, 1.1 or 1.2 (read-only: this client never writes v1).
    V1(MetadataV1Document),
}

/// Where folders live: the sync server, or a directory standing in for it (`storage::LocalDirectory`).
///
/// Contract: reads of something never written fail with `ErrorKind::NotFound`; a document that does not parse,
/// or has a version this client does not read, fails with `ErrorKind::InvalidData` wrapping the
/// `MetadataFormatError`. `write_metadata` replaces the document and signature of a folder (always v2).
/// A blob is written completely before the metadata that names it.
pub trait FolderStorage {
    /// Where a new blob is written.
    type BlobWriter: Write;
    /// Where a blob is read from.
    type BlobReader: Read;
    /// Reads the metadata of `path` under `top_level`, of either generation.
    fn read_metadata(&self, top_level: &str, path: &FolderPath) -> std::io::Result<StoredMetadata>;
    /// Writes (creates or replaces) the metadata of `path` under `top_level`.
    fn write_metadata(&self, top_level: &str, path: &FolderPath, metadata: &SignedMetadata) -> std::io::Result<()>;
    /// Creates the blob `file_id` in `path`.
    fn create_blob(&self, top_level: &str, path: &FolderPath, file_id: &str) -> std::io::Result<Self::BlobWriter>;
    /// Opens the blob `file_id` in `path`.
    fn open_blob(&self, top_level: &str, path: &FolderPath, file_id: &str) -> std::io::Result<Self::BlobReader>;
}

/// The local user acting on folders: their user id, RSA private key and CA-issued certificate.
#[derive(Debug)]
pub struct Account {
    /// The user id (the certificate's common name).
    pub user_id: String,
    /// The user's private key.
    pub private_key: RsaPrivateKey,
    /// The user's certificate, PEM.
    pub certificate_pem: String,
}

impl Account {
    /// This account as a folder user.
    pub fn recipient(&self) -> Recipient {
        Recipient {
            user_id: self.user_id.clone(),
            certificate_pem: self.certificate_pem.clone(),
        }
    }
}

/// The decrypted tree of one top-level encrypted folder.
#[derive(Debug)]
pub struct Folder {
    top_level: String,
    format: Format,
    users: Vec<Recipient>,
    documents: BTreeMap<FolderPath, FolderMetadata>,
    changed: BTreeSet<FolderPath>,
}

/// The metadata generation a folder was read in, which decides whether it can be written.
#[derive(Debug)]
enum Format {
    /// v2: the top-level folder's current metadata key, which encrypts every document of the tree.
    V2(MetadataKey),
    /// v1.x: read-only; each v1 document had its own key, used once when the folder was opened.
    V1(MetadataV1Version),
}

impl Folder {
    /// A new, empty top-level folder named `top_level`, owned by `owner`, under a fresh metadata key.
    /// Nothing is stored until `save`.
    pub fn create(top_level: &str, owner: &Account) -> Result<Folder, FolderError> {
        let key = MetadataKey::generate()?;
        let root = FolderMetadata {
            key_checksums: vec![key.checksum()],
            deleted: Some(false),
            counter: 1,
            ..FolderMetadata::default()
        };
        Ok(Folder {
            top_level: top_level.to_owned(),
            format: Format::V2(key),
            users: vec![owner.recipient()],
            documents: BTreeMap::from([(FolderPath::root(), root)]),
            changed: BTreeSet::from([FolderPath::root()]),
        })
    }

    /// The v1.x version the folder was read in, or `None` for v2. v1 folders are read-only.
    pub fn legacy_version(&self) -> Option<MetadataV1Version> {
        match self.format {
            Format::V2(_) => None,
            Format::V1(version) => Some(version),
        }
    }

    /// The top-level folder's name.
    pub fn top_level(&self) -> &str {
        &self.top_level
    }

    /// The users who hold the current metadata key, owner first.
    pub fn user_ids(&self) -> impl Iterator<Item = &str> {
        self.users.iter().map(|user| user.user_id.as_str())
    }

    /// The inner metadata of the folder at `path`.
    pub fn metadata(&self, path: &FolderPath) -> Result<&FolderMetadata, FolderError> {
        self.documents
            .get(path)
            .ok_or_else(|| FolderError::NotFound(path.display(&self.top_level)))
    }

    /// Encrypts and signs every changed document as `account` and writes it, subfolders before the root.
    /// `seen` is raised to the written counters.
    pub fn save(
        &mut self,
        storage: &impl FolderStorage,
        account: &Account,
        seen: &mut SeenCounters,
    ) -> Result<(), FolderError> {
        self.key()?;
        // The signature must verify for readers, who require a signer among the folder's users.
        if !self.users.iter().any(|user| user.user_id == account.user_id) {
            return Err(FolderError::NotAUser(account.user_id.clone()));
        }
        let mut changed: Vec<FolderPath> = self.changed.iter().cloned().collect();
        // Deepest first, so that a folder is only named by its parent once it exists.
        changed.sort_by_key(|path| std::cmp::Reverse(path.ids().len()));
        for path in changed {
            let folder_metadata = self.metadata(&path)?;
            let recipients: &[Recipient] = if path.is_root() { &self.users } else { &[] };
            let document = metadata::encrypt_metadata(folder_metadata, self.key()?, recipients)?;
            let signature = signature::sign_metadata(&document, &account.private_key, &account.certificate_pem)
                .map_err(|source| FolderError::Signature {
                    folder: path.display(&self.top_level),
                    source,
                })?;
            storage
                .write_metadata(&self.top_level, &path, &SignedMetadata { document, signature })
                .map_err(|source| storage_error(format!("writing {}", path.display(&self.top_level)), source))?;
            seen.record(&self.top_level, &path, folder_metadata);
            self.changed.remove(&path);
        }
        Ok(())
    }

    /// The document at `path` for changing: its counter is bumped once per save.
    fn document_mut(&mut self, path: &FolderPath) -> Result<&mut FolderMetadata, FolderError> {
        let newly_changed = self.changed.insert(path.clone());
        let display = path.display(&self.top_level);
        let document = self.documents.get_mut(path).ok_or(FolderError::NotFound(display))?;
        if newly_changed {
            document.counter += 1;
        }
        Ok(document)
    }

    /// The metadata key, for writing: v1 folders are read-only.
    fn key(&self) -> Result<&MetadataKey, FolderError> {
        match &self.format {
            Format::V2(key) => Ok(key),
            Format::V1(version) => Err(FolderError::LegacyReadOnly(*version)),
        }
    }
}

fn read(storage: &impl FolderStorage, top_level: &str, path: &FolderPath) -> Result<StoredMetadata, FolderError> {
    storage
        .read_metadata(top_level, path)
        .map_err(|source| storage_error(format!("reading {}", path.display(top_level)), source))
}

fn storage_error(what: String, source: std::io::Error) -> FolderError {
    FolderError::Storage { what, source }
}

/// Accounts, storage and a saved example folder shared by the tests of every submodule.
#[cfg(test)]
mod test_fixtures {
    use super::*;
    use crate::storage::LocalDirectory;

    fn account(json: &str) -> Account {
        let value: serde_json::Value = serde_json::from_str(json).expect("json");
        let field = |name: &str| value[name].as_str().expect(name).to_owned();
        Account {
            user_id: field("userId"),
            private_key: RsaPrivateKey::from_pkcs8_pem(&field("privateKeyPem")).expect("key"),
            certificate_pem: field("certificatePem"),
        }
    }

    pub(super) fn alice() -> Account {
        account(include_str!("../../../testdata/nextcloud/alice.json"))
    }

    pub(super) fn bob() -> Account {
        account(include_str!("../../../testdata/nextcloud/bob.json"))
    }

    /// The fixtures' certificates are Nextcloud's; these tests are about the folder protocol, so trust all.
    pub(super) struct TrustEveryone;

    impl CertificateTrust for TrustEveryone {
        fn check_user(&mut self, _user_id: &str, _certificate_pem: &str) -> Result<(), TrustError> {
            Ok(())
        }
    }

    pub(super) struct Fixture {
        pub(super) _directory: tempfile::TempDir,
        pub(super) storage: LocalDirectory,
        pub(super) alice: Account,
        pub(super) bob: Account,
    }

    pub(super) fn fixture() -> Fixture {
        let directory = tempfile::tempdir().expect("tempdir");
        Fixture {
            storage: LocalDirectory::new(directory.path()),
            _directory: directory,
            alice: alice(),
            bob: bob(),
        }
    }

    /// The stored v2 metadata of `path` under "Projects".
    pub(super) fn read_v2(fixture: &Fixture, path: &FolderPath) -> SignedMetadata {
        match fixture.storage.read_metadata("Projects", path).expect("read") {
            StoredMetadata::V2(signed) => signed,
            StoredMetadata::V1(_) => panic!("v1 metadata where v2 was written"),
        }
    }

    pub(super) fn open(fixture: &Fixture, account: &Account, seen: &mut SeenCounters) -> Result<Folder, FolderError> {
        Folder::open(&fixture.storage, "Projects", account, &mut TrustEveryone, seen)
    }

    /// alice's folder "Projects" with `plan.txt` and `Drafts/draft.txt`, saved.
    pub(super) fn projects(fixture: &Fixture, seen: &mut SeenCounters) -> Folder {
        let mut folder = Folder::create("Projects", &fixture.alice).expect("create");
        let drafts = folder.add_subfolder(&FolderPath::root(), "Drafts").expect("mkdir");
        folder
            .add_file(
                &fixture.storage,
                &FolderPath::root(),
                "plan.txt",
                "text/plain",
                &b"the plan"[..],
            )
            .expect("add");
        folder
            .add_file(&fixture.storage, &drafts, "draft.txt", "text/plain", &b"a draft"[..])
            .expect("add");
        folder.save(&fixture.storage, &fixture.alice, seen).expect("save");
        folder
    }

    pub(super) fn read_named(folder: &Folder, storage: &LocalDirectory, names: &str) -> Vec<u8> {
        let (path, id) = folder.resolve_file(names).expect("resolve");
        folder.read_file(storage, &path, &id).expect("decrypt").to_vec()
    }
}
