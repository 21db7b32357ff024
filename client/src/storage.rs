//! A local directory standing in for the sync server's folder storage: metadata, signatures and blobs (the key
//! backup is on the CA, `crate::backup`).
//!
//! Layout (mirrors what Nextcloud keeps in WebDAV and its app data, nextcloud-e2ee.md §2.3, §5):
//! ```text
//! <root>/<top-level name>/meta.data      the folder's metadata JSON: v2, or legacy v1.x (the top-level name is visible by design)
//! <root>/<top-level name>/meta.data.signature   the base64 CMS signature (`X-NC-E2EE-SIGNATURE`); none for v1
//! <root>/<top-level name>/<32-hex id>    a file blob: ciphertext ‖ 16-byte tag
//! <root>/<top-level name>/<32-hex id>/   a subfolder, with its own meta.data, signature, blobs and subfolders
//! ```
//! Metadata files are replaced through a temporary file and a rename. The metadata and its signature
//! are two files: a crash between the two renames leaves a pair that fails verification, which readers report.
//! Blobs are written in place before the metadata that names them, so a partial blob is never referenced.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::format::metadata_v1::AnyMetadataDocument;
use crate::protocol::folder::{FolderPath, FolderStorage, SignedMetadata, StoredMetadata};

/// Name of a folder's metadata file.
const METADATA_FILE: &str = "meta.data";
/// Name of a folder's signature file.
const SIGNATURE_FILE: &str = "meta.data.signature";

/// The storage directory.
#[derive(Debug, Clone)]
pub struct LocalDirectory {
    root: PathBuf,
}

impl LocalDirectory {
    /// Uses `root` (created on first write).
    pub fn new(root: &Path) -> LocalDirectory {
        LocalDirectory { root: root.to_owned() }
    }

    /// The top-level folders stored here (every directory with a `meta.data`).
    pub fn top_level_folders(&self) -> std::io::Result<Vec<String>> {
        let mut names = Vec::new();
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(names),
            Err(error) => return Err(error),
        };
        for entry in entries {
            let entry = entry?;
            if entry.path().join(METADATA_FILE).is_file()
                && let Some(name) = entry.file_name().to_str()
            {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn folder_directory(&self, top_level: &str, path: &FolderPath) -> std::io::Result<PathBuf> {
        let mut directory = self.root.join(component(top_level)?);
        for id in path.ids() {
            directory.push(component(id)?);
        }
        Ok(directory)
    }
}

impl FolderStorage for LocalDirectory {
    type BlobWriter = File;
    type BlobReader = File;

    fn read_metadata(&self, top_level: &str, path: &FolderPath) -> std::io::Result<StoredMetadata> {
        let directory = self.folder_directory(top_level, path)?;
        let json = std::fs::read_to_string(directory.join(METADATA_FILE))?;
        let document = AnyMetadataDocument::parse(&json)
            .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error))?;
        match document {
            AnyMetadataDocument::V2(document) => {
                let signature = std::fs::read_to_string(directory.join(SIGNATURE_FILE))?;
                Ok(StoredMetadata::V2(SignedMetadata { document, signature }))
            }
            // v1 was never signed: there is no signature file.
            AnyMetadataDocument::V1(document) => Ok(StoredMetadata::V1(document)),
        }
    }

    fn write_metadata(&self, top_level: &str, path: &FolderPath, metadata: &SignedMetadata) -> std::io::Result<()> {
        let directory = self.folder_directory(top_level, path)?;
        std::fs::create_dir_all(&directory)?;
        let json = metadata
            .document
            .to_json()
            .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error))?;
        replace_file(&directory.join(METADATA_FILE), json.as_bytes())?;
        replace_file(&directory.join(SIGNATURE_FILE), metadata.signature.as_bytes())
    }

    fn create_blob(&self, top_level: &str, path: &FolderPath, file_id: &str) -> std::io::Result<File> {
        let directory = self.folder_directory(top_level, path)?;
        std::fs::create_dir_all(&directory)?;
        File::create(directory.join(component(file_id)?))
    }

    fn open_blob(&self, top_level: &str, path: &FolderPath, file_id: &str) -> std::io::Result<File> {
        File::open(self.folder_directory(top_level, path)?.join(component(file_id)?))
    }
}

/// Refuses names that would escape the storage directory or collide with its own files.
fn component(name: &str) -> std::io::Result<&str> {
    let acceptable = !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && name != METADATA_FILE
        && name != SIGNATURE_FILE
        && name != "keys";
    if acceptable {
        Ok(name)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{name:?} cannot be a storage name"),
        ))
    }
}

/// Writes `contents` to a temporary file beside `path`, syncs it, and renames it over `path`.
fn replace_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let directory = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(directory)?;
    let mut temporary = tempfile::NamedTempFile::new_in(directory)?;
    temporary.write_all(contents)?;
    temporary.as_file().sync_all()?;
    temporary.persist(path).map_err(|error| error.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_the_directory() {
        for bad in ["", "..", ".hidden", "a/b", "meta.data", "keys", "x\0y"] {
            assert!(component(bad).is_err(), "{bad:?}");
        }
        assert!(component("Photos 2026").is_ok());
        let storage = LocalDirectory::new(Path::new("/nonexistent"));
        assert_eq!(
            storage.top_level_folders().expect("missing root is empty"),
            Vec::<String>::new()
        );
    }
}
