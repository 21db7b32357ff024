//! End to end through the reference client library and the real CA in dev mode: enrollment, a mnemonic key
//! backup on the CA, an encrypted folder shared and unshared between two users, and recovery on a second device.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a test failure")]

mod common;

use std::time::{Duration, Instant};

use e2ee_client::backup;
use e2ee_client::crypto::rsa::RsaPrivateKey;
use e2ee_client::identity::{self, DeviceKey, RsaSize};
use e2ee_client::mnemonic::Mnemonic;
use e2ee_client::pins::{ContactTrust, PinOutcome, PinStore, TrustError};
use e2ee_client::protocol::folder::{Account, Folder, FolderError, FolderPath, SeenCounters};
use e2ee_client::protocol::key_backup;
use e2ee_client::protocol::metadata::MetadataError;
use e2ee_client::storage::LocalDirectory;
use e2ee_client::transport::{BackupWrite, CaTransport, GrpcTransport};

/// The sync server's transport to `server`, over mTLS as the dev principal `sync-server`.
async fn connect(server: &common::DevServer) -> GrpcTransport {
    let endpoint = &server.endpoint;
    let tls = server.client_tls("sync-server").expect("the dev server serves mTLS");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match GrpcTransport::connect_tls(endpoint, &tls).await {
            Ok(transport) => return transport,
            Err(error) if Instant::now() > deadline => panic!("cannot connect to {endpoint}: {error}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// One device of one user: its account (key and CA-checked certificate), pins and counters.
struct Device {
    account: Account,
    trust: ContactTrust,
    seen: SeenCounters,
}

impl Device {
    fn open(&mut self, storage: &LocalDirectory, top_level: &str) -> Result<Folder, FolderError> {
        Folder::open(storage, top_level, &self.account, &mut self.trust, &mut self.seen)
    }
}

/// Enrolls a fresh device key for `user_id` and returns the device.
async fn enroll(transport: &mut GrpcTransport, user_id: &str, device_dir: &std::path::Path) -> Device {
    let device_key = DeviceKey::generate(RsaSize::Bits2048).expect("keygen");
    let enrollment = identity::enroll(transport, user_id, &device_key).await.expect("enroll");
    assert!(!enrollment.renewal);
    std::fs::create_dir_all(device_dir).expect("device dir");
    Device {
        account: Account {
            user_id: user_id.to_owned(),
            private_key: RsaPrivateKey::from_pkcs8_pem(&device_key.to_pem()).expect("same key"),
            certificate_pem: enrollment.certificate_pem,
        },
        trust: ContactTrust {
            ca: enrollment.ca,
            pins: PinStore::open(&device_dir.join("pins.json")).expect("pins"),
        },
        seen: SeenCounters::default(),
    }
}

fn read(folder: &Folder, storage: &LocalDirectory, names: &str) -> Vec<u8> {
    let (path, id) = folder.resolve_file(names).expect(names);
    folder.read_file(storage, &path, &id).expect(names).to_vec()
}

#[tokio::test]
async fn share_unshare_and_recover_against_the_real_ca() {
    let directory = tempfile::tempdir().expect("tempdir");
    let server = common::DevServer::start(directory.path(), "ecdsa-p256");
    let storage = LocalDirectory::new(&directory.path().join("sync-server"));
    let mut transport = connect(&server).await;

    // 1. alice and bob enroll; alice backs her key up on the CA under a fresh 12-word mnemonic, with
    // a proof of possession; a second upload is refused (write-once).
    let mut alice = enroll(&mut transport, "alice", &directory.path().join("alice-laptop")).await;
    let mut bob = enroll(&mut transport, "bob", &directory.path().join("bob-laptop")).await;
    let backup = backup::store(
        &mut transport,
        "alice",
        &alice.account.private_key,
        BackupWrite::CreateOnly,
    )
    .await
    .expect("backup stored on the CA");
    let words = backup.mnemonic.phrase().to_owned();
    assert_eq!(words.split(' ').count(), 12);
    assert!(matches!(
        backup::store(
            &mut transport,
            "alice",
            &alice.account.private_key,
            BackupWrite::CreateOnly
        )
        .await,
        Err(backup::BackupError::AlreadyStored(_))
    ));

    // 2. alice creates a folder with a subfolder and files.
    let mut folder = Folder::create("Projects", &alice.account).expect("create");
    let reports = folder.add_subfolder(&FolderPath::root(), "Reports").expect("mkdir");
    let large: Vec<u8> = (0..300_000u32).map(|index| (index % 251) as u8).collect();
    folder
        .add_file(
            &storage,
            &FolderPath::root(),
            "readme.txt",
            "text/plain",
            &b"hello bob"[..],
        )
        .expect("add");
    folder
        .add_file(
            &storage,
            &reports,
            "q3.bin",
            "application/octet-stream",
            large.as_slice(),
        )
        .expect("add");
    folder.save(&storage, &alice.account, &mut alice.seen).expect("save");

    // 3. alice fetches bob's certificate from the CA, checks it against the CA and pins it, then shares.
    let bob_certificate = transport
        .certificate_of("bob")
        .await
        .expect("lookup")
        .expect("bob known");
    assert_eq!(
        alice.trust.check("bob", &bob_certificate).expect("trusted"),
        PinOutcome::NewlyPinned
    );
    // A certificate for "bob" that the CA did not issue is refused, and does not replace the pin.
    let forged_key =
        rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).expect("keygen");
    let mut forged_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    forged_params.distinguished_name.push(rcgen::DnType::CommonName, "bob");
    let forged = forged_params.self_signed(&forged_key).expect("self-signed").pem();
    assert!(matches!(
        alice.trust.check("bob", &forged),
        Err(TrustError::NotFromCa(_))
    ));
    assert_eq!(
        alice.trust.check("bob", &bob_certificate).expect("trusted"),
        PinOutcome::Matches
    );
    folder
        .share(e2ee_client::protocol::metadata::Recipient {
            user_id: "bob".into(),
            certificate_pem: bob_certificate,
        })
        .expect("share");
    folder.save(&storage, &alice.account, &mut alice.seen).expect("save");

    // 4. bob opens and decrypts everything.
    let bobs_view = bob.open(&storage, "Projects").expect("bob opens");
    assert_eq!(bobs_view.user_ids().collect::<Vec<_>>(), ["alice", "bob"]);
    assert_eq!(read(&bobs_view, &storage, "readme.txt"), b"hello bob");
    assert_eq!(read(&bobs_view, &storage, "Reports/q3.bin"), large);
    let output = directory.path().join("q3.out");
    let (path, id) = bobs_view.resolve_file("Reports/q3.bin").expect("resolve");
    assert_eq!(
        bobs_view
            .decrypt_file_to(&storage, &path, &id, &output)
            .expect("to file"),
        large.len() as u64
    );
    assert_eq!(std::fs::read(&output).expect("read"), large);

    // 5. alice removes bob and adds a file; bob cannot read the new metadata.
    folder.unshare("bob").expect("unshare");
    folder
        .add_file(&storage, &reports, "q4.txt", "text/plain", &b"not for bob"[..])
        .expect("add");
    folder.save(&storage, &alice.account, &mut alice.seen).expect("save");
    match bob.open(&storage, "Projects") {
        Err(FolderError::Metadata(MetadataError::NotARecipient(user))) => assert_eq!(user, "bob"),
        other => panic!("bob must be locked out, got {other:?}"),
    }

    // 6. A second device of alice recovers the key from the 12 words and the CA's certificate, and reads all.
    let second_dir = directory.path().join("alice-phone");
    std::fs::create_dir_all(&second_dir).expect("dir");
    let stored = backup::fetch(&mut transport, "alice").await.expect("backup on the CA");
    let recovered = backup::open(
        &mut transport,
        "alice",
        &stored,
        &Mnemonic::parse(&words.to_uppercase()).expect("typed words"),
    )
    .await
    .expect("recovered and certified by the CA");
    let ca = recovered.certified.ca;
    let mut phone = Device {
        account: recovered.certified.account,
        trust: ContactTrust {
            ca,
            pins: PinStore::open(&second_dir.join("pins.json")).expect("pins"),
        },
        seen: SeenCounters::default(),
    };
    let phones_view = phone.open(&storage, "Projects").expect("second device opens");
    assert_eq!(phones_view.user_ids().collect::<Vec<_>>(), ["alice"]);
    assert_eq!(read(&phones_view, &storage, "readme.txt"), b"hello bob");
    assert_eq!(read(&phones_view, &storage, "Reports/q3.bin"), large);
    assert_eq!(read(&phones_view, &storage, "Reports/q4.txt"), b"not for bob");
    let root = phones_view.metadata(&FolderPath::root()).expect("root");
    assert_eq!(root.key_checksums.len(), 3, "create, share and unshare each used a key");

    // A wrong mnemonic does not open the backup.
    let wrong = Mnemonic::generate().expect("mnemonic");
    assert!(key_backup::unwrap(&stored.wrapped_key, &wrong).is_err());
}
