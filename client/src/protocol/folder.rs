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
use std::io::{BufReader, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::rsa::RsaPrivateKey;
use crate::crypto::{CryptoError, fill_random};
use crate::format::metadata::{FileEntry, FolderMetadata, MetadataDocument, MetadataUser};
use crate::format::metadata_v1::{MetadataV1Document, MetadataV1Version};
use crate::mnemonic::Mnemonic;
use crate::pins::{ContactTrust, TrustError};
use crate::protocol::file::{self, FileCryptoError};
use crate::protocol::metadata::{self, MetadataError, MetadataKey, Recipient};
use crate::protocol::metadata_v1;
use crate::protocol::signature::{self, SignatureError};

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

/// Decides whether a folder user's certificate may be used (wrapped to, and trusted as a signer).
pub trait CertificateTrust {
    /// `Ok` when `certificate_pem` is acceptable for `user_id`.
    fn check_user(&mut self, user_id: &str, certificate_pem: &str) -> Result<(), TrustError>;
}

impl CertificateTrust for ContactTrust {
    fn check_user(&mut self, user_id: &str, certificate_pem: &str) -> Result<(), TrustError> {
        self.check(user_id, certificate_pem).map(|_| ())
    }
}

/// What this device has seen of each folder, for rollback detection (§2.4, §2.5): the highest counter per
/// document (keys `top-level/id/…`) and the `keyChecksums` history per top-level folder, which later versions
/// may only extend. The application persists it (it serializes as JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeenCounters {
    #[serde(default)]
    counters: BTreeMap<String, u64>,
    #[serde(default)]
    key_checksums: BTreeMap<String, Vec<String>>,
}

impl SeenCounters {
    /// The last counter seen for the folder at `path`, or 0.
    pub fn last_seen(&self, top_level: &str, path: &FolderPath) -> u64 {
        self.counters.get(&path.display(top_level)).copied().unwrap_or(0)
    }

    fn record(&mut self, top_level: &str, path: &FolderPath, folder_metadata: &FolderMetadata) {
        let seen = self.counters.entry(path.display(top_level)).or_default();
        *seen = (*seen).max(folder_metadata.counter);
        if path.is_root() {
            self.key_checksums
                .insert(top_level.to_owned(), folder_metadata.key_checksums.clone());
        }
    }

    /// Whether this device has opened or saved `top_level` with v2 metadata.
    fn knows_v2(&self, top_level: &str) -> bool {
        self.counters.contains_key(&FolderPath::root().display(top_level)) || self.key_checksums.contains_key(top_level)
    }

    /// Refuses a root whose `keyChecksums` drops or reorders an entry this device saw.
    fn check_checksums(&self, top_level: &str, folder_metadata: &FolderMetadata) -> Result<(), FolderError> {
        match self.key_checksums.get(top_level) {
            Some(known) if !folder_metadata.key_checksums.starts_with(known) => Err(FolderError::KeyChecksumRemoved),
            _ => Ok(()),
        }
    }
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

/// What a folder contains, by cleartext name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Subfolders: (name, path).
    pub folders: Vec<(String, FolderPath)>,
    /// Files: (name, file id, mimetype).
    pub files: Vec<(String, String, String)>,
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

/// The MIME type that marks a v1 `files{}` entry as a subfolder, whose own metadata sits under its id.
const DIRECTORY_MIMETYPE: &str = "httpd/unix-directory";

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

    /// Opens `top_level` from `storage` as `account`.
    ///
    /// v2 metadata is checked, for the root and every subfolder: every user's certificate (`trust`), the
    /// signature (by one of the root's users), the metadata key's checksum in `keyChecksums`, and that the
    /// counter is not below the one in `seen`, which is then raised.
    ///
    /// Legacy v1.0–1.2 metadata (§2.2) opens read-only: its files can be listed and decrypted, but every change
    /// (`add_file`, `add_subfolder`, `share`, `unshare`, `save`) fails with `LegacyReadOnly`. The spec has
    /// clients migrate v1 to v2 when they write; this client does not yet, because a faithful migration is more
    /// than a re-encryption: it converts every subfolder's separately keyed v1 document, replaces them all
    /// under the server's lock, and takes the folder away from v1-only clients. Copying the files into a new
    /// (v2) folder gets the same result explicitly. v1 has no signature, no users and no counter, so `trust`
    /// is not consulted and `seen` is not raised; but a folder `seen` records as v2 is refused as `Downgraded`.
    /// Subfolders are the v1 entries with MIME type `httpd/unix-directory`, each with its own v1 document.
    /// A v1 `filedrop` block is ignored: it is unsigned, and moving its entries into `files` would be a write.
    /// v1.2 documents are bound to their owner's mnemonic and need `open_with_mnemonic`; here they fail with
    /// `MnemonicRequired`.
    pub fn open(
        storage: &impl FolderStorage,
        top_level: &str,
        account: &Account,
        trust: &mut impl CertificateTrust,
        seen: &mut SeenCounters,
    ) -> Result<Folder, FolderError> {
        Folder::open_with_mnemonic(storage, top_level, account, None, trust, seen)
    }

    /// `open`, with the owner's mnemonic for legacy v1.2 folders, whose checksum is computed over it.
    pub fn open_with_mnemonic(
        storage: &impl FolderStorage,
        top_level: &str,
        account: &Account,
        mnemonic: Option<&Mnemonic>,
        trust: &mut impl CertificateTrust,
        seen: &mut SeenCounters,
    ) -> Result<Folder, FolderError> {
        let root = match read(storage, top_level, &FolderPath::root())? {
            StoredMetadata::V2(root) => root,
            StoredMetadata::V1(root) => return Folder::open_v1(storage, top_level, account, mnemonic, seen, root),
        };
        for user in &root.document.users {
            trust
                .check_user(&user.user_id, &user.certificate)
                .map_err(|source| FolderError::UntrustedCertificate {
                    user_id: user.user_id.clone(),
                    source,
                })?;
        }
        let users = root.document.users.clone();
        verify(top_level, &FolderPath::root(), &root, &users)?;
        let key = metadata::unwrap_metadata_key(&root.document, &account.user_id, &account.private_key)?;

        let mut documents = BTreeMap::new();
        let mut pending = vec![(FolderPath::root(), root)];
        while let Some((path, signed)) = pending.pop() {
            if !path.is_root() {
                verify(top_level, &path, &signed, &users)?;
            }
            // For the root this also requires the key's checksum in keyChecksums.
            let folder_metadata = metadata::decrypt_metadata(&signed.document, &key)?;
            metadata::check_counter(&folder_metadata, seen.last_seen(top_level, &path))?;
            if path.is_root() {
                seen.check_checksums(top_level, &folder_metadata)?;
            }
            for id in folder_metadata.folders.keys() {
                let child = path.child(id);
                let StoredMetadata::V2(signed) = read(storage, top_level, &child)? else {
                    return Err(FolderError::MixedVersions(child.display(top_level)));
                };
                pending.push((child, signed));
            }
            documents.insert(path, folder_metadata);
        }
        // Record counters only once everything verified, so a failed open changes nothing.
        for (path, folder_metadata) in &documents {
            seen.record(top_level, path, folder_metadata);
        }
        Ok(Folder {
            top_level: top_level.to_owned(),
            format: Format::V2(key),
            users: users
                .into_iter()
                .map(|user| Recipient {
                    user_id: user.user_id,
                    certificate_pem: user.certificate,
                })
                .collect(),
            documents,
            changed: BTreeSet::new(),
        })
    }

    /// The v1 half of `open_with_mnemonic`: every document opened with `account`'s key (and, for v1.2, checked
    /// against `mnemonic`), subfolders found by their MIME type.
    fn open_v1(
        storage: &impl FolderStorage,
        top_level: &str,
        account: &Account,
        mnemonic: Option<&Mnemonic>,
        seen: &SeenCounters,
        root: MetadataV1Document,
    ) -> Result<Folder, FolderError> {
        // Unsigned v1 in place of signed v2 would let whoever serves the metadata drop every v2 check.
        if seen.knows_v2(top_level) {
            return Err(FolderError::Downgraded);
        }
        let version = root.version;
        let mut documents = BTreeMap::new();
        let mut pending = vec![(FolderPath::root(), root)];
        while let Some((path, document)) = pending.pop() {
            let opened = metadata_v1::open_metadata_v1(&document, &account.private_key, mnemonic)?;
            let mut folder_metadata = FolderMetadata::default();
            for (id, entry) in opened.files {
                if entry.mimetype != DIRECTORY_MIMETYPE {
                    folder_metadata.files.insert(id, entry);
                    continue;
                }
                let child = path.child(&id);
                let StoredMetadata::V1(child_document) = read(storage, top_level, &child)? else {
                    return Err(FolderError::MixedVersions(child.display(top_level)));
                };
                pending.push((child, child_document));
                folder_metadata.folders.insert(id, entry.filename);
            }
            documents.insert(path, folder_metadata);
        }
        Ok(Folder {
            top_level: top_level.to_owned(),
            format: Format::V1(version),
            // v1 has no users array: the folder is its owner's, whose key opened it.
            users: vec![account.recipient()],
            documents,
            changed: BTreeSet::new(),
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

    /// The subfolders and files at `path`, sorted by name.
    pub fn list(&self, path: &FolderPath) -> Result<Listing, FolderError> {
        let folder_metadata = self.metadata(path)?;
        let mut folders: Vec<_> = folder_metadata
            .folders
            .iter()
            .map(|(id, name)| (name.clone(), path.child(id)))
            .collect();
        folders.sort();
        let mut files: Vec<_> = folder_metadata
            .files
            .iter()
            .map(|(id, entry)| (entry.filename.clone(), id.clone(), entry.mimetype.clone()))
            .collect();
        files.sort();
        Ok(Listing { folders, files })
    }

    /// Resolves a `/`-separated path of cleartext subfolder names (empty for the root).
    pub fn resolve_folder(&self, names: &str) -> Result<FolderPath, FolderError> {
        let mut path = FolderPath::root();
        for name in names.split('/').filter(|name| !name.is_empty()) {
            let folder_metadata = self.metadata(&path)?;
            let id = folder_metadata
                .folders
                .iter()
                .find(|(_, folder_name)| *folder_name == name)
                .map(|(id, _)| id.clone())
                .ok_or_else(|| FolderError::NotFound(names.to_owned()))?;
            path = path.child(&id);
        }
        Ok(path)
    }

    /// Resolves `subfolder/…/file name` to the file's folder and id.
    pub fn resolve_file(&self, names: &str) -> Result<(FolderPath, String), FolderError> {
        let (folder_names, file_name) = names.rsplit_once('/').unwrap_or(("", names));
        let path = self.resolve_folder(folder_names)?;
        let id = self
            .metadata(&path)?
            .files
            .iter()
            .find(|(_, entry)| entry.filename == file_name)
            .map(|(id, _)| id.clone())
            .ok_or_else(|| FolderError::NotFound(names.to_owned()))?;
        Ok((path, id))
    }

    /// Adds an empty subfolder `name` in `parent`; returns its path.
    pub fn add_subfolder(&mut self, parent: &FolderPath, name: &str) -> Result<FolderPath, FolderError> {
        self.key()?;
        self.check_name_free(parent, name)?;
        let id = random_id()?;
        self.document_mut(parent)?.folders.insert(id.clone(), name.to_owned());
        let child = parent.child(&id);
        self.documents.insert(
            child.clone(),
            FolderMetadata {
                deleted: Some(false),
                counter: 1,
                ..FolderMetadata::default()
            },
        );
        self.changed.insert(child.clone());
        Ok(child)
    }

    /// Encrypts `plaintext` under a fresh file key and nonce into a new blob in `parent`, and records it in
    /// the folder's metadata as `filename`. Returns the file id. The metadata is written by `save`.
    pub fn add_file(
        &mut self,
        storage: &impl FolderStorage,
        parent: &FolderPath,
        filename: &str,
        mimetype: &str,
        plaintext: impl Read,
    ) -> Result<String, FolderError> {
        self.key()?;
        self.check_name_free(parent, filename)?;
        let id = random_id()?;
        let blob = storage
            .create_blob(&self.top_level, parent, &id)
            .map_err(|source| storage_error(format!("creating blob {id}"), source))?;
        let encrypted = file::encrypt(BufReader::with_capacity(file::CHUNK_LEN, plaintext), blob)?;
        let entry: FileEntry = encrypted.metadata_entry(filename, mimetype);
        self.document_mut(parent)?.files.insert(id.clone(), entry);
        Ok(id)
    }

    /// Decrypts file `file_id` of `path` into `destination`, which appears only once the tag verified.
    pub fn decrypt_file_to(
        &self,
        storage: &impl FolderStorage,
        path: &FolderPath,
        file_id: &str,
        destination: &Path,
    ) -> Result<u64, FolderError> {
        let entry = self.file_entry(path, file_id)?;
        let blob = self.open_blob(storage, path, file_id)?;
        Ok(file::decrypt_to_path(
            blob,
            &entry.key,
            &entry.nonce,
            Some(&entry.authentication_tag),
            destination,
        )?)
    }

    /// Decrypts file `file_id` of `path` in memory.
    pub fn read_file(
        &self,
        storage: &impl FolderStorage,
        path: &FolderPath,
        file_id: &str,
    ) -> Result<Zeroizing<Vec<u8>>, FolderError> {
        let entry = self.file_entry(path, file_id)?;
        let blob = self.open_blob(storage, path, file_id)?;
        Ok(file::decrypt_to_vec(
            blob,
            &entry.key,
            &entry.nonce,
            Some(&entry.authentication_tag),
        )?)
    }

    /// Gives `user` access: rotates the metadata key and wraps it for every user including `user`.
    /// The caller has checked `user.certificate_pem` (CA and pin) before.
    pub fn share(&mut self, user: Recipient) -> Result<(), FolderError> {
        self.key()?;
        if self.users.iter().any(|existing| existing.user_id == user.user_id) {
            return Err(FolderError::AlreadyAUser(user.user_id));
        }
        self.users.push(user);
        self.rotate_key()
    }

    /// Removes `user_id`'s access: rotates the metadata key so metadata written from now on is not readable by
    /// them. Files are not re-encrypted (as in every v2 client, §4): they keep the file keys they saw before.
    pub fn unshare(&mut self, user_id: &str) -> Result<(), FolderError> {
        self.key()?;
        let Some(position) = self.users.iter().position(|user| user.user_id == user_id) else {
            return Err(FolderError::NotAUser(user_id.to_owned()));
        };
        if self.users.len() == 1 {
            return Err(FolderError::LastUser);
        }
        self.users.remove(position);
        self.rotate_key()
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

    /// A fresh metadata key, its checksum appended, and every document marked for re-encryption.
    fn rotate_key(&mut self) -> Result<(), FolderError> {
        let key = MetadataKey::generate()?;
        let checksum = key.checksum();
        self.format = Format::V2(key);
        self.document_mut(&FolderPath::root())?.key_checksums.push(checksum);
        let paths: Vec<FolderPath> = self.documents.keys().cloned().collect();
        for path in paths {
            self.document_mut(&path)?;
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

    fn check_name_free(&self, parent: &FolderPath, name: &str) -> Result<(), FolderError> {
        if name.is_empty() || name.contains('/') {
            return Err(FolderError::InvalidName(name.to_owned()));
        }
        let folder_metadata = self.metadata(parent)?;
        let taken = folder_metadata.folders.values().any(|existing| existing == name)
            || folder_metadata.files.values().any(|entry| entry.filename == name);
        if taken {
            return Err(FolderError::NameTaken(name.to_owned()));
        }
        Ok(())
    }

    fn file_entry(&self, path: &FolderPath, file_id: &str) -> Result<&FileEntry, FolderError> {
        self.metadata(path)?
            .files
            .get(file_id)
            .ok_or_else(|| FolderError::NotFound(file_id.to_owned()))
    }

    fn open_blob<S: FolderStorage>(
        &self,
        storage: &S,
        path: &FolderPath,
        file_id: &str,
    ) -> Result<BufReader<S::BlobReader>, FolderError> {
        storage
            .open_blob(&self.top_level, path, file_id)
            .map(|blob| BufReader::with_capacity(file::CHUNK_LEN, blob))
            .map_err(|source| storage_error(format!("opening blob {file_id}"), source))
    }
}

fn read(storage: &impl FolderStorage, top_level: &str, path: &FolderPath) -> Result<StoredMetadata, FolderError> {
    storage
        .read_metadata(top_level, path)
        .map_err(|source| storage_error(format!("reading {}", path.display(top_level)), source))
}

fn verify(
    top_level: &str,
    path: &FolderPath,
    signed: &SignedMetadata,
    users: &[MetadataUser],
) -> Result<(), FolderError> {
    signature::verify_metadata_signature(&signed.document, &signed.signature, users)
        .map(|_signer| ())
        .map_err(|source| FolderError::Signature {
            folder: path.display(top_level),
            source,
        })
}

fn storage_error(what: String, source: std::io::Error) -> FolderError {
    FolderError::Storage { what, source }
}

/// A random 32-hex-character id, as Nextcloud names encrypted files and folders (§2.3).
fn random_id() -> Result<String, CryptoError> {
    let mut bytes = [0u8; 16];
    fill_random(&mut bytes)?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
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

    fn alice() -> Account {
        account(include_str!("../../testdata/nextcloud/alice.json"))
    }

    fn bob() -> Account {
        account(include_str!("../../testdata/nextcloud/bob.json"))
    }

    /// The fixtures' certificates are Nextcloud's; these tests are about the folder protocol, so trust all.
    struct TrustEveryone;

    impl CertificateTrust for TrustEveryone {
        fn check_user(&mut self, _user_id: &str, _certificate_pem: &str) -> Result<(), TrustError> {
            Ok(())
        }
    }

    /// Refuses one user, like a pin conflict would.
    struct Refuse(&'static str);

    impl CertificateTrust for Refuse {
        fn check_user(&mut self, user_id: &str, _certificate_pem: &str) -> Result<(), TrustError> {
            if user_id == self.0 {
                return Err(TrustError::Pin(crate::pins::PinError::Certificate("refused".into())));
            }
            Ok(())
        }
    }

    struct Fixture {
        _directory: tempfile::TempDir,
        storage: LocalDirectory,
        alice: Account,
        bob: Account,
    }

    fn fixture() -> Fixture {
        let directory = tempfile::tempdir().expect("tempdir");
        Fixture {
            storage: LocalDirectory::new(directory.path()),
            _directory: directory,
            alice: alice(),
            bob: bob(),
        }
    }

    /// The stored v2 metadata of `path` under "Projects".
    fn read_v2(fixture: &Fixture, path: &FolderPath) -> SignedMetadata {
        match fixture.storage.read_metadata("Projects", path).expect("read") {
            StoredMetadata::V2(signed) => signed,
            StoredMetadata::V1(_) => panic!("v1 metadata where v2 was written"),
        }
    }

    fn open(fixture: &Fixture, account: &Account, seen: &mut SeenCounters) -> Result<Folder, FolderError> {
        Folder::open(&fixture.storage, "Projects", account, &mut TrustEveryone, seen)
    }

    /// alice's folder "Projects" with `plan.txt` and `Drafts/draft.txt`, saved.
    fn projects(fixture: &Fixture, seen: &mut SeenCounters) -> Folder {
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

    fn read_named(folder: &Folder, storage: &LocalDirectory, names: &str) -> Vec<u8> {
        let (path, id) = folder.resolve_file(names).expect("resolve");
        folder.read_file(storage, &path, &id).expect("decrypt").to_vec()
    }

    #[test]
    fn created_folders_reopen_with_subfolders_and_files() {
        let fixture = fixture();
        let mut seen = SeenCounters::default();
        projects(&fixture, &mut seen);
        let reopened = open(&fixture, &fixture.alice, &mut SeenCounters::default()).expect("open");
        assert_eq!(reopened.user_ids().collect::<Vec<_>>(), ["alice"]);
        let listing = reopened.list(&FolderPath::root()).expect("list");
        assert_eq!(listing.folders.len(), 1);
        assert_eq!(listing.folders[0].0, "Drafts");
        assert_eq!(listing.files[0].0, "plan.txt");
        assert_eq!(read_named(&reopened, &fixture.storage, "plan.txt"), b"the plan");
        assert_eq!(read_named(&reopened, &fixture.storage, "Drafts/draft.txt"), b"a draft");
        // The blob is stored under its id, and its last 16 bytes are the tag recorded in metadata.
        let (path, id) = reopened.resolve_file("plan.txt").expect("resolve");
        let mut blob = Vec::new();
        fixture
            .storage
            .open_blob("Projects", &path, &id)
            .expect("blob")
            .read_to_end(&mut blob)
            .expect("read");
        assert_eq!(blob.len(), b"the plan".len() + 16);
        let entry = &reopened.metadata(&path).expect("meta").files[&id];
        assert_eq!(&blob[blob.len() - 16..], entry.authentication_tag.as_bytes());
        // Names are unique within a folder; bob is not a user.
        let mut folder = reopened;
        assert!(matches!(
            folder.add_subfolder(&FolderPath::root(), "plan.txt"),
            Err(FolderError::NameTaken(_))
        ));
        assert!(matches!(
            open(&fixture, &fixture.bob, &mut SeenCounters::default()),
            Err(FolderError::Metadata(MetadataError::NotARecipient(_)))
        ));
    }

    #[test]
    fn share_then_unshare_rotates_the_key_and_locks_the_removed_user_out_of_new_metadata() {
        let fixture = fixture();
        let mut alice_seen = SeenCounters::default();
        let mut folder = projects(&fixture, &mut alice_seen);
        let (plan_path, plan_id) = folder.resolve_file("plan.txt").expect("resolve");
        let plan_blob_before = std::fs::read(fixture._directory.path().join("Projects").join(&plan_id)).expect("blob");
        let first_checksums = folder
            .metadata(&FolderPath::root())
            .expect("root")
            .key_checksums
            .clone();

        folder.share(fixture.bob.recipient()).expect("share");
        assert!(matches!(
            folder.share(fixture.bob.recipient()),
            Err(FolderError::AlreadyAUser(_))
        ));
        folder
            .save(&fixture.storage, &fixture.alice, &mut alice_seen)
            .expect("save");

        let mut bob_seen = SeenCounters::default();
        let bobs_view = open(&fixture, &fixture.bob, &mut bob_seen).expect("bob opens");
        assert_eq!(bobs_view.user_ids().collect::<Vec<_>>(), ["alice", "bob"]);
        assert_eq!(read_named(&bobs_view, &fixture.storage, "Drafts/draft.txt"), b"a draft");
        let shared_checksums = bobs_view
            .metadata(&FolderPath::root())
            .expect("root")
            .key_checksums
            .clone();
        assert_eq!(shared_checksums.len(), 2);
        assert_eq!(shared_checksums[0], first_checksums[0]);

        folder.unshare("bob").expect("unshare");
        assert!(matches!(folder.unshare("bob"), Err(FolderError::NotAUser(_))));
        assert!(matches!(folder.unshare("alice"), Err(FolderError::LastUser)));
        let drafts = folder.resolve_folder("Drafts").expect("drafts");
        folder
            .add_file(&fixture.storage, &drafts, "secret.txt", "text/plain", &b"after bob"[..])
            .expect("add");
        folder
            .save(&fixture.storage, &fixture.alice, &mut alice_seen)
            .expect("save");

        // bob is no longer a recipient of the new key, so he cannot open the root, and the subfolder that
        // names the new file does not decrypt under the key he had.
        assert!(matches!(
            open(&fixture, &fixture.bob, &mut bob_seen),
            Err(FolderError::Metadata(MetadataError::NotARecipient(_)))
        ));
        let old_key = bobs_view.key().expect("v2").clone();
        let subfolder = read_v2(&fixture, &drafts);
        assert!(matches!(
            metadata::decrypt_metadata(&subfolder.document, &old_key),
            Err(MetadataError::Authentication)
        ));

        let alices_view = open(&fixture, &fixture.alice, &mut SeenCounters::default()).expect("alice opens");
        let root = alices_view.metadata(&FolderPath::root()).expect("root");
        assert_eq!(root.key_checksums.len(), 3);
        assert_eq!(root.key_checksums[..2], shared_checksums[..]);
        assert_eq!(
            read_named(&alices_view, &fixture.storage, "Drafts/secret.txt"),
            b"after bob"
        );
        assert_eq!(read_named(&alices_view, &fixture.storage, "plan.txt"), b"the plan");
        // Rotation never re-encrypts file blobs.
        let plan_blob_after = std::fs::read(fixture._directory.path().join("Projects").join(&plan_id)).expect("blob");
        assert_eq!(plan_blob_before, plan_blob_after);
        assert!(plan_path.is_root());
    }

    #[test]
    fn metadata_with_a_lower_counter_than_seen_is_rejected() {
        let fixture = fixture();
        let mut alice_seen = SeenCounters::default();
        let mut folder = projects(&fixture, &mut alice_seen);
        folder.share(fixture.bob.recipient()).expect("share");
        folder
            .save(&fixture.storage, &fixture.alice, &mut alice_seen)
            .expect("save");
        let old_root = read_v2(&fixture, &FolderPath::root());

        folder
            .add_file(
                &fixture.storage,
                &FolderPath::root(),
                "new.txt",
                "text/plain",
                &b"new"[..],
            )
            .expect("add");
        folder
            .save(&fixture.storage, &fixture.alice, &mut alice_seen)
            .expect("save");
        let mut bob_seen = SeenCounters::default();
        open(&fixture, &fixture.bob, &mut bob_seen).expect("bob sees the new state");
        let current = bob_seen.last_seen("Projects", &FolderPath::root());

        // The server serves the older, validly signed root again.
        fixture
            .storage
            .write_metadata("Projects", &FolderPath::root(), &old_root)
            .expect("rollback");
        match open(&fixture, &fixture.bob, &mut bob_seen) {
            Err(FolderError::Metadata(MetadataError::RolledBack { counter, last_seen })) => {
                assert_eq!(last_seen, current);
                assert!(counter < current);
            }
            other => panic!("expected RolledBack, got {other:?}"),
        }
        // A fresh device has no history and accepts it; the failed open did not lower bob's counter.
        open(&fixture, &fixture.bob, &mut SeenCounters::default()).expect("no history");
        assert_eq!(bob_seen.last_seen("Projects", &FolderPath::root()), current);
    }

    #[test]
    fn a_root_that_drops_a_key_checksum_seen_before_is_rejected() {
        let fixture = fixture();
        let mut alice_seen = SeenCounters::default();
        let mut folder = projects(&fixture, &mut alice_seen);
        folder.share(fixture.bob.recipient()).expect("share");
        folder
            .save(&fixture.storage, &fixture.alice, &mut alice_seen)
            .expect("save");
        let mut bob_seen = SeenCounters::default();
        open(&fixture, &fixture.bob, &mut bob_seen).expect("bob opens");

        // A (validly signed, higher-counter) root whose history lost its first key.
        let root = folder.document_mut(&FolderPath::root()).expect("root");
        root.key_checksums.remove(0);
        folder
            .save(&fixture.storage, &fixture.alice, &mut SeenCounters::default())
            .expect("save");
        assert!(matches!(
            open(&fixture, &fixture.bob, &mut bob_seen),
            Err(FolderError::KeyChecksumRemoved)
        ));
        // Without history the document is consistent (its key is listed), so a new device accepts it.
        open(&fixture, &fixture.bob, &mut SeenCounters::default()).expect("no history");
    }

    #[test]
    fn a_root_whose_key_checksum_is_not_listed_is_rejected_even_when_validly_signed() {
        let fixture = fixture();
        let mut seen = SeenCounters::default();
        let folder = projects(&fixture, &mut seen);
        // Re-encrypt the root under a substituted key that is wrapped for alice but not in keyChecksums.
        let substitute = MetadataKey::generate().expect("key");
        let inner = folder.metadata(&FolderPath::root()).expect("root").clone();
        let without_users = metadata::encrypt_metadata(&inner, &substitute, &[]).expect("encrypt");
        let with_users =
            metadata::encrypt_metadata(&FolderMetadata::default(), &substitute, &[fixture.alice.recipient()])
                .expect("wrap");
        let document = MetadataDocument {
            users: with_users.users,
            ..without_users
        };
        let signature = signature::sign_metadata(&document, &fixture.alice.private_key, &fixture.alice.certificate_pem)
            .expect("sign");
        fixture
            .storage
            .write_metadata("Projects", &FolderPath::root(), &SignedMetadata { document, signature })
            .expect("write");
        assert!(matches!(
            open(&fixture, &fixture.alice, &mut SeenCounters::default()),
            Err(FolderError::Metadata(MetadataError::UnknownKey))
        ));
    }

    #[test]
    fn signatures_must_verify_and_be_by_a_folder_user_and_certificates_must_be_trusted() {
        let fixture = fixture();
        let mut seen = SeenCounters::default();
        let folder = projects(&fixture, &mut seen);
        let root = read_v2(&fixture, &FolderPath::root());

        // bob (not a user) signs alice's document: unknown signer.
        let by_bob = signature::sign_metadata(&root.document, &fixture.bob.private_key, &fixture.bob.certificate_pem)
            .expect("sign");
        fixture
            .storage
            .write_metadata(
                "Projects",
                &FolderPath::root(),
                &SignedMetadata {
                    document: root.document.clone(),
                    signature: by_bob,
                },
            )
            .expect("write");
        assert!(matches!(
            open(&fixture, &fixture.alice, &mut SeenCounters::default()),
            Err(FolderError::Signature {
                source: SignatureError::UnknownSigner,
                ..
            })
        ));

        // A signature over another document (the subfolder's) does not verify for the root.
        let drafts = folder.resolve_folder("Drafts").expect("drafts");
        let subfolder = read_v2(&fixture, &drafts);
        fixture
            .storage
            .write_metadata(
                "Projects",
                &FolderPath::root(),
                &SignedMetadata {
                    document: root.document.clone(),
                    signature: subfolder.signature.clone(),
                },
            )
            .expect("write");
        assert!(matches!(
            open(&fixture, &fixture.alice, &mut SeenCounters::default()),
            Err(FolderError::Signature { .. })
        ));

        // Restored, it opens; an untrusted user certificate stops the open before any key is used.
        fixture
            .storage
            .write_metadata("Projects", &FolderPath::root(), &root)
            .expect("write");
        open(&fixture, &fixture.alice, &mut SeenCounters::default()).expect("restored");
        assert!(matches!(
            Folder::open(
                &fixture.storage,
                "Projects",
                &fixture.alice,
                &mut Refuse("alice"),
                &mut seen
            ),
            Err(FolderError::UntrustedCertificate { .. })
        ));

        // Someone who is not a user cannot save (their signature would not verify for readers).
        let mut folder = folder;
        folder.add_subfolder(&FolderPath::root(), "More").expect("mkdir");
        assert!(matches!(
            folder.save(&fixture.storage, &fixture.bob, &mut seen),
            Err(FolderError::NotAUser(_))
        ));
    }

    /// Writes `json` as the metadata of `path` under "Legacy", the way a v1 client left it (no signature).
    fn write_v1(fixture: &Fixture, path: &FolderPath, json: &str) {
        let mut directory = fixture._directory.path().join("Legacy");
        for id in path.ids() {
            directory.push(id);
        }
        std::fs::create_dir_all(&directory).expect("mkdir");
        std::fs::write(directory.join("meta.data"), json).expect("write");
    }

    fn open_legacy(fixture: &Fixture, mnemonic: Option<&Mnemonic>) -> Result<Folder, FolderError> {
        Folder::open_with_mnemonic(
            &fixture.storage,
            "Legacy",
            &fixture.alice,
            mnemonic,
            &mut TrustEveryone,
            &mut SeenCounters::default(),
        )
    }

    fn alice_mnemonic() -> Mnemonic {
        let value: serde_json::Value =
            serde_json::from_str(include_str!("../../testdata/nextcloud/alice.json")).expect("json");
        Mnemonic::parse(value["mnemonic"].as_str().expect("mnemonic")).expect("mnemonic")
    }

    /// A v1.1 document for alice, as §2.2 describes it: the metadata key wrapped as
    /// base64(RSA-OAEP(base64(base64(key)))), each entry's `encrypted` the base64 JSON of its secrets under it.
    fn v1_1_document(alice: &Account, entries: &[(&str, &FileEntry)]) -> String {
        use base64::Engine;
        use base64::engine::general_purpose::STANDARD;
        let metadata_key = crate::crypto::gcm::Aes128Key::generate().expect("key");
        let public_key = crate::crypto::rsa::RsaPublicKey::from_certificate_pem(&alice.certificate_pem).expect("cert");
        let doubled = STANDARD.encode(STANDARD.encode(metadata_key.as_bytes()));
        let wrapped = STANDARD.encode(public_key.encrypt(doubled.as_bytes()).expect("wrap"));
        let mut files = serde_json::Map::new();
        for (id, entry) in entries {
            let secrets = serde_json::json!({
                "key": STANDARD.encode(entry.key.as_bytes()),
                "filename": entry.filename,
                "mimetype": entry.mimetype,
            });
            let nonce = crate::crypto::gcm::GcmNonce::random16().expect("nonce");
            let sealed =
                crate::crypto::gcm::seal(&metadata_key, &nonce, STANDARD.encode(secrets.to_string()).as_bytes())
                    .expect("seal");
            let encrypted = format!("{}|{}", STANDARD.encode(sealed), STANDARD.encode(nonce.as_bytes()));
            files.insert(
                (*id).to_owned(),
                serde_json::json!({
                    "encrypted": encrypted,
                    "initializationVector": STANDARD.encode(entry.nonce.as_bytes()),
                    "authenticationTag": STANDARD.encode(entry.authentication_tag.as_bytes()),
                }),
            );
        }
        serde_json::json!({"metadata": {"metadataKey": wrapped, "version": "1.1"}, "files": files}).to_string()
    }

    /// The generated v1.0, v1.1 and v1.2 documents (testdata/metadata-v1) open through `Folder::open` and list
    /// the files their generator recorded; v1.2 only with the owner's mnemonic.
    #[test]
    fn generated_v1_documents_open_read_only() {
        let expected: serde_json::Value =
            serde_json::from_str(include_str!("../../testdata/metadata-v1/expected.json")).expect("json");
        for (version, json, legacy_version) in [
            (
                "v1.0",
                include_str!("../../testdata/metadata-v1/v1.0.json"),
                MetadataV1Version::V1_0,
            ),
            (
                "v1.1",
                include_str!("../../testdata/metadata-v1/v1.1.json"),
                MetadataV1Version::V1_1,
            ),
            (
                "v1.2",
                include_str!("../../testdata/metadata-v1/v1.2.json"),
                MetadataV1Version::V1_2,
            ),
        ] {
            let fixture = fixture();
            write_v1(&fixture, &FolderPath::root(), json);
            let entries = expected[version]["files"].as_object().expect("files");
            let is_directory = |secrets: &serde_json::Value| secrets["mimetype"] == DIRECTORY_MIMETYPE;
            // v1.0's "Photos" is a subfolder: its own document is the v1.1 one (any v1 document for alice).
            for (id, _) in entries.iter().filter(|(_, secrets)| is_directory(secrets)) {
                write_v1(
                    &fixture,
                    &FolderPath::root().child(id),
                    include_str!("../../testdata/metadata-v1/v1.1.json"),
                );
            }
            let folder = if legacy_version == MetadataV1Version::V1_2 {
                assert!(matches!(
                    Folder::open(
                        &fixture.storage,
                        "Legacy",
                        &fixture.alice,
                        &mut TrustEveryone,
                        &mut SeenCounters::default()
                    ),
                    Err(FolderError::Metadata(MetadataError::MnemonicRequired))
                ));
                let other = Mnemonic::generate().expect("mnemonic");
                assert!(matches!(
                    open_legacy(&fixture, Some(&other)),
                    Err(FolderError::Metadata(MetadataError::ChecksumMismatch))
                ));
                open_legacy(&fixture, Some(&alice_mnemonic())).expect(version)
            } else {
                let mut seen = SeenCounters::default();
                let folder = Folder::open(
                    &fixture.storage,
                    "Legacy",
                    &fixture.alice,
                    &mut TrustEveryone,
                    &mut seen,
                )
                .expect(version);
                assert_eq!(seen, SeenCounters::default(), "v1 has no counter to record");
                folder
            };
            assert_eq!(folder.legacy_version(), Some(legacy_version));
            assert_eq!(folder.user_ids().collect::<Vec<_>>(), ["alice"]);
            let listing = folder.list(&FolderPath::root()).expect("list");
            let names = |directories: bool| {
                let mut names: Vec<&str> = entries
                    .values()
                    .filter(|secrets| is_directory(secrets) == directories)
                    .map(|secrets| secrets["filename"].as_str().expect("filename"))
                    .collect();
                names.sort_unstable();
                names
            };
            let listed_files: Vec<&str> = listing.files.iter().map(|(name, _, _)| name.as_str()).collect();
            assert_eq!(listed_files, names(false), "{version}");
            let listed_folders: Vec<&str> = listing.folders.iter().map(|(name, _)| name.as_str()).collect();
            assert_eq!(listed_folders, names(true), "{version}");
            for (_, subfolder) in &listing.folders {
                assert_eq!(folder.list(subfolder).expect("list").files.len(), 1, "{version}");
            }
        }
    }

    /// A v1 folder with a subfolder and real blobs: files decrypt, every change is refused, nothing is written.
    #[test]
    fn a_v1_folder_with_a_subfolder_decrypts_and_refuses_changes() {
        let fixture = fixture();
        let storage = &fixture.storage;
        let subfolder_id = "0123456789abcdef0123456789abcdef";
        let subfolder = FolderPath::root().child(subfolder_id);
        let mut blob = Vec::new();
        let top_file = file::encrypt(&b"top secret"[..], &mut blob).expect("encrypt");
        let mut top_blob = storage.create_blob("Legacy", &FolderPath::root(), "aa").expect("blob");
        top_blob.write_all(&blob).expect("write");
        let mut blob = Vec::new();
        let inner_file = file::encrypt(&b"inner secret"[..], &mut blob).expect("encrypt");
        let mut inner_blob = storage.create_blob("Legacy", &subfolder, "bb").expect("blob");
        inner_blob.write_all(&blob).expect("write");
        let directory_entry = FileEntry {
            mimetype: DIRECTORY_MIMETYPE.to_owned(),
            ..top_file.metadata_entry("Drafts", "")
        };
        write_v1(
            &fixture,
            &FolderPath::root(),
            &v1_1_document(
                &fixture.alice,
                &[
                    ("aa", &top_file.metadata_entry("top.txt", "text/plain")),
                    (subfolder_id, &directory_entry),
                ],
            ),
        );
        write_v1(
            &fixture,
            &subfolder,
            &v1_1_document(
                &fixture.alice,
                &[("bb", &inner_file.metadata_entry("inner.txt", "text/plain"))],
            ),
        );

        let mut folder = open_legacy(&fixture, None).expect("open");
        let listing = folder.list(&FolderPath::root()).expect("list");
        assert_eq!(listing.folders, [("Drafts".to_owned(), subfolder.clone())]);
        assert_eq!(listing.files.len(), 1);
        assert_eq!(folder.resolve_folder("Drafts").expect("resolve"), subfolder);
        let (path, id) = folder.resolve_file("Drafts/inner.txt").expect("resolve");
        assert_eq!(*folder.read_file(storage, &path, &id).expect("read"), b"inner secret");
        let (path, id) = folder.resolve_file("top.txt").expect("resolve");
        assert_eq!(*folder.read_file(storage, &path, &id).expect("read"), b"top secret");

        let before: Vec<_> = std::fs::read_dir(fixture._directory.path().join("Legacy"))
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        let read_only = |result: Result<(), FolderError>| {
            assert!(
                matches!(result, Err(FolderError::LegacyReadOnly(MetadataV1Version::V1_1))),
                "{result:?}"
            );
        };
        read_only(
            folder
                .add_file(storage, &FolderPath::root(), "new.txt", "text/plain", &b"new"[..])
                .map(|_| ()),
        );
        read_only(folder.add_subfolder(&FolderPath::root(), "New").map(|_| ()));
        read_only(folder.share(fixture.bob.recipient()));
        read_only(folder.unshare("alice"));
        read_only(folder.save(storage, &fixture.alice, &mut SeenCounters::default()));
        let after: Vec<_> = std::fs::read_dir(fixture._directory.path().join("Legacy"))
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(before, after, "no blob or metadata was written");

        // bob cannot open alice's v1 folder: the key is wrapped for her alone.
        assert!(matches!(
            Folder::open(
                storage,
                "Legacy",
                &fixture.bob,
                &mut TrustEveryone,
                &mut SeenCounters::default()
            ),
            Err(FolderError::Metadata(MetadataError::KeyUnwrap))
        ));
    }

    /// The Android v1.2 checksum vector in a folder: the right mnemonic passes the checksum and stops at the key
    /// (the vector truncated it), a wrong one stops at the checksum.
    #[test]
    fn nextcloud_vector_android_checksum_v1_2_through_folder_open() {
        let vector: serde_json::Value =
            serde_json::from_str(include_str!("../../testdata/nextcloud/android-checksum-v1.2.json")).expect("json");
        let mnemonic = Mnemonic::parse(vector["mnemonic"].as_str().expect("mnemonic")).expect("parse");
        let entry = serde_json::json!({
            "encrypted": "AAAA|AAAAAAAAAAAAAAAAAAAAAA==",
            "initializationVector": "AAAAAAAAAAAAAAAAAAAAAA==",
            "authenticationTag": "AAAAAAAAAAAAAAAAAAAAAA==",
        });
        let files: serde_json::Map<String, serde_json::Value> = vector["fileIds"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|id| (id.as_str().expect("id").to_owned(), entry.clone()))
            .collect();
        let document = serde_json::json!({
            "metadata": {
                "metadataKey": vector["encryptedMetadataKey"],
                "checksum": vector["expectedChecksum"],
                "version": 1.2,
            },
            "files": files,
        });
        let fixture = fixture();
        write_v1(&fixture, &FolderPath::root(), &document.to_string());
        assert!(matches!(
            open_legacy(&fixture, Some(&mnemonic)),
            Err(FolderError::Metadata(MetadataError::Base64("metadataKey")))
        ));
        assert!(matches!(
            open_legacy(&fixture, Some(&alice_mnemonic())),
            Err(FolderError::Metadata(MetadataError::ChecksumMismatch))
        ));
    }

    /// A folder this device saw as v2 is refused when served as v1; a v2 root with a v1 subfolder is refused.
    #[test]
    fn v1_in_place_of_v2_is_refused() {
        let fixture = fixture();
        let mut seen = SeenCounters::default();
        let mut folder = Folder::create("Legacy", &fixture.alice).expect("create");
        let drafts = folder.add_subfolder(&FolderPath::root(), "Drafts").expect("mkdir");
        folder.save(&fixture.storage, &fixture.alice, &mut seen).expect("save");

        write_v1(&fixture, &drafts, include_str!("../../testdata/metadata-v1/v1.1.json"));
        assert!(matches!(
            Folder::open(
                &fixture.storage,
                "Legacy",
                &fixture.alice,
                &mut TrustEveryone,
                &mut seen
            ),
            Err(FolderError::MixedVersions(_))
        ));
        write_v1(
            &fixture,
            &FolderPath::root(),
            include_str!("../../testdata/metadata-v1/v1.1.json"),
        );
        assert!(matches!(
            Folder::open(
                &fixture.storage,
                "Legacy",
                &fixture.alice,
                &mut TrustEveryone,
                &mut seen
            ),
            Err(FolderError::Downgraded)
        ));
        // A device that never saw it as v2 reads it.
        open_legacy(&fixture, None).expect("a fresh device");
    }

    /// Metadata of a version this client does not know is refused, whichever generation it looks like.
    #[test]
    fn unknown_metadata_versions_are_refused() {
        for json in [
            r#"{"metadata":{"ciphertext":"YQ==","nonce":"YQ==","authenticationTag":"YQ=="},"version":"3.0"}"#,
            r#"{"metadata":{"metadataKey":"YQ==","version":"1.7"},"files":{}}"#,
            r#"{"metadata":{"metadataKey":"YQ=="},"files":{}}"#,
        ] {
            let fixture = fixture();
            write_v1(&fixture, &FolderPath::root(), json);
            let error = open_legacy(&fixture, None).expect_err(json);
            let FolderError::Storage { source, .. } = &error else {
                panic!("{error:?}")
            };
            assert_eq!(source.kind(), std::io::ErrorKind::InvalidData);
            let format_error = source
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<crate::format::metadata::MetadataFormatError>());
            assert!(
                matches!(
                    format_error,
                    Some(crate::format::metadata::MetadataFormatError::UnsupportedVersion(_))
                ),
                "{error:?}"
            );
        }
    }
}
