//! The key commands of `e2ee-client`: enroll (certify, back up on the CA, escrow), recover and import-key (a new
//! device from the CA's backup or a released key file), and rewrap (new words for the backup on the CA).

use std::path::Path;

use anyhow::Context;
use e2ee_client::backup::{self, BackupError, CertifiedAccount};
use e2ee_client::crypto::kdf::Pbkdf2Variant;
use e2ee_client::crypto::rsa::RsaPrivateKey;
use e2ee_client::identity::{self, DeviceKey, IdentityError, RsaSize};
use e2ee_client::pins::PinStore;
use e2ee_client::protocol::folder::Account;
use e2ee_client::transport::{BackupWrite, GrpcTransport};
use zeroize::Zeroizing;

use crate::CaAddress;
use crate::device::{self, CERTIFICATE_FILE, Device, PRIVATE_KEY_FILE};
use crate::escrow_step::{self, Confirmation, Step};

/// `enroll`: makes (or reuses) the device key, gets it certified, backs it up on the CA under fresh words (printed
/// once), then runs the escrow step when the CA has a recovery key.
pub(crate) async fn enroll(
    ca: &CaAddress,
    user: &str,
    dir: &Path,
    rsa_bits: u32,
    confirmation: Confirmation,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key_path = dir.join(PRIVATE_KEY_FILE);
    let key = if key_path.exists() {
        let pem = Zeroizing::new(device::read_text(&key_path)?);
        println!("using the existing device key in {}", key_path.display());
        DeviceKey::from_pem(&pem)?
    } else {
        let size = match rsa_bits {
            2048 => RsaSize::Bits2048,
            3072 => RsaSize::Bits3072,
            4096 => RsaSize::Bits4096,
            other => anyhow::bail!("--rsa-bits must be 2048, 3072 or 4096 (got {other})"),
        };
        let key = DeviceKey::generate(size)?;
        device::write_private(&key_path, key.to_pem().as_bytes())?;
        println!("generated a new RSA-{rsa_bits} device key in {}", key_path.display());
        key
    };
    println!("key SHA-256 (SPKI): {}", key.fingerprint());
    let mut transport = ca.connect().await?;
    let enrollment = match identity::enroll(&mut transport, user, &key).await {
        Ok(enrollment) => enrollment,
        Err(IdentityError::Ca(error)) => anyhow::bail!("the CA refused to certify this key: {error}"),
        Err(error) => return Err(error.into()),
    };
    let certificate_path = dir.join(CERTIFICATE_FILE);
    std::fs::write(&certificate_path, &enrollment.certificate_pem)
        .with_context(|| format!("cannot write {}", certificate_path.display()))?;
    device::write_device_info(dir, user, &enrollment.ca)?;
    // Our own key is a contact like any other: pin it, so a substituted certificate for us is noticed too.
    PinStore::open(&dir.join("pins.json"))?.check(user, &enrollment.certificate_pem)?;
    let kind = if enrollment.renewal {
        "renewed"
    } else {
        "issued and key pinned"
    };
    println!(
        "certificate {kind} for {user:?}; verified against CA {}",
        enrollment.ca.certificate_fingerprint
    );
    if let Some(index) = enrollment.log_index {
        println!("audit log entry: {index}");
    }
    println!("written to {}", certificate_path.display());
    print!("{}", enrollment.certificate_pem);

    let account = Account {
        user_id: user.to_owned(),
        private_key: RsaPrivateKey::from_pkcs8_pem(&key.to_pem())?,
        certificate_pem: enrollment.certificate_pem,
    };
    match backup::store(&mut transport, user, &account.private_key, BackupWrite::CreateOnly).await {
        Ok(new) => {
            println!("backed the key up on the CA under a fresh mnemonic");
            print_backup_log_index(new.stored.log_index);
            device::print_recovery_words(&new.mnemonic);
        }
        // A re-enrolled key was backed up before: its words are the ones printed then.
        Err(BackupError::AlreadyStored(_)) => println!(
            "a key backup for {user:?} is already stored on the CA; left unchanged, no new words \
             (`rewrap` replaces it under new words)"
        ),
        Err(error) => {
            return Err(error)
                .context("the certificate was issued, but the key backup on the CA failed (retry with `rewrap`)");
        }
    }
    escrow_step::run(
        &mut transport,
        dir,
        &account,
        &enrollment.ca,
        confirmation,
        Step::AfterEnrollment,
    )
    .await
}

/// `recover`: a new device from the CA's wrapped key and the 12 words read from stdin.
pub(crate) async fn recover(ca: &CaAddress, user: &str, dir: &Path) -> anyhow::Result<()> {
    device::refuse_existing_key(dir)?;
    let mut transport = ca.connect().await?;
    let stored = match backup::fetch(&mut transport, user).await {
        Err(BackupError::NothingStored(_)) => anyhow::bail!("the CA holds no key backup for {user:?}"),
        other => other.context("cannot fetch the key backup from the CA")?,
    };
    let mnemonic = device::read_mnemonic(user)?;
    let recovered = backup::open(&mut transport, user, &stored, &mnemonic)
        .await
        .context("cannot recover the key")?;
    device::set_up(dir, &recovered.certified)?;
    println!(
        "recovered the key of {user:?} (backed up {}) into {}; certificate verified against CA {}",
        stored.stored_at,
        dir.display(),
        recovered.certified.ca.certificate_fingerprint
    );
    if recovered.kdf != Pbkdf2Variant::WRITE {
        println!("the backup uses an older key derivation; `rewrap` stores it under new words with the current one");
    }
    Ok(())
}

/// `import-key`: a new device from a PKCS#8 PEM private key (what the officers' tool writes after an escrow
/// release), accepted only if the CA's certificate for `user` certifies it; then `rewrap` when asked.
pub(crate) async fn import_key(
    ca: &CaAddress,
    user: &str,
    dir: &Path,
    key_file: &Path,
    rewrap: bool,
) -> anyhow::Result<()> {
    device::refuse_existing_key(dir)?;
    let pem = Zeroizing::new(device::read_text(key_file)?);
    let private_key = RsaPrivateKey::from_pkcs8_pem(&pem)
        .with_context(|| format!("{} is not a PKCS#8 PEM RSA private key", key_file.display()))?;
    let mut transport = ca.connect().await?;
    let certified = match backup::certify(&mut transport, user, private_key).await {
        Ok(certified) => certified,
        Err(BackupError::NoCertificate(_)) => anyhow::bail!("the CA knows no certificate for {user:?}"),
        Err(error) => return Err(error).with_context(|| format!("refusing to import {}", key_file.display())),
    };
    device::set_up(dir, &certified)?;
    let CertifiedAccount { account, ca } = certified;
    println!(
        "imported the key of {user:?} into {}; certificate verified against CA {}",
        dir.display(),
        ca.certificate_fingerprint
    );
    if rewrap {
        store_new_words(&mut transport, &account).await
    } else {
        println!("this key was outside the device; `rewrap` gives its backup on the CA new words");
        Ok(())
    }
}

/// `rewrap`: wraps the device key under new words and replaces the backup on the CA.
pub(crate) async fn rewrap(ca: &CaAddress, dir: &Path) -> anyhow::Result<()> {
    let device = Device::load(dir)?;
    let mut transport = ca.connect().await?;
    store_new_words(&mut transport, &device.account).await
}

/// Replaces the backup on the CA under fresh words (storing one when none is), and prints the words once.
async fn store_new_words(transport: &mut GrpcTransport, account: &Account) -> anyhow::Result<()> {
    let user = &account.user_id;
    let new = match backup::store(transport, user, &account.private_key, BackupWrite::Replace).await {
        Err(BackupError::NothingStored(_)) => {
            backup::store(transport, user, &account.private_key, BackupWrite::CreateOnly).await
        }
        other => other,
    }
    .context("cannot store the key backup on the CA")?;
    if new.stored.replaced {
        println!("replaced the key backup of {user:?} on the CA: it is now stored under the new words only");
    } else {
        println!("stored a key backup for {user:?} on the CA");
    }
    print_backup_log_index(new.stored.log_index);
    device::print_recovery_words(&new.mnemonic);
    Ok(())
}

fn print_backup_log_index(log_index: Option<u64>) {
    if let Some(index) = log_index {
        println!("audit log entry: {index}");
    }
}
