//! `e2ee-client`: the reference client's command line: enroll, back up, recover and escrow keys, encrypted folders.
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
//! DEVICE/recovery.json      the CA recovery key the user acknowledged on this device (a different key asks again)
//! ```
//!
//! `--storage DIR`, a local directory standing in for the sync server's folder data (see `e2ee_client::storage`):
//! ```text
//! DIR/<folder>/meta.data               metadata v2 JSON of a top-level encrypted folder
//! DIR/<folder>/meta.data.signature     its base64 CMS signature
//! DIR/<folder>/<32-hex id>             an encrypted file (ciphertext ‖ tag), named by its id
//! DIR/<folder>/<32-hex id>/            an encrypted subfolder, laid out the same way
//! ```
//!
//! The private key's backup lives on the CA (its KeyBackup service): `enroll` wraps the key under a fresh
//! 12-word mnemonic and stores it there (printing the words once), `recover` fetches it on a new device and opens it
//! with the words, `rewrap` replaces it under new words. When the CA has an offline recovery key, `enroll` and
//! `escrow` show its warning and, once the user confirms, deposit the key sealed to it; `import-key` sets a device up
//! from a key file the officers released from escrow.
//!
//! A typical session: `enroll --user alice --dir A` (prints the 12 words once), `create --dir A --storage S
//! --folder Projects`, `add … --folder Projects report.pdf`, `share … --folder Projects --user bob`, `list …`,
//! `get … --folder Projects report.pdf --out r.pdf`, and on a new device `recover --user alice --dir A2` (reads the
//! 12 words from stdin). Legacy folders (metadata v1.0–1.2, from older Nextcloud clients) open read-only; a v1.2
//! folder's file list is bound to its owner's mnemonic, so opening one asks for the 12 words on stdin.

#![forbid(unsafe_code)]

#[path = "e2ee_client/device.rs"]
mod device;
#[path = "e2ee_client/escrow_step.rs"]
mod escrow_step;
#[path = "e2ee_client/folders.rs"]
mod folders;
#[path = "e2ee_client/keys.rs"]
mod keys;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use e2ee_client::pins::PinStore;
use e2ee_client::storage::LocalDirectory;
use e2ee_client::transport::{CaError, CaTransport, ClientTls, GrpcTransport};
use zeroize::Zeroizing;

use crate::device::Device;
use crate::escrow_step::{Confirmation, Declined, Step};
use crate::folders::ProgressStorage;

/// The exit-code table for `--help`.
const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  ok
  1  an error (one line on stderr)
  2  usage error (bad flags)
  3  the recovery-key notice was declined: nothing was deposited";

/// The e2ee-ca reference client.
#[derive(Debug, Parser)]
#[command(version, about, after_help = EXIT_CODES_HELP)]
pub(crate) struct Cli {
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
    /// The device directory (private key, certificate, pins, counters, the acknowledged recovery key).
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    /// The directory standing in for the sync server's folder storage.
    #[arg(long, global = true)]
    storage: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Enroll this device: make (or reuse) its RSA key in --dir, get it certified for USER, and back it up on the
    /// CA under a fresh 12-word mnemonic, printed once. When the CA has an offline recovery key, then show its
    /// warning and, once confirmed, deposit the key sealed to it (as `escrow` does).
    Enroll {
        /// The user id (the certificate's common name).
        #[arg(long)]
        user: String,
        /// RSA key size for a new key: 2048 (default), 3072 or 4096.
        #[arg(long, default_value_t = 2048)]
        rsa_bits: u32,
        /// Confirm the recovery-key warning without asking (for scripts); the warning is still printed.
        #[arg(long)]
        yes: bool,
    },
    /// Set up a new device (--dir) for USER from the key backup on the CA and the 12 words (read from stdin).
    Recover {
        /// The user id.
        #[arg(long)]
        user: String,
    },
    /// Wrap this device's key under new 12 words (printed once) and replace its backup on the CA.
    Rewrap,
    /// Set up a new device (--dir) for USER from a PKCS#8 PEM private key (e.g. one the officers released from
    /// escrow), once the CA's certificate for USER is checked to certify it.
    ImportKey {
        /// The user id.
        #[arg(long)]
        user: String,
        /// The private key file (`--key` is the mTLS client key).
        #[arg(long)]
        private_key: PathBuf,
        /// Also `rewrap`: back the key up on the CA under new words.
        #[arg(long)]
        rewrap: bool,
    },
    /// Show the CA's offline recovery key, if any, and (once confirmed) deposit this device's key sealed to it.
    Escrow {
        /// Confirm the recovery-key warning without asking (for scripts); the warning is still printed.
        #[arg(long)]
        yes: bool,
    },
    /// Show the CA's certificate fingerprint, public key and recovery key.
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) if error.downcast_ref::<Declined>().is_some() => {
            eprintln!("e2ee-client: {error:#}");
            std::process::ExitCode::from(escrow_step::DECLINED_EXIT_CODE)
        }
        Err(error) => {
            eprintln!("e2ee-client: error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Where the CA is and how to reach it.
pub(crate) struct CaAddress {
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

    pub(crate) async fn connect(&self) -> Result<GrpcTransport, CaError> {
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
    let confirmation = |yes: bool| if yes { Confirmation::Given } else { Confirmation::Ask };
    match &cli.command {
        Command::Enroll { user, rsa_bits, yes } => keys::enroll(&ca, user, dir()?, *rsa_bits, confirmation(*yes)).await,
        Command::Recover { user } => keys::recover(&ca, user, dir()?).await,
        Command::Rewrap => keys::rewrap(&ca, dir()?).await,
        Command::ImportKey {
            user,
            private_key,
            rewrap,
        } => keys::import_key(&ca, user, dir()?, private_key, *rewrap).await,
        Command::Escrow { yes } => {
            let device = Device::load(dir()?)?;
            let mut transport = ca.connect().await?;
            escrow_step::run(
                &mut transport,
                &device.dir,
                &device.account,
                &device.trust.ca,
                confirmation(*yes),
                Step::Command,
            )
            .await
        }
        Command::CaInfo => {
            let info = ca.connect().await?.ca_info().await?;
            println!("CA certificate SHA-256: {}", info.certificate_fingerprint);
            print!("{}", info.public_key_pem);
            match &info.recovery {
                Some(recovery) => println!(
                    "recovery key SHA-256: {} (enabled since {}; its certificate verifies under the CA key)",
                    recovery.fingerprint, recovery.enabled_since
                ),
                None => println!("recovery key: none (escrow disabled)"),
            }
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
            let result = folders::folder_operation(&ca, &mut device, &storage, folder_command).await;
            // Counters raised by a successful open or save are kept even if a later step failed.
            device.save_counters()?;
            result
        }
    }
}
