//! Dev mode: provisions (first run) or reuses (later runs) a private SoftHSM token, the CA key and
//! certificate (through the real ceremony) and the embedded store, all under one data directory.
//!
//! Layout of the data directory:
//! `softhsm/` (token directory and `softhsm2.conf`), `hsm-user-pin` and `hsm-so-pin` (mode 0600),
//! `ceremony-*.toml` (the ceremony input that made the CA and the audit key), `ca.pem`,
//! `ca-service.toml` (the serve config with its `[audit]` section, written once the CA exists),
//! `ca.sqlite3` (the store), `audit-signer-guard` (the signer guard's state), `dev-pki/` (the dev
//! TLS CA, the server certificate and the dev principals' client certificates, see `pki`).

pub mod pki;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use hsm_sim::TokenDirectory;

use self::pki::DevPki;
use crate::ceremony::{self, CeremonyReport};
use crate::config::{CeremonyConfig, ServeConfig};
use crate::hsm::{Hsm, HsmConfig, KeyAlgorithm, Pin};

/// The dev CA's audit-log origin.
pub const DEV_LOG_ORIGIN: &str = "localhost/e2ee-ca-dev/audit-log";

/// Label of the dev token.
pub const DEV_TOKEN_LABEL: &str = "e2ee-ca-dev";

/// The files of a dev data directory.
#[derive(Debug, Clone)]
pub struct DevPaths {
    /// The data directory (absolute).
    pub root: PathBuf,
    /// The private SoftHSM token directory.
    pub token: TokenDirectory,
    /// The user PIN file.
    pub user_pin: PathBuf,
    /// The serve config, present once the CA exists.
    pub config: PathBuf,
    /// The CA certificate.
    pub ca_certificate: PathBuf,
}

/// Prepares the token directory (first run: init the token with random PINs). Runs before any
/// thread starts, because the caller must set `SOFTHSM2_CONF` afterwards.
pub fn prepare_token(data_dir: &Path) -> anyhow::Result<(DevPaths, bool)> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let root = data_dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", data_dir.display()))?;
    let token = TokenDirectory::create(&root.join("softhsm"))?;
    let paths = DevPaths {
        user_pin: root.join("hsm-user-pin"),
        config: root.join("ca-service.toml"),
        ca_certificate: root.join("ca.pem"),
        token,
        root,
    };
    let token_created = !paths.token.has_token(DEV_TOKEN_LABEL)?;
    if token_created {
        let so_pin = read_or_create_pin(&paths.root.join("hsm-so-pin"))?;
        let user_pin = read_or_create_pin(&paths.user_pin)?;
        paths.token.init_token(DEV_TOKEN_LABEL, &so_pin, &user_pin)?;
    }
    Ok((paths, token_created))
}

/// Reads a PIN file, or creates it with 16 random hex digits.
fn read_or_create_pin(path: &Path) -> anyhow::Result<zeroize::Zeroizing<String>> {
    if path.exists() {
        let pin = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        return Ok(zeroize::Zeroizing::new(pin.trim().to_owned()));
    }
    let pin = zeroize::Zeroizing::new(hex::encode(rand::random::<[u8; 8]>()));
    hsm_sim::write_secret_file(path, &pin)?;
    Ok(pin)
}

/// The HSM section shared by the dev ceremony and serve configs.
fn hsm_section(paths: &DevPaths) -> anyhow::Result<String> {
    let module = hsm_sim::find_module()?;
    Ok(format!(
        "[hsm]\nmodule = {module:?}\nsofthsm2_conf = {conf:?}\ntoken_label = {DEV_TOKEN_LABEL:?}\npin_file = {pin:?}\n\
         pool_size = 4\nsession_wait_ms = 2000\n",
        module = module.display().to_string(),
        conf = paths.token.conf_path().display().to_string(),
        pin = paths.user_pin.display().to_string(),
    ))
}

/// Makes the dev PKI if it does not exist yet; returns it and whether it was made now. A serve
/// config written before dev mode had mTLS gets the PKI's `[tls]` and `[[principals]]` appended.
pub fn ensure_pki(paths: &DevPaths) -> anyhow::Result<(DevPki, bool)> {
    let (pki, created) = pki::ensure(&paths.root)?;
    if paths.config.exists() {
        let text = std::fs::read_to_string(&paths.config)
            .with_context(|| format!("cannot read {}", paths.config.display()))?;
        if !text.lines().any(|line| line.trim() == "[tls]") {
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(&paths.config)
                .with_context(|| format!("cannot open {}", paths.config.display()))?;
            std::io::Write::write_all(&mut file, format!("\n{}", pki.config_sections()).as_bytes())
                .with_context(|| format!("cannot add [tls] to {}", paths.config.display()))?;
        }
    }
    Ok((pki, created))
}

/// How dev mode serves.
#[derive(Debug, Clone)]
pub enum DevTransport {
    /// mTLS with the dev PKI (the default).
    MutualTls(DevPki),
    /// `--plaintext`: no TLS, nobody authenticated, loopback only.
    Plaintext,
}

/// Runs the ceremony if the CA does not exist yet, then writes the serve config (with the dev
/// PKI's `[tls]` and `[[principals]]`, before `[audit]`, which stays the last section).
pub async fn ensure_ca(
    paths: &DevPaths,
    hsm: &Hsm,
    algorithm: KeyAlgorithm,
    pki: &DevPki,
) -> anyhow::Result<Option<CeremonyReport>> {
    if paths.config.exists() {
        return Ok(None);
    }
    // A fresh label per attempt: a ceremony interrupted after key generation never blocks the next one.
    let suffix = hex::encode(rand::random::<[u8; 4]>());
    let key_label = format!("e2ee-ca-dev-{suffix}");
    let audit_key_label = format!("e2ee-ca-dev-audit-{suffix}");
    if paths.ca_certificate.exists() {
        anyhow::bail!(
            "{} exists but {} does not: the data directory is incomplete; remove {} to start over",
            paths.ca_certificate.display(),
            paths.config.display(),
            paths.root.display()
        );
    }
    let ceremony_path = paths.root.join(format!("ceremony-{key_label}.toml"));
    let ceremony_text = format!(
        "# Dev-mode ceremony, written by `ca-service serve --dev`.\nmode = \"root\"\nkey_label = {key_label:?}\n\
         key_algorithm = {algorithm:?}\nvalidity_days = 3650\noutput = {output:?}\n\
         audit_key_label = {audit_key_label:?}\n\n{hsm}\n\
         [subject]\ncommon_name = \"e2ee-ca Dev CA\"\norganization = \"e2ee-ca dev mode\"\n",
        algorithm = algorithm.name(),
        output = paths.ca_certificate.display().to_string(),
        hsm = hsm_section(paths)?,
    );
    ceremony::write_new_file(&ceremony_path, ceremony_text.as_bytes())?;
    let ceremony_config = CeremonyConfig::load(&ceremony_path)?;
    let report = ceremony::run(hsm, &ceremony_config).await?;
    let serve_text = format!(
        "# Dev-mode serve config, written by `ca-service serve --dev`.\nlisten = \"127.0.0.1:50051\"\n\n{hsm}\n\
         [ca]\nkey_label = {key_label:?}\nkey_algorithm = {algorithm:?}\ncertificate = \"ca.pem\"\n\n\
         [issuance]\nvalidity_days = 365\n# Generous for dev: the demo renews on every run.\nmax_certificates_per_user_per_day = 1000\n\n[store]\nurl = \"sqlite:ca.sqlite3\"\n\n{tls}\n\
         [audit]\nkey_label = {audit_key_label:?}\norigin = {DEV_LOG_ORIGIN:?}\n\
         # Dev only: in production keep the guard on another disk than the database.\n\
         guard_file = \"audit-signer-guard\"\n",
        hsm = hsm_section(paths)?,
        algorithm = algorithm.name(),
        tls = pki.config_sections(),
    );
    ceremony::write_new_file(&paths.config, serve_text.as_bytes())?;
    Ok(Some(report))
}

/// How dev mode reaches its token: four sessions, a 2-second session wait.
pub fn hsm_config(paths: &DevPaths) -> anyhow::Result<HsmConfig> {
    let pin = zeroize::Zeroizing::new(
        std::fs::read_to_string(&paths.user_pin)
            .with_context(|| format!("cannot read {}", paths.user_pin.display()))?,
    );
    Ok(HsmConfig {
        module: hsm_sim::find_module()?,
        token_label: DEV_TOKEN_LABEL.to_owned(),
        pin: Pin::new(&pin),
        pool_size: 4,
        session_wait: std::time::Duration::from_secs(2),
    })
}

/// What dev mode tells the operator before it serves: that it is dev mode, and what it made or reused.
pub fn banner(
    paths: &DevPaths,
    token_created: bool,
    ceremony: Option<&CeremonyReport>,
    config: &ServeConfig,
    requested_algorithm: KeyAlgorithm,
    transport: &DevTransport,
) -> Vec<String> {
    let mut banner = match transport {
        DevTransport::MutualTls(_) => vec![
            "e2ee-ca DEV MODE: not for production. mTLS with the dev PKI (software keys), loopback only.".to_owned(),
        ],
        DevTransport::Plaintext => vec![
            "e2ee-ca DEV MODE: not for production.".to_owned(),
            "  !!! PLAINTEXT gRPC (--plaintext): no TLS, NOBODY IS AUTHENTICATED, loopback only. !!!".to_owned(),
            "  !!! Every caller is the principal \"unauthenticated\" (role sync-server only): Admin and ExportEntries \
             answer UNAUTHENTICATED. !!!"
                .to_owned(),
        ],
    };
    banner.extend([
        format!("  data directory: {}", paths.root.display()),
        format!(
            "  SoftHSM token {:?}: {}",
            DEV_TOKEN_LABEL,
            if token_created { "created" } else { "reused" }
        ),
    ]);
    match ceremony {
        Some(report) => banner.push(format!(
            "  CA key {:?} ({}) generated on the token by the ceremony; certificate written to {}",
            report.key_label, config.ca.key_algorithm, report.output
        )),
        None => banner.push(format!(
            "  CA key {:?} ({}) and certificate {} reused",
            config.ca.key_label,
            config.ca.key_algorithm,
            config.ca.certificate.display()
        )),
    }
    if ceremony.is_none() && config.ca.key_algorithm != requested_algorithm {
        banner.push(format!(
            "  note: --ca-key-algorithm {requested_algorithm} applies to a new data directory only"
        ));
    }
    banner.push(format!("  store: {}", config.store.url));
    if let DevTransport::MutualTls(pki) = transport {
        banner.push(format!("  dev TLS PKI: {}", pki.directory().display()));
        banner.push(format!(
            "    CA (trust it for the server; it issued every client certificate): {}",
            pki.ca_certificate().display()
        ));
        for (name, roles) in pki::DEV_PRINCIPALS {
            let roles: Vec<&str> = roles.iter().map(|role| role.name()).collect();
            banner.push(format!(
                "    principal {name} ({}): -cert {} -key {}",
                roles.join(", "),
                pki.certificate(name).display(),
                pki.key(name).display()
            ));
        }
    }
    banner
}

/// What to try once dev mode listens on `address`: grpcurl and client lines, ready to paste.
pub fn try_lines(transport: &DevTransport, address: SocketAddr) -> Vec<String> {
    match transport {
        DevTransport::MutualTls(pki) => {
            let as_principal = |name: &str| {
                format!(
                    "grpcurl -cacert {} -cert {} -key {} {address}",
                    pki.ca_certificate().display(),
                    pki.certificate(name).display(),
                    pki.key(name).display()
                )
            };
            vec![
                format!("Try: {} e2ee.ca.v1.Identity/GetCaInfo", as_principal("sync-server")),
                format!("     {} e2ee.ca.v1.Transparency/GetCheckpoint", as_principal("auditor")),
                format!(
                    "     {} -d '{{\"start\": 0, \"end\": 1}}' e2ee.ca.v1.Transparency/ExportEntries",
                    as_principal("auditor")
                ),
                format!(
                    "     cargo run -p e2ee-client -- --ca https://{address} --ca-cert {} --cert {} --key {} enroll --user alice --dir ./alice",
                    pki.ca_certificate().display(),
                    pki.certificate("sync-server").display(),
                    pki.key("sync-server").display()
                ),
            ]
        }
        DevTransport::Plaintext => plaintext_try_lines(address),
    }
}

/// What to try on a plaintext listener.
pub fn plaintext_try_lines(address: SocketAddr) -> Vec<String> {
    vec![
        format!("Try: grpcurl -plaintext {address} e2ee.ca.v1.Identity/GetCaInfo"),
        format!("     grpcurl -plaintext {address} e2ee.ca.v1.Transparency/GetCheckpoint"),
        format!("     cargo run -p e2ee-client -- --ca http://{address} enroll --user alice --dir ./alice"),
    ]
}
