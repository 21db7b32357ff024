//! `e2ee-client`: the reference client's command line: enroll, back up and recover keys, encrypted folders.
//!
//! Two directories are involved:
//!
//! `--dir DEVICE`, this device's private state (never uploaded):
//! ```text
//! DEVICE/private-key.pem    the device's RSA private key, PKCS#8 PEM, mode 0600
//! DEVICE/certificate.pem    its certificate from the CA
//! DEVICE/device.json        the user id and the CA (public key, chain, fingerprint) checked at enrollment
//! DEVICE/pins.json          contacts' pinned key fingerprints (a changed key is refused, see `forget-pin`)
//! DEVICE/counters.json      the highest metadata counter seen per folder (rollback detection)
//! ```
//!
//! `--storage DIR`, a local directory standing in for the sync server (see `e2ee_client::storage`):
//! ```text
//! DIR/keys/<user>.private.key          the private key wrapped under the user's 12-word mnemonic
//! DIR/<folder>/meta.data               metadata v2 JSON of a top-level encrypted folder
//! DIR/<folder>/meta.data.signature     its base64 CMS signature
//! DIR/<folder>/<32-hex id>             an encrypted file (ciphertext ‖ tag), named by its id
//! DIR/<folder>/<32-hex id>/            an encrypted subfolder, laid out the same way
//! ```
//!
//! A typical session: `enroll --user alice --dir A --storage S` (prints the 12 words once),
//! `create --dir A --storage S --folder Projects`, `add … --folder Projects report.pdf`,
//! `share … --folder Projects --user bob`, `list …`, `get … --folder Projects report.pdf --out r.pdf`,
//! and on a new device `recover --user alice --dir A2 --storage S` (reads the 12 words from stdin).
//! Legacy folders (metadata v1.0–1.2, from older Nextcloud clients) open read-only; a v1.2 folder's file list
//! is bound to its owner's mnemonic, so opening one asks for the 12 words on stdin.

#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use e2ee_client::crypto::rsa::RsaPrivateKey;
use e2ee_client::format::private_key_blob::PrivateKeyBlob;
use e2ee_client::identity::{self, DeviceKey, IdentityError, RsaSize};
use e2ee_client::mnemonic::Mnemonic;
use e2ee_client::pins::{ContactTrust, PinOutcome, PinStore};
use e2ee_client::protocol::folder::{
    Account, Folder, FolderError, FolderPath, FolderStorage, SeenCounters, SignedMetadata, StoredMetadata,
};
use e2ee_client::protocol::key_backup;
use e2ee_client::protocol::metadata::{MetadataError, Recipient};
use e2ee_client::storage::LocalDirectory;
use e2ee_client::transport::{CaError, CaInfo, CaTransport, ClientTls, GrpcTransport};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Reads `user`'s 12 recovery words from stdin (a prompt on stderr); they are never echoed or logged.
fn read_mnemonic(user: &str) -> anyhow::Result<Mnemonic> {
    eprint!("the 12 recovery words for {user:?}: ");
    let mut words = Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut words)
        .context("cannot read the words")?;
    Ok(Mnemonic::parse(&words)?)
}

/// Files at least this large get a byte counter on stderr.
const PROGRESS_THRESHOLD: u64 = 8 * 1024 * 1024;

/// The e2ee-ca reference client.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The CA's gRPC endpoint: `https://HOST:PORT` for mTLS (with --ca-cert), or `http://…` for a
    /// plaintext CA (`serve --dev --plaintext`).
    #[arg(long, default_value = "http://127.0.0.1:50051", global = true)]
    ca: String,
    /// mTLS: the CA certificate (PEM) that issued the CA server's TLS certificate
    /// (dev mode: DATA/dev-pki/ca.pem).
    #[arg(long, global = true)]
    ca_cert: Option<PathBuf>,
    /// mTLS: this caller's client certificate (PEM), e.g. DATA/dev-pki/sync-server.pem; with --key.
    #[arg(long, global = true, requires = "key")]
    cert: Option<PathBuf>,
    /// mTLS: the client certificate's private key (PEM); with --cert.
    #[arg(long, global = true, requires = "cert")]
    key: Option<PathBuf>,
    /// The device directory (private key, certificate, pins, counters).
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    /// The directory standing in for the sync server's storage.
    #[arg(long, global = true)]
    storage: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll this device: make (or reuse) its RSA key in --dir and get it certified for USER. With --storage,
    /// also back the key up there under a fresh 12-word mnemonic, printed once.
    Enroll {
        /// The user id (the certificate's common name).
        #[arg(long)]
        user: String,
        /// RSA key size for a new key: 2048 (default), 3072 or 4096.
        #[arg(long, default_value_t = 2048)]
        rsa_bits: u32,
    },
    /// Set up a new device (--dir) for USER from the key backup in --storage and the 12 words (read from stdin).
    Recover {
        /// The user id.
        #[arg(long)]
        user: String,
    },
    /// Show the CA's certificate fingerprint and public key.
    CaInfo,
    /// Show the certificate the CA holds for USER.
    Lookup {
        /// The user id.
        #[arg(long)]
        user: String,
    },
    /// Create an empty top-level encrypted folder.
    Create {
        /// The top-level folder's name (visible on the server).
        #[arg(long)]
        folder: String,
    },
    /// Create a subfolder: PATH is `name` or `parent/…/name` inside the folder.
    Mkdir {
        /// The top-level folder.
        #[arg(long)]
        folder: String,
        /// The new subfolder's path.
        path: String,
    },
    /// Encrypt and add files.
    Add {
        /// The top-level folder.
        #[arg(long)]
        folder: String,
        /// The subfolder to add to (`a/b`); the top level by default.
        #[arg(long, default_value = "")]
        to: String,
        /// The files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Give USER access: fetch their certificate from the CA, check it and its pin, rotate the folder key.
    Share {
        /// The top-level folder.
        #[arg(long)]
        folder: String,
        /// The user to add.
        #[arg(long)]
        user: String,
    },
    /// Remove USER's access: rotate the folder key without them.
    Unshare {
        /// The top-level folder.
        #[arg(long)]
        folder: String,
        /// The user to remove.
        #[arg(long)]
        user: String,
    },
    /// List the top-level folders, or one folder's users, subfolders and files.
    List {
        /// The top-level folder; all top-level folders when absent.
        #[arg(long)]
        folder: Option<String>,
    },
    /// Decrypt a file: PATH is `name` or `subfolder/…/name`.
    Get {
        /// The top-level folder.
        #[arg(long)]
        folder: String,
        /// The file's path inside the folder.
        path: String,
        /// Where to write the plaintext (it appears only once it authenticated).
        #[arg(long)]
        out: PathBuf,
    },
    /// Drop the pinned key of USER, so their next certificate is pinned afresh. Only after checking their new
    /// key with them out of band.
    ForgetPin {
        /// The contact.
        #[arg(long)]
        user: String,
    },
}

/// `device.json`: who this device is and which CA it enrolled with.
#[derive(Debug, Serialize, Deserialize)]
struct DeviceInfo {
    user_id: String,
    ca_public_key_pem: String,
    ca_chain_pem: String,
    ca_certificate_fingerprint: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("e2ee-client: error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Where the CA is and how to reach it.
struct CaAddress {
    endpoint: String,
    tls: Option<ClientTls>,
}

impl CaAddress {
    fn from_cli(cli: &Cli) -> anyhow::Result<CaAddress> {
        let read = |path: &Path| std::fs::read(path).with_context(|| format!("cannot read {}", path.display()));
        let tls = match (&cli.ca_cert, &cli.cert, &cli.key) {
            (None, None, None) => None,
            (None, _, _) => {
                anyhow::bail!("--cert and --key need --ca-cert, the CA that issued the server's certificate")
            }
            (Some(ca_cert), certificate, key) => {
                let tls = ClientTls::new(read(ca_cert)?);
                Some(match (certificate, key) {
                    (Some(certificate), Some(key)) => {
                        tls.with_client_certificate(read(certificate)?, Zeroizing::new(read(key)?))
                    }
                    _ => tls,
                })
            }
        };
        if tls.is_some() && !cli.ca.starts_with("https://") {
            anyhow::bail!("--ca-cert needs an https:// endpoint (got --ca {})", cli.ca);
        }
        Ok(CaAddress {
            endpoint: cli.ca.clone(),
            tls,
        })
    }

    async fn connect(&self) -> Result<GrpcTransport, CaError> {
        match &self.tls {
            Some(tls) => GrpcTransport::connect_tls(&self.endpoint, tls).await,
            None => GrpcTransport::connect(&self.endpoint).await,
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let ca = CaAddress::from_cli(&cli)?;
    let dir = || cli.dir.as_deref().context("--dir DEVICE is required for this command");
    let storage = || {
        cli.storage
            .as_deref()
            .map(LocalDirectory::new)
            .context("--storage DIR is required for this command")
    };
    match &cli.command {
        Command::Enroll { user, rsa_bits } => {
            let storage = cli.storage.as_deref().map(LocalDirectory::new);
            enroll(&ca, user, dir()?, *rsa_bits, storage.as_ref()).await
        }
        Command::Recover { user } => recover(&ca, user, dir()?, &storage()?).await,
        Command::CaInfo => {
            let info = ca.connect().await?.ca_info().await?;
            println!("CA certificate SHA-256: {}", info.certificate_fingerprint);
            print!("{}", info.public_key_pem);
            Ok(())
        }
        Command::Lookup { user } => {
            match ca.connect().await?.certificate_of(user).await? {
                Some(certificate) => print!("{certificate}"),
                None => println!("the CA knows no certificate for {user:?}"),
            }
            Ok(())
        }
        Command::ForgetPin { user } => {
            let mut pins = PinStore::open(&dir()?.join("pins.json"))?;
            if pins.forget(user)? {
                println!("forgot the pinned key of {user:?}; the next certificate seen for them will be pinned");
            } else {
                println!("no key was pinned for {user:?}");
            }
            Ok(())
        }
        Command::List { folder: None } => {
            for name in storage()?.top_level_folders()? {
                println!("{name}/");
            }
            Ok(())
        }
        folder_command => {
            let mut device = Device::load(dir()?)?;
            let storage = ProgressStorage(storage()?, std::cell::RefCell::new(None));
            let result = folder_operation(&ca, &mut device, &storage, folder_command).await;
            // Counters raised by a successful open or save are kept even if a later step failed.
            device.save_counters()?;
            result
        }
    }
}

/// An enrolled device, loaded from --dir.
struct Device {
    dir: PathBuf,
    account: Account,
    trust: ContactTrust,
    seen: SeenCounters,
}

impl Device {
    fn load(dir: &Path) -> anyhow::Result<Device> {
        let info: DeviceInfo = read_json(&dir.join("device.json"))
            .context("this device is not enrolled (run `enroll` or `recover` first)")?;
        let key_pem = Zeroizing::new(read_text(&dir.join("private-key.pem"))?);
        let certificate_pem = read_text(&dir.join("certificate.pem"))?;
        let seen = match std::fs::read(dir.join("counters.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).context("counters.json is corrupt")?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => SeenCounters::default(),
            Err(error) => return Err(error).context("cannot read counters.json"),
        };
        Ok(Device {
            dir: dir.to_owned(),
            account: Account {
                user_id: info.user_id,
                private_key: RsaPrivateKey::from_pkcs8_pem(&key_pem).context("private-key.pem")?,
                certificate_pem,
            },
            trust: ContactTrust {
                ca: CaInfo {
                    chain_pem: info.ca_chain_pem,
                    public_key_pem: info.ca_public_key_pem,
                    certificate_fingerprint: info.ca_certificate_fingerprint,
                    recovery: None,
                },
                pins: PinStore::open(&dir.join("pins.json"))?,
            },
            seen,
        })
    }

    fn save_counters(&self) -> anyhow::Result<()> {
        let path = self.dir.join("counters.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&self.seen)?)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Opens `folder`; a legacy v1.2 folder is bound to its owner's mnemonic, which is then read from stdin.
    fn open(&mut self, storage: &ProgressStorage, folder: &str) -> anyhow::Result<Folder> {
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

    fn save(&mut self, storage: &ProgressStorage, folder: &mut Folder) -> anyhow::Result<()> {
        folder
            .save(storage, &self.account, &mut self.seen)
            .with_context(|| format!("cannot save {:?}", folder.top_level()))
    }
}

async fn folder_operation(
    ca: &CaAddress,
    device: &mut Device,
    storage: &ProgressStorage,
    command: &Command,
) -> anyhow::Result<()> {
    match command {
        Command::Create { folder } => {
            if storage.0.read_metadata(folder, &FolderPath::root()).is_ok() {
                anyhow::bail!("a folder named {folder:?} already exists");
            }
            let mut created = Folder::create(folder, &device.account)?;
            device.save(storage, &mut created)?;
            println!("created encrypted folder {folder:?}");
        }
        Command::Mkdir { folder, path } => {
            let mut opened = device.open(storage, folder)?;
            let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
            let parent = opened.resolve_folder(parent)?;
            opened.add_subfolder(&parent, name)?;
            device.save(storage, &mut opened)?;
            println!("created {folder}/{path}");
        }
        Command::Add { folder, to, files } => {
            let mut opened = device.open(storage, folder)?;
            let parent = opened.resolve_folder(to)?;
            for path in files {
                let name = path
                    .file_name()
                    .and_then(|name| name.to_str())
                    .with_context(|| format!("{} has no usable file name", path.display()))?;
                let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
                let length = file.metadata()?.len();
                let reader = Progress::new(file, name, length);
                opened.add_file(storage, &parent, name, mimetype(name), reader)?;
                println!("added {name} ({length} bytes)");
            }
            device.save(storage, &mut opened)?;
        }
        Command::Share { folder, user } => {
            let mut opened = device.open(storage, folder)?;
            let mut transport = ca.connect().await?;
            let certificate_pem = transport
                .certificate_of(user)
                .await?
                .with_context(|| format!("the CA knows no certificate for {user:?}; they must enroll first"))?;
            match device
                .trust
                .check(user, &certificate_pem)
                .with_context(|| format!("refusing to share with {user:?}"))?
            {
                PinOutcome::NewlyPinned => println!("pinned the key of {user:?} (first use)"),
                PinOutcome::Matches => println!("the key of {user:?} matches the pin"),
            }
            opened.share(Recipient {
                user_id: user.clone(),
                certificate_pem,
            })?;
            device.save(storage, &mut opened)?;
            println!("shared {folder:?} with {user:?}; the folder key was rotated");
        }
        Command::Unshare { folder, user } => {
            let mut opened = device.open(storage, folder)?;
            opened.unshare(user)?;
            device.save(storage, &mut opened)?;
            println!("removed {user:?} from {folder:?}; the folder key was rotated (files are not re-encrypted)");
        }
        Command::List { folder: Some(folder) } => {
            let opened = device.open(storage, folder)?;
            println!(
                "{folder}/  (users: {})",
                opened.user_ids().collect::<Vec<_>>().join(", ")
            );
            print_tree(&opened, &FolderPath::root(), 1)?;
        }
        Command::Get { folder, path, out } => {
            let opened = device.open(storage, folder)?;
            let (parent, id) = opened.resolve_file(path)?;
            storage.1.replace(Some(path.clone()));
            let length = opened
                .decrypt_file_to(storage, &parent, &id, out)
                .with_context(|| format!("cannot decrypt {path}"))?;
            println!("decrypted {path} ({length} bytes) to {}", out.display());
        }
        other => anyhow::bail!("not a folder command: {other:?}"),
    }
    Ok(())
}

fn print_tree(folder: &Folder, path: &FolderPath, depth: usize) -> anyhow::Result<()> {
    let listing = folder.list(path)?;
    let indent = "  ".repeat(depth);
    for (name, child) in &listing.folders {
        println!("{indent}{name}/");
        print_tree(folder, child, depth + 1)?;
    }
    for (name, id, mimetype) in &listing.files {
        println!("{indent}{name}  [{mimetype}, {id}]");
    }
    Ok(())
}

async fn enroll(
    ca: &CaAddress,
    user: &str,
    dir: &Path,
    rsa_bits: u32,
    storage: Option<&LocalDirectory>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key_path = dir.join("private-key.pem");
    let key = if key_path.exists() {
        let pem = Zeroizing::new(read_text(&key_path)?);
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
        write_private(&key_path, key.to_pem().as_bytes())?;
        println!("generated a new RSA-{rsa_bits} device key in {}", key_path.display());
        key
    };
    println!("key SHA-256 (SPKI): {}", key.fingerprint());
    let mut transport = ca.connect().await?;
    let enrollment = match identity::enroll(&mut transport, user, &key).await {
        Ok(enrollment) => enrollment,
        Err(IdentityError::Ca(CaError::Refused { code, message })) => {
            anyhow::bail!("the CA refused to certify this key ({code:?}): {message}")
        }
        Err(error) => return Err(error.into()),
    };
    let certificate_path = dir.join("certificate.pem");
    std::fs::write(&certificate_path, &enrollment.certificate_pem)
        .with_context(|| format!("cannot write {}", certificate_path.display()))?;
    write_device_info(dir, user, &enrollment.ca)?;
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

    if let Some(storage) = storage {
        match storage.read_private_key(user) {
            Ok(_) => println!("a key backup for {user:?} already exists in the storage; left unchanged"),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let private_key = RsaPrivateKey::from_pkcs8_pem(&key.to_pem())?;
                let mnemonic = Mnemonic::generate()?;
                let blob = key_backup::wrap(&private_key, &mnemonic)?;
                storage
                    .write_private_key(user, &blob.to_string())
                    .context("cannot store the key backup")?;
                println!();
                println!("Your recovery words (shown once; write them down, they open your key on a new device):");
                println!();
                println!("    {}", mnemonic.phrase());
                println!();
            }
            Err(error) => return Err(error).context("cannot read the key backup"),
        }
    }
    Ok(())
}

async fn recover(ca: &CaAddress, user: &str, dir: &Path, storage: &LocalDirectory) -> anyhow::Result<()> {
    let key_path = dir.join("private-key.pem");
    if key_path.exists() {
        anyhow::bail!(
            "{} already exists; recover into a new device directory",
            key_path.display()
        );
    }
    let stored = storage
        .read_private_key(user)
        .with_context(|| format!("no key backup for {user:?} in the storage"))?;
    let blob = PrivateKeyBlob::parse(stored.trim()).context("the stored key backup is malformed")?;
    let mnemonic = read_mnemonic(user)?;
    let recovered = key_backup::unwrap(&blob, &mnemonic)?;

    let mut transport = ca.connect().await?;
    let ca_info = transport.ca_info().await?;
    let certificate_pem = transport
        .certificate_of(user)
        .await?
        .with_context(|| format!("the CA knows no certificate for {user:?}"))?;
    identity::check_certificate(
        &certificate_pem,
        &ca_info,
        user,
        Some(recovered.key.public_key().spki_der()),
    )
    .context("the CA's certificate does not certify the recovered key")?;

    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_private(&key_path, recovered.key.to_pkcs8_pem().as_bytes())?;
    std::fs::write(dir.join("certificate.pem"), &certificate_pem).context("cannot write certificate.pem")?;
    write_device_info(dir, user, &ca_info)?;
    PinStore::open(&dir.join("pins.json"))?.check(user, &certificate_pem)?;
    println!(
        "recovered the key of {user:?} into {}; certificate verified against CA {}",
        dir.display(),
        ca_info.certificate_fingerprint
    );
    Ok(())
}

fn write_device_info(dir: &Path, user: &str, ca: &CaInfo) -> anyhow::Result<()> {
    let info = DeviceInfo {
        user_id: user.to_owned(),
        ca_public_key_pem: ca.public_key_pem.clone(),
        ca_chain_pem: ca.chain_pem.clone(),
        ca_certificate_fingerprint: ca.certificate_fingerprint.clone(),
    };
    let path = dir.join("device.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&info)?).with_context(|| format!("cannot write {}", path.display()))
}

/// A guess from the extension; Nextcloud falls back to `application/octet-stream` too.
fn mimetype(name: &str) -> &'static str {
    let extension = name
        .rsplit_once('.')
        .map(|(_, extension)| extension.to_ascii_lowercase());
    match extension.as_deref() {
        Some("txt" | "md") => "text/plain",
        Some("pdf") => "application/pdf",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

/// `LocalDirectory` whose blob reads report progress (decryption of large files), labelled with the
/// cleartext name being decrypted when one is set (the storage itself only knows blob ids).
struct ProgressStorage(LocalDirectory, std::cell::RefCell<Option<String>>);

impl FolderStorage for ProgressStorage {
    type BlobWriter = File;
    type BlobReader = Progress<File>;

    fn read_metadata(&self, top_level: &str, path: &FolderPath) -> std::io::Result<StoredMetadata> {
        self.0.read_metadata(top_level, path)
    }

    fn write_metadata(&self, top_level: &str, path: &FolderPath, metadata: &SignedMetadata) -> std::io::Result<()> {
        self.0.write_metadata(top_level, path, metadata)
    }

    fn create_blob(&self, top_level: &str, path: &FolderPath, file_id: &str) -> std::io::Result<File> {
        self.0.create_blob(top_level, path, file_id)
    }

    fn open_blob(&self, top_level: &str, path: &FolderPath, file_id: &str) -> std::io::Result<Progress<File>> {
        let file = self.0.open_blob(top_level, path, file_id)?;
        let length = file.metadata()?.len();
        let label = self.1.borrow().clone().unwrap_or_else(|| file_id.to_owned());
        Ok(Progress::new(file, &label, length))
    }
}

/// A reader that prints `label: N / M MiB` on stderr as it goes, for inputs of at least `PROGRESS_THRESHOLD`.
struct Progress<R> {
    inner: R,
    label: String,
    total: u64,
    done: u64,
    reported: u64,
    finished: bool,
}

impl<R> Progress<R> {
    fn new(inner: R, label: &str, total: u64) -> Progress<R> {
        Progress {
            inner,
            label: label.to_owned(),
            total,
            done: 0,
            reported: 0,
            finished: false,
        }
    }
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.done += read as u64;
        if self.total >= PROGRESS_THRESHOLD && !self.finished {
            let mebibytes = |bytes: u64| bytes / (1024 * 1024);
            if read == 0 || self.done - self.reported >= 4 * 1024 * 1024 {
                self.reported = self.done;
                eprint!(
                    "\r{}: {} / {} MiB",
                    self.label,
                    mebibytes(self.done),
                    mebibytes(self.total)
                );
                if read == 0 {
                    self.finished = true;
                    eprintln!();
                }
            }
        }
        Ok(read)
    }
}

fn read_text(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    serde_json::from_str(&read_text(path)?).with_context(|| format!("{} is malformed", path.display()))
}

fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents)
        .with_context(|| format!("cannot write {}", path.display()))
}
