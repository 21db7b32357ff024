//! The command line (clap): global connection and output flags, one subcommand per Admin RPC,
//! and `checkpoint`, `log export` and `crl`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::exit::EXIT_CODES_HELP;
use crate::settings::ConnectionFlags;

/// The e2ee-ca admin console on the command line: look identities up, revoke certificates, run
/// dual-control identity resets, and fetch the log's checkpoint, an export of its entries and the CRL.
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
    Approve {
        /// The request id (32 hex characters).
        request_id: String,
    },
    /// Open requests, oldest first.
    List,
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
