//! The command line (clap): global connection and output flags, one subcommand per Admin RPC,
//! and `recovery status`, `checkpoint`, `log export` and `crl`.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::ceremony::{RecoveryPublicKeyPem, RegistrationRequest};
use crate::exit::EXIT_CODES_HELP;
use crate::settings::ConnectionFlags;

/// The e2ee-ca admin console on the command line: look identities up, revoke certificates, run
/// dual-control identity resets, register the offline recovery key, release escrow deposits, and
/// fetch the log's checkpoint, an export of its entries and the CRL.
#[derive(Debug, Parser)]
#[command(name = "e2ee-ca-admin", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Print JSON (stable field names, one document) instead of tables.
    #[arg(long, global = true, help_heading = "Output")]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the CA is and who the admin is. Each setting comes from its flag, else its environment
/// variable, else the `--env-file`. The key file is read by the TLS stack only, never printed.
#[derive(Debug, Args)]
#[command(next_help_heading = "Connection (flag, else env var, else --env-file)")]
pub struct ConnectionArgs {
    /// The CA's gRPC endpoint [env: E2EE_CA_ENDPOINT] [default: https://127.0.0.1:50051].
    #[arg(long, global = true, value_name = "URL")]
    pub endpoint: Option<String>,
    /// PEM file of the CA that issued the server's TLS certificate [env: E2EE_CA_CACERT].
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// The admin's client certificate, PEM [env: E2EE_CA_CERT].
    #[arg(long, global = true, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// The admin's private key, PEM [env: E2EE_CA_KEY].
    #[arg(long, global = true, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// A file of KEY=VALUE lines setting the E2EE_CA_* variables above.
    #[arg(long, global = true, value_name = "FILE")]
    pub env_file: Option<PathBuf>,
    /// Talk plaintext to an http:// endpoint (a `serve --dev --plaintext` server only).
    #[arg(long, global = true)]
    pub plaintext: bool,
}

impl ConnectionArgs {
    /// The flags as the settings resolver takes them.
    pub fn flags(&self) -> ConnectionFlags {
        ConnectionFlags {
            endpoint: self.endpoint.clone(),
            ca_cert: self.ca_cert.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            env_file: self.env_file.clone(),
            plaintext: self.plaintext,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Look identities up (Admin.GetIdentity, Admin.ListIdentities).
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// Revoke one certificate or every unrevoked certificate of a user (Admin.RevokeCertificate).
    Revoke(RevokeArgs),
    /// Request an identity reset, which another admin approves (Admin.RequestIdentityReset).
    #[command(subcommand)]
    Reset(ResetCommand),
    /// Approve or list dual-control requests (Admin.ApproveRequest, Admin.ListRequests).
    #[command(subcommand)]
    Request(RequestCommand),
    /// Register, disable or show the offline recovery key (Admin.RegisterRecoveryKey,
    /// Admin.DisableRecoveryKey, Identity.GetCaInfo).
    #[command(subcommand)]
    Recovery(RecoveryCommand),
    /// Release a user's escrow deposit: request, then fetch once (Admin.RequestEscrowRelease,
    /// Admin.GetEscrow).
    #[command(subcommand)]
    Escrow(EscrowCommand),
    /// Print the log's latest signed checkpoint (Transparency.GetCheckpoint).
    Checkpoint,
    /// Export the log's entries (Transparency.ExportEntries).
    #[command(subcommand)]
    Log(LogCommand),
    /// Fetch the latest CRL (Identity.GetCrl): its summary, or the CRL itself with --out or --pem.
    Crl(CrlArgs),
}

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// A user's pinned key, certificates (with revocation status) and audit-log entries.
    Show {
        /// The user id.
        user: String,
    },
    /// Pinned identities in user-id order, a page at a time.
    List {
        /// The next-page token a previous page printed.
        #[arg(long, value_name = "TOKEN")]
        page_token: Option<String>,
        /// Identities per page (server default 100, at most 1000).
        #[arg(long, value_name = "N")]
        page_size: Option<u32>,
        /// Fetch every page and print them as one list.
        #[arg(long, conflicts_with = "page_token")]
        all: bool,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["serial", "user"])))]
pub struct RevokeArgs {
    /// The certificate's serial number, hex.
    #[arg(long, value_name = "HEX")]
    pub serial: Option<String>,
    /// Revoke every unrevoked certificate of this user.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Why (RFC 5280 reason).
    #[arg(long, value_enum)]
    pub reason: Reason,
}

/// The RFC 5280 reasons an admin may give.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Reason {
    /// keyCompromise (1).
    KeyCompromise,
    /// affiliationChanged (3).
    AffiliationChanged,
    /// superseded (4).
    Superseded,
    /// cessationOfOperation (5).
    CessationOfOperation,
    /// privilegeWithdrawn (9).
    PrivilegeWithdrawn,
}

/// How a reset revokes the old certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResetRevocationReason {
    /// keyCompromise (1).
    KeyCompromise,
    /// superseded (4), the server's default.
    Superseded,
}

#[derive(Debug, Subcommand)]
pub enum ResetCommand {
    /// Open a reset request for a user; a different admin must approve it.
    Request {
        /// The user whose identity is reset.
        user: String,
        /// Why, for the audit log (1 to 512 bytes).
        #[arg(long, value_name = "TEXT")]
        reason: String,
        /// How the user's old certificates are revoked when the reset is used (default: superseded).
        #[arg(long, value_enum, value_name = "REASON")]
        revocation_reason: Option<ResetRevocationReason>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RequestCommand {
    /// Approve a pending request (you must not be the admin who requested it).
    ///
    /// Approving a recovery-key registration or disable also performs it: check the key fingerprint
    /// and the ceremony reference that `request list` shows against the ceremony's record first.
    Approve {
        /// The request id (32 hex characters).
        request_id: String,
    },
    /// Open requests, oldest first.
    List,
}

#[derive(Debug, Subcommand)]
pub enum RecoveryCommand {
    /// Open a request to register the recovery key that the officers' ceremony made; a different
    /// admin must approve it.
    ///
    /// Approving it has the CA certify the key and enable recovery, replacing any earlier key.
    Register(RegisterArgs),
    /// Open a request to disable the recovery key; a different admin must approve it.
    ///
    /// Escrow deposits are refused from the approval on; those already made are kept and can still
    /// be released.
    Disable {
        /// Why, for the audit log (1 to 512 bytes).
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// Whether recovery is enabled, the recovery key's fingerprint and since when; its certificate
    /// with --json or --certificate-out.
    Status {
        /// Write the recovery key's certificate (PEM) to FILE; exits 4 when recovery is disabled.
        #[arg(long, value_name = "FILE")]
        certificate_out: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("recovery_key").required(true).args(["public_key", "request"])))]
pub struct RegisterArgs {
    /// The recovery public key, PEM (the ceremony's recovery-public-key.pem); needs --reference.
    #[arg(long, value_name = "FILE", value_parser = RecoveryPublicKeyPem::read, requires = "reference")]
    pub public_key: Option<RecoveryPublicKeyPem>,
    /// Which ceremony made the key (date, place, officers' record), 1 to 512 bytes; it goes into
    /// the key's certificate and the audit log.
    #[arg(long, value_name = "TEXT", requires = "public_key")]
    pub reference: Option<String>,
    /// The ceremony's registration-request.json instead of --public-key and --reference (its
    /// public_key_pem and ceremony_reference).
    #[arg(long, value_name = "FILE", value_parser = RegistrationRequest::read, conflicts_with = "reference")]
    pub request: Option<RegistrationRequest>,
    /// Why, for the audit log (1 to 512 bytes).
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
}

#[derive(Debug, Subcommand)]
pub enum EscrowCommand {
    /// Open a request to release a user's escrow deposit; a different admin must approve it.
    Request {
        /// The user whose deposit is released.
        #[arg(long, value_name = "USER")]
        user: String,
        /// Why, for the audit log (1 to 512 bytes).
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// Fetch the sealed blob an approved release authorizes into a new file, and print what it is.
    ///
    /// The CA returns the blob once (the call uses the release up), so FILE must not exist: it is
    /// created (mode 0600) before the call and never overwritten. The blob never goes to stdout;
    /// only the recovery key opens it.
    Get {
        /// The approved escrow-release request id (32 hex characters).
        #[arg(long, value_name = "ID")]
        request: String,
        /// The file to create for the blob's raw bytes.
        #[arg(long, value_name = "FILE", value_parser = absent_path)]
        out: PathBuf,
    },
}

/// `--out` of `escrow get`: a path where nothing is yet (not even a dangling symlink), checked
/// while parsing so that the refusal comes before any connection. The file is then created with
/// `create_new`, which closes the race. `-` is refused rather than taken for stdout.
fn absent_path(text: &str) -> Result<PathBuf, String> {
    if text == "-" {
        return Err("the blob never goes to stdout: give a file to create".to_owned());
    }
    let path = PathBuf::from(text);
    if std::fs::symlink_metadata(&path).is_ok() {
        return Err(exists_message(&path));
    }
    Ok(path)
}

/// Why an existing `--out` is refused.
pub fn exists_message(path: &Path) -> String {
    format!(
        "{} exists: escrow get never overwrites a file (the CA returns the blob only once)",
        path.display()
    )
}

#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Write entries [START, END) as an export directory that `ca-service audit verify` reads
    /// (entries.bin, checkpoint.txt, vkey.txt). audit verify checks the whole log: keep the
    /// default range, 0 to the checkpoint's size.
    Export {
        /// First index.
        #[arg(long, value_name = "N", default_value_t = 0)]
        start: u64,
        /// One past the last index [default: the latest checkpoint's size].
        #[arg(long, value_name = "N")]
        end: Option<u64>,
        /// The export directory (created if missing; export files in it are replaced).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct CrlArgs {
    /// Write the CRL to FILE (DER, or PEM with --pem) and print its summary.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// PEM instead of DER; without --out, print the PEM alone on stdout.
    #[arg(long)]
    pub pem: bool,
}
