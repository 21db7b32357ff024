//! `ca-service`: parse the command line and the config, call the one builder (`Service::build`),
//! serve until Ctrl-C or SIGTERM; and the offline commands (ceremony, migrate, audit).

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ca_service::config::store::StoreLocation;
use ca_service::config::{CeremonyConfig, LogFormat, ServeConfig};
use ca_service::hsm::{Hsm, HsmConfig, KeyAlgorithm};
use ca_service::service::Service;
use ca_service::store::{self, Store, StoreTask};
use ca_service::transparency::export;
use ca_service::{ceremony, dev};
use clap::{Parser, Subcommand};
use tlog::key::VerifierKey;

/// The e2ee-ca certificate authority.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log format: human or json (overrides the config file).
    #[arg(long, global = true)]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the gRPC API: `--config FILE` in production, `--dev` for a self-provisioned local CA.
    Serve {
        /// The serve config (TOML; see deploy/ca-service.example.toml).
        #[arg(long, conflicts_with = "dev", required_unless_present = "dev")]
        config: Option<PathBuf>,
        /// Dev mode: SoftHSM token, CA, embedded store and a dev TLS PKI provisioned under --data-dir;
        /// mTLS; loopback only.
        #[arg(long)]
        dev: bool,
        /// Dev mode: serve plaintext gRPC instead of mTLS (loopback only; nobody is authenticated).
        #[arg(long, requires = "dev")]
        plaintext: bool,
        /// Dev mode: where the token, CA and store live.
        #[arg(long, default_value = "./data", requires = "dev")]
        data_dir: PathBuf,
        /// Address to listen on (dev mode: loopback only; default 127.0.0.1:50051). Port 0 picks a free port.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Dev mode, first run only: the CA key algorithm.
        #[arg(long, default_value = "ecdsa-p256", value_parser = parse_algorithm, requires = "dev")]
        ca_key_algorithm: KeyAlgorithm,
    },
    /// Apply pending store migrations (serve also applies them at startup) and exit.
    Migrate {
        /// The serve config whose [store] to migrate.
        #[arg(long)]
        config: PathBuf,
    },
    /// Generate the CA key on the token and write the CA certificate or CSR (or import a signed one).
    Ceremony {
        /// The ceremony config (TOML; see deploy/ceremony-*.example.toml): the ceremony's only input.
        #[arg(long)]
        config: PathBuf,
    },
    /// Offline audit of the transparency log: export it from the store, verify an export.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Write the latest signed checkpoint, the entries it covers, their stored leaf hashes and the
    /// stored certificates from the store (no HSM needed).
    Export {
        /// The serve config whose [store] holds the log.
        #[arg(long)]
        config: PathBuf,
        /// The output directory (entries.bin, leaves.bin, certificates.bin, checkpoint.txt, vkey.txt).
        #[arg(long)]
        out: PathBuf,
        /// The log's verifier key (text or a file holding it), copied to vkey.txt for the auditor.
        #[arg(long)]
        vkey: Option<String>,
    },
    /// Verify an export with no database and no HSM; exits non-zero on any failure.
    Verify {
        /// The export directory.
        #[arg(long)]
        dir: PathBuf,
        /// The log's verifier key as the auditor trusts it (text or a file holding it).
        #[arg(long)]
        trusted_key: String,
        /// An earlier checkpoint the auditor pinned (signed note file): must be consistent.
        #[arg(long)]
        pinned_checkpoint: Option<PathBuf>,
        /// How far (ms) an entry's time may be behind an earlier entry's (concurrent commits).
        #[arg(long, default_value_t = 1000)]
        time_tolerance_ms: u64,
    },
}

fn parse_algorithm(name: &str) -> Result<KeyAlgorithm, String> {
    KeyAlgorithm::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = KeyAlgorithm::ALL.iter().map(|algorithm| algorithm.name()).collect();
        format!("unknown algorithm {name:?}; one of {}", names.join(", "))
    })
}

fn main() -> std::process::ExitCode {
    // Everything the service creates (store, WAL, guard, config, tokens, exports) is private to its
    // user: files 0600, directories 0700, whatever umask it was started with.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ca-service: error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            config: Some(path),
            listen,
            ..
        } => {
            let mut config = ServeConfig::load(&path)?;
            if let Some(listen) = listen {
                config
                    .set_listen(listen)
                    .with_context(|| format!("--listen {listen} with config file {}", path.display()))?;
            }
            init_logging(cli.log_format.as_deref(), config.log_format)?;
            set_softhsm2_conf(config.hsm.softhsm2_conf.as_deref())?;
            let plaintext = config.tls.is_none();
            runtime()?.block_on(async {
                let hsm = connect(config.hsm.hsm_config()?).await?;
                let service = Service::build(&config, hsm).await?;
                let hints = move |address| {
                    if plaintext {
                        dev::plaintext_try_lines(address)
                    } else {
                        Vec::new()
                    }
                };
                serve(service, config.listen, Vec::new(), hints).await
            })
        }
        Command::Serve {
            config: None,
            data_dir,
            listen,
            ca_key_algorithm,
            plaintext,
            ..
        } => {
            if let Some(listen) = listen
                && !ca_service::config::is_loopback(listen.ip())
            {
                anyhow::bail!("dev mode listens on loopback only (got {listen}); use serve --config for anything else");
            }
            init_logging(cli.log_format.as_deref(), LogFormat::Human)?;
            let (paths, token_created) = dev::prepare_token(&data_dir)?;
            set_softhsm2_conf(Some(&paths.token.conf_path()))?;
            runtime()?.block_on(async {
                let hsm = connect(dev::hsm_config(&paths)?).await?;
                let (pki, _) = dev::ensure_pki(&paths)?;
                let ceremony = dev::ensure_ca(&paths, &hsm, ca_key_algorithm, &pki).await?;
                let mut config = ServeConfig::load(&paths.config)?;
                let transport = if plaintext {
                    // The loopback check above is what makes plaintext acceptable here.
                    config.tls = None;
                    config.principals.clear();
                    config.allow_plaintext = true;
                    dev::DevTransport::Plaintext
                } else {
                    dev::DevTransport::MutualTls(pki)
                };
                if let Some(listen) = listen {
                    config.set_listen(listen)?;
                }
                let banner = dev::banner(
                    &paths,
                    token_created,
                    ceremony.as_ref(),
                    &config,
                    ca_key_algorithm,
                    &transport,
                );
                let service = Service::build(&config, hsm).await?;
                serve(service, config.listen, banner, move |address| {
                    dev::try_lines(&transport, address)
                })
                .await
            })
        }
        Command::Migrate { config } => {
            let config = ServeConfig::load(&config)?;
            init_logging(cli.log_format.as_deref(), config.log_format)?;
            let location = config.store_location()?;
            runtime()?.block_on(store::with_store(&location, None, Migrated))?;
            let version = store::schema_version(&location);
            match &location {
                StoreLocation::Sqlite(_) => println!("embedded store is at schema version {version}"),
                StoreLocation::Postgres(postgres) => println!(
                    "PostgreSQL store at {} is at schema version {version}",
                    postgres.describe()
                ),
            }
            Ok(())
        }
        Command::Ceremony { config } => {
            init_logging(cli.log_format.as_deref(), LogFormat::Human)?;
            let config = CeremonyConfig::load(&config)?;
            set_softhsm2_conf(config.hsm.softhsm2_conf.as_deref())?;
            runtime()?.block_on(async {
                let hsm = connect(config.hsm.hsm_config()?).await?;
                let report = ceremony::run(&hsm, &config).await?;
                println!("ceremony complete");
                println!("  key label: {}", report.key_label);
                println!("  key SHA-256 (SPKI): {}", report.key_fingerprint);
                println!("  written: {}", report.output);
                if let Some((label, fingerprint)) = &report.audit_key {
                    println!("  audit key label: {label}");
                    println!("  audit key SHA-256 (SPKI): {fingerprint}");
                }
                Ok(())
            })
        }
        Command::Audit {
            command: AuditCommand::Export { config, out, vkey },
        } => {
            let config = ServeConfig::load(&config)?;
            init_logging(cli.log_format.as_deref(), config.log_format)?;
            let vkey = vkey.as_deref().map(parse_vkey).transpose()?;
            let export = Export {
                out: &out,
                vkey: vkey.as_ref(),
            };
            let (summary, certificates) =
                runtime()?.block_on(store::with_store(&config.store_location()?, None, export))?;
            println!(
                "exported {} entries and the checkpoint of size {} to {}",
                summary.entries,
                summary.entries,
                out.display()
            );
            match summary.missing_leaf {
                None => println!("  {}: the store's {} leaf hashes", export::LEAVES_FILE, summary.entries),
                Some(index) => println!(
                    "  {} not written: the store holds no leaf hash for entry {index} (verify cannot name a changed entry)",
                    export::LEAVES_FILE
                ),
            }
            println!(
                "  {}: {} stored certificates ({} recorded by entries beyond the checkpoint)",
                export::CERTIFICATES_FILE,
                certificates.certificates,
                certificates.beyond_checkpoint
            );
            if !summary.vkey_written {
                println!("  no --vkey given: vkey.txt not written");
            }
            Ok(())
        }
        Command::Audit {
            command:
                AuditCommand::Verify {
                    dir,
                    trusted_key,
                    pinned_checkpoint,
                    time_tolerance_ms,
                },
        } => verify(&dir, &trusted_key, pinned_checkpoint, time_tolerance_ms),
    }
}

/// `migrate`: opening the store applies its migrations; nothing more to do.
struct Migrated;

impl StoreTask for Migrated {
    type Output = ();

    async fn run<S: Store>(self, _store: S) -> anyhow::Result<()> {
        Ok(())
    }
}

/// `audit export`: the latest checkpoint, its entries and leaf hashes, then the stored
/// certificates, read from the store alone.
struct Export<'a> {
    out: &'a Path,
    vkey: Option<&'a VerifierKey>,
}

impl StoreTask for Export<'_> {
    type Output = (export::ExportSummary, export::CertificatesSummary);

    async fn run<S: Store>(self, store: S) -> anyhow::Result<Self::Output> {
        let summary = export::export(&store, self.out, self.vkey).await?;
        let certificates = export::export_certificates(&store, self.out, summary.entries).await?;
        Ok((summary, certificates))
    }
}

/// `audit verify`: prints a `PASS` line per check, or the `FAIL` line, and fails on a failure.
fn verify(
    dir: &Path,
    trusted_key: &str,
    pinned_checkpoint: Option<PathBuf>,
    time_tolerance_ms: u64,
) -> anyhow::Result<()> {
    let trusted_key = parse_vkey(trusted_key)?;
    let pinned = match pinned_checkpoint {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read the pinned checkpoint {}", path.display()))?;
            Some((path, text))
        }
        None => None,
    };
    let options = export::VerifyOptions {
        trusted_key,
        pinned,
        time_tolerance: std::time::Duration::from_millis(time_tolerance_ms),
    };
    match export::verify(dir, &options) {
        Ok(report) => {
            for line in &report.passed {
                println!("PASS {line}");
            }
            println!("OK: the export of {} entries verifies", report.size);
            let history = report.history;
            println!(
                "  users {}, pins {}, renewals {}, identity resets {}, requests {} (approved {}), \
                 escrow releases and recovery-key changes {}",
                history.users,
                history.pins,
                history.renewals,
                history.resets,
                history.requests,
                history.approvals,
                history.approved_actions
            );
            match report.certificates {
                Some(counts) => println!(
                    "  certificates checked {}, beyond the checkpoint {}",
                    counts.checked, counts.beyond_checkpoint
                ),
                None => println!("  certificates not exported"),
            }
            Ok(())
        }
        Err(failure) => {
            println!("FAIL {failure}");
            Err(anyhow::Error::new(failure).context(format!("verification of {} failed", dir.display())))
        }
    }
}

/// A verifier key given as text, or as the path of a file holding it.
fn parse_vkey(text_or_file: &str) -> anyhow::Result<VerifierKey> {
    let path = Path::new(text_or_file);
    let text = if path.is_file() {
        std::fs::read_to_string(path).with_context(|| format!("cannot read the verifier key {}", path.display()))?
    } else {
        text_or_file.to_owned()
    };
    VerifierKey::parse(text.trim())
        .with_context(|| format!("{:?} is not a verifier key (name+keyid+base64)", text.trim()))
}

/// Binds `listen`, tells the operator what is served (the dev banner first, if any, and the `hints`
/// for the bound address), and runs `service` until Ctrl-C or SIGTERM.
async fn serve(
    service: Service,
    listen: SocketAddr,
    banner: Vec<String>,
    hints: impl FnOnce(SocketAddr) -> Vec<String>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr().context("cannot read the listening address")?;
    let info = service.info();
    for line in banner {
        println!("{line}");
    }
    println!("  CA certificate SHA-256: {}", info.ca_fingerprint);
    println!("listening on {address}");
    for line in hints(address) {
        println!("{line}");
    }
    tracing::info!(%address, ca_fingerprint = %info.ca_fingerprint, "serving");
    println!(
        "  audit log {}: checkpoint key {}",
        info.log_origin, info.checkpoint_key
    );
    service.run(listener, shutdown_signal()).await?;
    tracing::info!("shut down");
    Ok(())
}

async fn connect(config: HsmConfig) -> anyhow::Result<Hsm> {
    let module = config.module.clone();
    tokio::task::spawn_blocking(move || Hsm::connect(config))
        .await
        .context("HSM connect task failed")?
        .with_context(|| format!("cannot open the HSM through {}", module.display()))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn set_softhsm2_conf(path: Option<&Path>) -> anyhow::Result<()> {
    match path {
        Some(path) => hsm_sim::set_softhsm2_conf(path).context("cannot set SOFTHSM2_CONF"),
        None => Ok(()),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn init_logging(flag: Option<&str>, configured: LogFormat) -> anyhow::Result<()> {
    let format = match flag {
        Some("json") => LogFormat::Json,
        Some("human") => LogFormat::Human,
        Some(other) => anyhow::bail!("--log-format must be human or json (got {other:?})"),
        None => configured,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
    Ok(())
}
