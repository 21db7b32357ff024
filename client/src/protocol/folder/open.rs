//! Opening a v2 folder: user certificates through `CertificateTrust`, a signer among the folder's users, the
//! key checksum, and counters and `keyChecksums` that never go backwards (`SeenCounters`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{Account, Folder, FolderError, FolderPath, FolderStorage, Format, SignedMetadata, StoredMetadata, read};
use crate::format::metadata::{FolderMetadata, MetadataUser};
use crate::mnemonic::Mnemonic;
use crate::pins::{ContactTrust, TrustError};
use crate::protocol::metadata::{self, Recipient};
use crate::protocol::signature;

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

    pub(super) fn record(&mut self, top_level: &str, path: &FolderPath, folder_metadata: &FolderMetadata) {
        let seen = self.counters.entry(path.display(top_level)).or_default();
        *seen = (*seen).max(folder_metadata.counter);
        if path.is_root() {
            self.key_checksums
                .insert(top_level.to_owned(), folder_metadata.key_checksums.clone());
        }
    }

    /// Whether this device has opened or saved `top_level` with v2 metadata.
    pub(super) fn knows_v2(&self, top_level: &str) -> bool {
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

impl Folder {
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

#[cfg(test)]
mod tests {
    use super::super::test_fixtures::*;
    use super::*;
    use crate::format::metadata::MetadataDocument;
    use crate::protocol::metadata::{MetadataError, MetadataKey};
    use crate::protocol::signature::SignatureError;

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
}
