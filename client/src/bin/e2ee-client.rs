//! `e2ee-client`: the reference client's command line (enrollment for now).

#![forbid(unsafe_code)]

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use e2ee_client::identity::{self, DeviceKey, IdentityError, RsaSize};
use e2ee_client::transport::{CaError, CaTransport, GrpcTransport};

/// The e2ee-ca reference client.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The CA's gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:50051", global = true)]
    ca: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll this device: make (or reuse) its RSA key in DIR and get it certified for USER.
    Enroll {
        /// The user id (the certificate's common name).
        #[arg(long)]
        user: String,
        /// The device directory: private-key.pem (mode 0600) and certificate.pem.
        #[arg(long)]
        dir: PathBuf,
        /// RSA key size for a new key: 2048 (default), 3072 or 4096.
        #[arg(long, default_value_t = 2048)]
        rsa_bits: u32,
    },
    /// Show the CA's certificate fingerprint and public key.
    CaInfo,
    /// Show the certificate the CA holds for USER.
    Lookup {
        /// The user id.
        #[arg(long)]
        user: String,
    },
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut transport = GrpcTransport::connect(&cli.ca).await?;
    match cli.command {
        Command::Enroll { user, dir, rsa_bits } => enroll(&mut transport, &user, &dir, rsa_bits).await,
        Command::CaInfo => {
            let info = transport.ca_info().await?;
            println!("CA certificate SHA-256: {}", info.certificate_fingerprint);
            print!("{}", info.public_key_pem);
            Ok(())
        }
        Command::Lookup { user } => {
            match transport.certificate_of(&user).await? {
                Some(certificate) => print!("{certificate}"),
                None => println!("the CA knows no certificate for {user:?}"),
            }
            Ok(())
        }
    }
}

async fn enroll(transport: &mut GrpcTransport, user: &str, dir: &Path, rsa_bits: u32) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key_path = dir.join("private-key.pem");
    let key = if key_path.exists() {
        let pem = zeroize::Zeroizing::new(
            std::fs::read_to_string(&key_path).with_context(|| format!("cannot read {}", key_path.display()))?,
        );
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
    match identity::enroll(transport, user, &key).await {
        Ok(enrollment) => {
            let certificate_path = dir.join("certificate.pem");
            std::fs::write(&certificate_path, &enrollment.certificate_pem)
                .with_context(|| format!("cannot write {}", certificate_path.display()))?;
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
            Ok(())
        }
        Err(IdentityError::Ca(CaError::Refused { code, message })) => {
            anyhow::bail!("the CA refused to certify this key ({code:?}): {message}")
        }
        Err(error) => Err(error.into()),
    }
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
