//! Opening legacy v1.0–1.2 folders read-only, and refusing v1 metadata where this device saw v2.

use std::collections::{BTreeMap, BTreeSet};

use super::{Account, Folder, FolderError, FolderPath, FolderStorage, Format, SeenCounters, StoredMetadata, read};
use crate::format::metadata::FolderMetadata;
use crate::format::metadata_v1::MetadataV1Document;
use crate::mnemonic::Mnemonic;
use crate::protocol::metadata_v1;

/// The MIME type that marks a v1 `files{}` entry as a subfolder, whose own metadata sits under its id.
const DIRECTORY_MIMETYPE: &str = "httpd/unix-directory";

impl Folder {
    /// The v1 half of `open_with_mnemonic`: every document opened with `account`'s key (and, for v1.2, checked
    /// against `mnemonic`), subfolders found by their MIME type.
    pub(super) fn open_v1(
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
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::super::test_fixtures::*;
    use super::*;
    use crate::format::metadata::FileEntry;
    use crate::format::metadata_v1::MetadataV1Version;
    use crate::protocol::file;
    use crate::protocol::metadata::MetadataError;

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
            serde_json::from_str(include_str!("../../../testdata/nextcloud/alice.json")).expect("json");
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
            serde_json::from_str(include_str!("../../../testdata/metadata-v1/expected.json")).expect("json");
        for (version, json, legacy_version) in [
            (
                "v1.0",
                include_str!("../../../testdata/metadata-v1/v1.0.json"),
                MetadataV1Version::V1_0,
            ),
            (
                "v1.1",
                include_str!("../../../testdata/metadata-v1/v1.1.json"),
                MetadataV1Version::V1_1,
            ),
            (
                "v1.2",
                include_str!("../../../testdata/metadata-v1/v1.2.json"),
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
                    include_str!("../../../testdata/metadata-v1/v1.1.json"),
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
            serde_json::from_str(include_str!("../../../testdata/nextcloud/android-checksum-v1.2.json")).expect("json");
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

        write_v1(
            &fixture,
            &drafts,
            include_str!("../../../testdata/metadata-v1/v1.1.json"),
        );
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
            include_str!("../../../testdata/metadata-v1/v1.1.json"),
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
