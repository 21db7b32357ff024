//! The device directory of `e2ee-client` (`--dir`): loading an enrolled device, setting up a new one, and the file
//! helpers (private files are created 0600 and never overwritten).

use std::fs::File;
use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use e2ee_client::backup::CertifiedAccount;
use e2ee_client::crypto::rsa::RsaPrivateKey;
use e2ee_client::mnemonic::Mnemonic;
use e2ee_client::pins::{ContactTrust, PinStore};
use e2ee_client::protocol::folder::{Account, Folder, FolderError, SeenCounters};
use e2ee_client::protocol::metadata::MetadataError;
use e2ee_client::transport::CaInfo;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::folders::ProgressStorage;

/// The device's private key, PKCS#8 PEM, mode 0600.
pub(crate) const PRIVATE_KEY_FILE: &str = "private-key.pem";
/// The device's certificate.
pub(crate) const CERTIFICATE_FILE: &str = "certificate.pem";
/// The recovery key acknowledged on this device (`e2ee_client::recovery::RecoveryAcknowledgements`).
pub(crate) const RECOVERY_FILE: &str = "recovery.json";

/// `device.json`: who this device is and which CA it enrolled with.
#[derive(Debug, Serialize, Deserialize)]
struct DeviceInfo {
    user_id: String,
    ca_public_key_pem: String,
    ca_chain_pem: String,
    ca_certificate_fingerprint: String,
}

/// An enrolled device, loaded from --dir.
pub(crate) struct Device {
    pub(crate) dir: PathBuf,
    pub(crate) account: Account,
    pub(crate) trust: ContactTrust,
    pub(crate) seen: SeenCounters,
}

impl Device {
    pub(crate) fn load(dir: &Path) -> anyhow::Result<Device> {
        let info: DeviceInfo = read_json(&dir.join("device.json"))
            .context("this device is not enrolled (run `enroll`, `recover` or `import-key` first)")?;
        let key_pem = Zeroizing::new(read_text(&dir.join(PRIVATE_KEY_FILE))?);
        let certificate_pem = read_text(&dir.join(CERTIFICATE_FILE))?;
        let seen = match std::fs::read(dir.join("counters.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).context("counters.json is corrupt")?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => SeenCounters::default(),
            Err(error) => return Err(error).context("cannot read counters.json"),
        };
        Ok(Device {
            dir: dir.to_owned(),
            account: Account {
                user_id: info.user_id,
                private_key: RsaPrivateKey::from_pkcs8_pem(&key_pem).context(PRIVATE_KEY_FILE)?,
                certificate_pem,
            },
            trust: ContactTrust {
                ca: CaInfo {
                    chain_pem: info.ca_chain_pem,
                    public_key_pem: info.ca_public_key_pem,
                    certificate_fingerprint: info.ca_certificate_fingerprint,
                    // Not kept: the recovery key is read from the CA whenever it matters.
                    recovery: None,
                },
                pins: PinStore::open(&dir.join("pins.json"))?,
            },
            seen,
        })
    }

    pub(crate) fn save_counters(&self) -> anyhow::Result<()> {
        let path = self.dir.join("counters.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&self.seen)?)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Opens `folder`; a legacy v1.2 folder is bound to its owner's mnemonic, which is then read from stdin.
    pub(crate) fn open(&mut self, storage: &ProgressStorage, folder: &str) -> anyhow::Result<Folder> {
        let opened = match Folder::open(storage, folder, &self.account, &mut self.trust, &mut self.seen) {
            Err(FolderError::Metadata(MetadataError::MnemonicRequired)) => {
                eprintln!("{folder:?} is a legacy (metadata v1.2) folder: its file list is checked with your mnemonic");
                let mnemonic = read_mnemonic(&self.account.user_id)?;
                Folder::open_with_mnemonic(
                    storage,
                    folder,
                    &self.account,
                    Some(&mnemonic),
                    &mut self.trust,
                    &mut self.seen,
                )
            }
            other => other,
        };
        opened.with_context(|| format!("cannot open {folder:?}"))
    }

    pub(crate) fn save(&mut self, storage: &ProgressStorage, folder: &mut Folder) -> anyhow::Result<()> {
        folder
            .save(storage, &self.account, &mut self.seen)
            .with_context(|| format!("cannot save {:?}", folder.top_level()))
    }
}

/// Refuses to set up a device where one already has a key.
pub(crate) fn refuse_existing_key(dir: &Path) -> anyhow::Result<()> {
    let key_path = dir.join(PRIVATE_KEY_FILE);
    if key_path.exists() {
        anyhow::bail!(
            "{} already exists; set the key up in a new device directory",
            key_path.display()
        );
    }
    Ok(())
}

/// Sets up a new device in `dir` with a key the CA certifies: the key (0600), its certificate, the CA, and the
/// user's own pin.
pub(crate) fn set_up(dir: &Path, certified: &CertifiedAccount) -> anyhow::Result<()> {
    let account = &certified.account;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_private(
        &dir.join(PRIVATE_KEY_FILE),
        account.private_key.to_pkcs8_pem().as_bytes(),
    )?;
    let certificate_path = dir.join(CERTIFICATE_FILE);
    std::fs::write(&certificate_path, &account.certificate_pem)
        .with_context(|| format!("cannot write {}", certificate_path.display()))?;
    write_device_info(dir, &account.user_id, &certified.ca)?;
    PinStore::open(&dir.join("pins.json"))?.check(&account.user_id, &account.certificate_pem)?;
    Ok(())
}

pub(crate) fn write_device_info(dir: &Path, user: &str, ca: &CaInfo) -> anyhow::Result<()> {
    let info = DeviceInfo {
        user_id: user.to_owned(),
        ca_public_key_pem: ca.public_key_pem.clone(),
        ca_chain_pem: ca.chain_pem.clone(),
        ca_certificate_fingerprint: ca.certificate_fingerprint.clone(),
    };
    let path = dir.join("device.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&info)?).with_context(|| format!("cannot write {}", path.display()))
}

/// Reads `user`'s 12 recovery words from stdin (a prompt on stderr); they are never echoed or logged.
pub(crate) fn read_mnemonic(user: &str) -> anyhow::Result<Mnemonic> {
    eprint!("the 12 recovery words for {user:?}: ");
    let mut words = Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut words)
        .context("cannot read the words")?;
    Ok(Mnemonic::parse(&words)?)
}

/// Prints freshly made recovery words, the only time they are shown.
pub(crate) fn print_recovery_words(mnemonic: &Mnemonic) {
    println!();
    println!("Your recovery words (shown once; write them down, they open your key on a new device):");
    println!();
    println!("    {}", mnemonic.phrase());
    println!();
}

pub(crate) fn read_text(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    serde_json::from_str(&read_text(path)?).with_context(|| format!("{} is malformed", path.display()))
}

/// Creates `path` with mode 0600 (never replacing a file) and writes `contents`.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut file: File = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents)
        .with_context(|| format!("cannot write {}", path.display()))
}
