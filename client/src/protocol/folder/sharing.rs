//! Sharing and unsharing a folder, each rotating its metadata key (§4).

use super::{Folder, FolderError, FolderPath, Format};
use crate::protocol::metadata::{MetadataKey, Recipient};

impl Folder {
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
}

#[cfg(test)]
mod tests {
    use super::super::test_fixtures::*;
    use super::*;
    use crate::protocol::folder::SeenCounters;
    use crate::protocol::metadata::{self, MetadataError};

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
}
