//! `e2ee-recovery`: the recovery officers' tool for an air-gapped machine (the recovery-key ceremony, opening an escrow).
//!
//! Each subcommand's only input is one config file (see `e2ee_client::escrow::ceremony` and `opening` for the formats):
//! * `ceremony --config FILE` makes the recovery key, writes its public key and the CA registration request into
//!   `output_dir`, and prints the shares (a header line and a line of 32 words each) on stdout, for printing;
//! * `open --config FILE` reads the officers' shares from stdin (one share's words per line, until EOF),
//!   opens the escrowed key and writes it as PKCS#8 PEM or re-wrapped under a fresh mnemonic (printed once).
//!
//! Neither ever writes the recovery secret or a share to disk; errors never show share words, keys or the blob.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use e2ee_client::escrow::ceremony::{self, CeremonyConfig};
use e2ee_client::escrow::opening::{self, OpenConfig, OpenOutput};

#[derive(Debug, Parser)]
#[command(
    name = "e2ee-recovery",
    about = "The offline recovery key: ceremony and opening escrowed keys"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate the recovery key, write its public key and registration request, print the shares.
    Ceremony {
        /// The ceremony config (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Combine shares from stdin and open a user's escrowed private key.
    Open {
        /// The open config (TOML).
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("e2ee-recovery: error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Ceremony { config } => run_ceremony(&config),
        Command::Open { config } => run_open(&config),
    }
}

fn run_ceremony(config_path: &std::path::Path) -> anyhow::Result<()> {
    let config = CeremonyConfig::load(config_path)?;
    let prepared =
        ceremony::prepare_ceremony(&config, time::OffsetDateTime::now_utc()).context("the ceremony failed")?;
    // The shares are printed before the public files are written: a key is never registered without its shares.
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(prepared.share_sheet().as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot print the shares; nothing was written, run the ceremony again")?;
    let outcome = prepared.write().context(
        "the shares printed belong to a key that was not saved: destroy them, remove any output file, and run \
         the ceremony again",
    )?;
    for path in &outcome.written {
        eprintln!("wrote {}", path.display());
    }
    eprintln!(
        "recovery key {} ({} of {}, split {}); register {} with the CA",
        outcome.registration.fingerprint,
        outcome.registration.threshold,
        outcome.registration.shares,
        outcome.registration.split_id,
        ceremony::REGISTRATION_FILE
    );
    Ok(())
}

fn run_open(config_path: &std::path::Path) -> anyhow::Result<()> {
    let config = OpenConfig::load(config_path)?;
    eprintln!("type or paste the shares' words, one share per line, then end the input (Ctrl-D)");
    let outcome = opening::open_escrow(&config, std::io::stdin().lock())?;
    eprintln!(
        "combined {} shares; wrote {}'s private key to {}",
        outcome.shares_used,
        config.user_id,
        outcome.written.display()
    );
    if let (OpenOutput::Rewrap(_), Some(mnemonic)) = (&config.output, &outcome.mnemonic) {
        eprintln!("the key is wrapped under these 12 words, shown once; hand them to the user:");
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{}", mnemonic.phrase())
            .and_then(|()| stdout.flush())
            .context("cannot print the mnemonic")?;
    }
    Ok(())
}
