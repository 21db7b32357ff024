//! A folder's entries: listing and resolving subfolders and files, adding them, and decrypting files.

use std::io::{BufReader, Read};
use std::path::Path;

use zeroize::Zeroizing;

use super::{Folder, FolderError, FolderPath, FolderStorage, storage_error};
use crate::crypto::{CryptoError, fill_random};
use crate::format::metadata::{FileEntry, FolderMetadata};
use crate::protocol::file;

/// What a folder contains, by cleartext name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Subfolders: (name, path).
    pub folders: Vec<(String, FolderPath)>,
    /// Files: (name, file id, mimetype).
    pub files: Vec<(String, String, String)>,
}

impl Folder {
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

/// A random 32-hex-character id, as Nextcloud names encrypted files and folders (§2.3).
fn random_id() -> Result<String, CryptoError> {
    let mut bytes = [0u8; 16];
    fill_random(&mut bytes)?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::super::test_fixtures::*;
    use super::*;
    use crate::protocol::folder::SeenCounters;
    use crate::protocol::metadata::MetadataError;

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
}
