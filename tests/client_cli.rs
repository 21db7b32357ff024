//! The command-line client for people (`e2ee-client`), end to end against the real CA in dev mode: enroll with a
//! printed key backup (kept on the CA), create a folder, add files, share, list, decrypt, unshare, recover a second
//! device from the 12 words, re-wrap the backup under new words, and the refusals a person meets on the way (wrong words, a removed user, an unknown file); and a
//! legacy metadata v1.2 folder, which opens only with its owner's words.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a test failure")]

mod common;

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::DevServer;
use common::client::{Cli, get, recovery_words};
use e2ee_client::crypto::gcm::{self, Aes128Key, GcmNonce};
use e2ee_client::crypto::rsa::RsaPublicKey;
use e2ee_client::mnemonic::Mnemonic;
use e2ee_client::protocol::file;
use e2ee_client::protocol::metadata_v1::v1_2_checksum;

/// Writes `storage/<folder>` as a v1.2 client left it (nextcloud-e2ee.md §2.2): unsigned metadata whose key is
/// wrapped for `certificate_pem`'s key as base64(RSA-OAEP(base64(base64(key)))), whose checksum binds the file list
/// to the owner's `words`, and one file `name` with `contents`.
fn write_legacy_v1_2_folder(
    storage: &Path,
    folder: &str,
    certificate_pem: &str,
    words: &str,
    name: &str,
    contents: &[u8],
) {
    let directory = storage.join(folder);
    std::fs::create_dir_all(&directory).expect("mkdir");
    let file_id = "0123456789abcdef0123456789abcdef";
    let blob = std::fs::File::create(directory.join(file_id)).expect("blob");
    let encrypted_file = file::encrypt(contents, blob).expect("encrypt file");

    let metadata_key = Aes128Key::generate().expect("metadata key");
    let owner_key = RsaPublicKey::from_certificate_pem(certificate_pem).expect("certificate");
    let doubled = STANDARD.encode(STANDARD.encode(metadata_key.as_bytes()));
    let wrapped = STANDARD.encode(owner_key.encrypt(doubled.as_bytes()).expect("wrap"));
    let secrets = serde_json::json!({
        "key": STANDARD.encode(encrypted_file.key.as_bytes()),
        "filename": name,
        "mimetype": "text/plain",
    });
    let nonce = GcmNonce::random16().expect("nonce");
    let sealed = gcm::seal(&metadata_key, &nonce, STANDARD.encode(secrets.to_string()).as_bytes()).expect("seal");
    let mnemonic = Mnemonic::parse(words).expect("words");
    let document = serde_json::json!({
        "metadata": {
            "metadataKey": wrapped,
            "checksum": v1_2_checksum(&mnemonic, &[file_id], &wrapped),
            "version": 1.2,
        },
        "files": {
            file_id: {
                "encrypted": format!("{}|{}", STANDARD.encode(sealed), STANDARD.encode(nonce.as_bytes())),
                "initializationVector": STANDARD.encode(encrypted_file.nonce.as_bytes()),
                "authenticationTag": STANDARD.encode(encrypted_file.tag.as_bytes()),
            }
        },
    });
    std::fs::write(directory.join("meta.data"), document.to_string()).expect("metadata");
}

#[test]
fn a_person_shares_unshares_and_recovers_with_the_command_line() {
    let directory = tempfile::tempdir().expect("tempdir");
    let server = DevServer::start(directory.path(), "ecdsa-p256");
    let cli = Cli::for_server(&server, directory.path().join("storage"));
    let alice = directory.path().join("alice-laptop");
    let bob = directory.path().join("bob-laptop");
    let report = directory.path().join("report.txt");
    std::fs::write(&report, b"quarterly numbers\n").expect("write");
    let draft = directory.path().join("draft.txt");
    std::fs::write(&draft, vec![b'd'; 300_000]).expect("write");
    let later = directory.path().join("later.txt");
    std::fs::write(&later, b"written after bob left\n").expect("write");

    // Enrollment prints the 12 words once; the key backup goes to the CA, not to the storage.
    let enrolled = cli.ok(&alice, &["enroll", "--user", "alice"]);
    assert!(
        enrolled.contains("certificate issued and key pinned for \"alice\""),
        "{enrolled}"
    );
    let words = recovery_words(&enrolled);
    assert!(!cli.storage.join("keys").exists(), "the storage holds folder data only");
    cli.ok(&bob, &["enroll", "--user", "bob"]);

    // A folder with a subfolder and files, shared with bob, who decrypts both.
    cli.ok(&alice, &["create", "--folder", "Projects"]);
    cli.ok(&alice, &["mkdir", "--folder", "Projects", "drafts"]);
    cli.ok(&alice, &["add", "--folder", "Projects", report.to_str().expect("path")]);
    cli.ok(
        &alice,
        &[
            "add",
            "--folder",
            "Projects",
            "--to",
            "drafts",
            draft.to_str().expect("path"),
        ],
    );
    let shared = cli.ok(&alice, &["share", "--folder", "Projects", "--user", "bob"]);
    assert!(shared.contains("shared \"Projects\" with \"bob\""), "{shared}");
    let listing = cli.ok(&bob, &["list", "--folder", "Projects"]);
    assert!(
        listing.contains("report.txt") && listing.contains("drafts/"),
        "{listing}"
    );
    let bob_report = directory.path().join("bob-report.txt");
    cli.ok(&bob, &get("Projects", "report.txt", &bob_report));
    assert_eq!(std::fs::read(&bob_report).expect("read"), b"quarterly numbers\n");
    let bob_draft = directory.path().join("bob-draft.txt");
    cli.ok(&bob, &get("Projects", "drafts/draft.txt", &bob_draft));
    assert_eq!(std::fs::read(&bob_draft).expect("read"), vec![b'd'; 300_000]);

    // Unshared, bob cannot read what alice writes next; nothing is left where he asked for it.
    cli.ok(&alice, &["unshare", "--folder", "Projects", "--user", "bob"]);
    cli.ok(&alice, &["add", "--folder", "Projects", later.to_str().expect("path")]);
    let bob_later = directory.path().join("bob-later.txt");
    let refused = cli.fails(&bob, &get("Projects", "later.txt", &bob_later), "");
    assert!(refused.contains("e2ee-client: error:"), "{refused}");
    assert!(!bob_later.exists());

    // A second device of alice: wrong words are refused and set nothing up; the right ones recover the key.
    let alice_phone = directory.path().join("alice-phone");
    let mut wrong: Vec<&str> = words.split(' ').collect();
    wrong.swap(0, 1);
    let wrong = if wrong.join(" ") == words {
        "abandon ".repeat(11) + "ability"
    } else {
        wrong.join(" ")
    };
    let refused = cli.fails(&alice_phone, &["recover", "--user", "alice"], &format!("{wrong}\n"));
    assert!(refused.contains("e2ee-client: error:"), "{refused}");
    assert!(!refused.contains(&words), "the error must not echo the words");
    assert!(
        !alice_phone.join("private-key.pem").exists(),
        "no key written after a wrong mnemonic"
    );
    cli.ok_with_input(&alice_phone, &["recover", "--user", "alice"], &format!("{words}\n"));
    let phone_later = directory.path().join("phone-later.txt");
    cli.ok(&alice_phone, &get("Projects", "later.txt", &phone_later));
    assert_eq!(std::fs::read(&phone_later).expect("read"), b"written after bob left\n");

    // An unknown file is a clear error, not a panic.
    let missing = cli.fails(&alice_phone, &get("Projects", "nope.txt", &phone_later), "");
    assert!(
        missing.contains("e2ee-client: error:") && !missing.contains("panicked"),
        "{missing}"
    );

    // A legacy v1.2 folder of alice's: read-only, and only with her words (asked for on stdin).
    let certificate_pem = std::fs::read_to_string(alice.join("certificate.pem")).expect("certificate");
    write_legacy_v1_2_folder(
        &cli.storage,
        "Old",
        &certificate_pem,
        &words,
        "notes.txt",
        b"from 2022\n",
    );
    let refused = cli.fails(&alice_phone, &["list", "--folder", "Old"], "");
    assert!(refused.contains("legacy (metadata v1.2)"), "{refused}");
    let refused = cli.fails(&alice_phone, &["list", "--folder", "Old"], &format!("{wrong}\n"));
    assert!(
        refused.contains("e2ee-client: error:") && !refused.contains(&words),
        "{refused}"
    );
    let listing = cli.ok_with_input(&alice_phone, &["list", "--folder", "Old"], &format!("{words}\n"));
    assert!(listing.contains("notes.txt"), "{listing}");
    let notes = directory.path().join("notes.txt");
    cli.ok_with_input(&alice_phone, &get("Old", "notes.txt", &notes), &format!("{words}\n"));
    assert_eq!(std::fs::read(&notes).expect("read"), b"from 2022\n");
    let added = cli.fails(
        &alice_phone,
        &["add", "--folder", "Old", later.to_str().expect("path")],
        &format!("{words}\n"),
    );
    assert!(added.contains("e2ee-client: error:"), "{added}");

    // The phone re-wraps the backup on the CA under new words (a replacement proven with the key): the old
    // words no longer recover anything, the new ones do.
    let rewrapped = cli.ok(&alice_phone, &["rewrap"]);
    let new_words = recovery_words(&rewrapped);
    assert_ne!(new_words, words);
    let tablet = directory.path().join("alice-tablet");
    let refused = cli.fails(&tablet, &["recover", "--user", "alice"], &format!("{words}\n"));
    assert!(refused.contains("e2ee-client: error:"), "{refused}");
    cli.ok_with_input(&tablet, &["recover", "--user", "alice"], &format!("{new_words}\n"));
    server.stop();
}
