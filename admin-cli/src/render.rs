//! Output: each response message as an aligned table (the default) or as JSON (`--json`, stable
//! field names: the proto field names, reasons as the CLI spells them). No gRPC here, so every
//! rendering is tested on messages built in the test.
//!
//! The column aligner is a few lines of our own rather than a table crate: the output is plain
//! left-aligned columns, and it is snapshot-tested byte for byte.

use std::path::Path;

use e2ee_ca_proto::v1 as pb;
use serde_json::{Value, json};

/// Table or JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// One JSON document for scripts.
    Json,
}

/// What `log export` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// The directory.
    pub dir: String,
    /// First index written.
    pub start: u64,
    /// One past the last index written.
    pub end: u64,
    /// The size of the checkpoint written next to the entries.
    pub tree_size: u64,
}

/// What `crl` fetched (the response without its DER) and where it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlSummary {
    /// The CRL number.
    pub crl_number: u64,
    /// thisUpdate, RFC 3339.
    pub this_update: String,
    /// nextUpdate, RFC 3339.
    pub next_update: String,
    /// How many certificates it lists.
    pub revoked_count: u64,
    /// Its DER size.
    pub der_bytes: usize,
    /// The file written, if any.
    pub out: Option<String>,
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table, or the header and `empty` when there are no rows.
    fn render(&self, empty: &str) -> String {
        let header: Vec<String> = self.headers.iter().map(|header| (*header).to_owned()).collect();
        let lines: Vec<&Vec<String>> = std::iter::once(&header).chain(&self.rows).collect();
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|column| {
                lines
                    .iter()
                    .map(|line| line.get(column).map_or(0, |cell| cell.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for line in lines {
            let mut text = String::new();
            for (column, cell) in line.iter().enumerate() {
                if column + 1 == line.len() {
                    text.push_str(cell);
                } else {
                    text.push_str(&format!("{cell:<width$}  ", width = widths[column]));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        if self.rows.is_empty() {
            out.push_str(empty);
            out.push('\n');
        }
        out
    }
}

/// `label: value` lines with the values aligned.
fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(label, _)| label.len() + 1).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(label, value)| format!("{:<width$} {value}\n", format!("{label}:")).replace(" \n", "\n"))
        .collect()
}

fn json_text(value: &Value) -> String {
    // A Value always serialises; `to_string_pretty` can only fail on a map with non-string keys.
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    text.push('\n');
    text
}

/// A reason as the CLI spells it; `None` for unspecified (not revoked).
fn reason_name(reason: i32) -> Option<&'static str> {
    use pb::RevocationReason;
    match RevocationReason::try_from(reason).ok()? {
        RevocationReason::Unspecified => None,
        RevocationReason::KeyCompromise => Some("key-compromise"),
        RevocationReason::AffiliationChanged => Some("affiliation-changed"),
        RevocationReason::Superseded => Some("superseded"),
        RevocationReason::CessationOfOperation => Some("cessation-of-operation"),
        RevocationReason::PrivilegeWithdrawn => Some("privilege-withdrawn"),
    }
}

/// `text`, or `None` (JSON null) when empty: proto3 strings say "absent" by being empty.
fn present(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

/// What an audit entry is, for a table: its `kind` line's value, else its first line.
fn entry_kind(entry: &str) -> String {
    entry
        .lines()
        .find_map(|line| line.strip_prefix("kind "))
        .or_else(|| entry.lines().next())
        .unwrap_or("")
        .to_owned()
}

/// `identity show`.
pub fn identity(response: &pb::GetIdentityResponse, format: Format) -> String {
    match format {
        Format::Json => json_text(&json!({
            "user_id": response.user_id,
            "key_fingerprint": response.key_fingerprint,
            "pinned_since": response.pinned_since,
            "certificates": response.certificates.iter().map(|certificate| json!({
                "serial_hex": certificate.serial_hex,
                "key_fingerprint": certificate.key_fingerprint,
                "issued_at": certificate.issued_at,
                "not_after": certificate.not_after,
                "revoked": certificate.revoked,
                "revoked_at": (!certificate.revoked_at.is_empty()).then_some(&certificate.revoked_at),
                "revocation_reason": reason_name(certificate.revocation_reason),
                "certificate_pem": certificate.certificate_pem,
            })).collect::<Vec<_>>(),
            "log_entries": response.log_entries.iter().map(|entry| json!({
                "index": entry.index,
                "entry_hash": entry.entry_hash,
                "entry": entry.entry,
            })).collect::<Vec<_>>(),
            "wrapped_key_stored": response.wrapped_key_stored,
            "escrow_recovery_key_fingerprint": present(&response.escrow_recovery_key_fingerprint),
            "backup_reads": response.backup_reads.iter().map(|read| json!({
                "read_by": read.read_by,
                "read_at": read.read_at,
                "index": read.index,
            })).collect::<Vec<_>>(),
        })),
        Format::Table => {
            let escrow = match present(&response.escrow_recovery_key_fingerprint) {
                Some(fingerprint) => format!("sealed to recovery key {fingerprint}"),
                None => "none".to_owned(),
            };
            let mut out = fields(&[
                ("user", response.user_id.clone()),
                ("key fingerprint", response.key_fingerprint.clone()),
                ("pinned since", response.pinned_since.clone()),
                (
                    "wrapped key",
                    if response.wrapped_key_stored { "stored" } else { "none" }.to_owned(),
                ),
                ("escrow", escrow),
            ]);
            out.push_str("\ncertificates (newest first):\n");
            let mut certificates = Table::new(&["SERIAL", "ISSUED", "NOT AFTER", "STATUS"]);
            for certificate in &response.certificates {
                let status = if certificate.revoked {
                    format!(
                        "revoked {} ({})",
                        certificate.revoked_at,
                        reason_name(certificate.revocation_reason).unwrap_or("no reason")
                    )
                } else {
                    "valid".to_owned()
                };
                certificates.row(vec![
                    certificate.serial_hex.clone(),
                    certificate.issued_at.clone(),
                    certificate.not_after.clone(),
                    status,
                ]);
            }
            out.push_str(&certificates.render("(none)"));
            out.push_str("\nwrapped-key reads (oldest first):\n");
            let mut reads = Table::new(&["READ BY", "READ AT", "INDEX"]);
            for read in &response.backup_reads {
                reads.row(vec![
                    read.read_by.clone(),
                    read.read_at.clone(),
                    read.index
                        .map_or_else(|| "pending".to_owned(), |index| index.to_string()),
                ]);
            }
            out.push_str(&reads.render("(none)"));
            out.push_str("\nlog entries (oldest first):\n");
            let mut entries = Table::new(&["INDEX", "KIND", "ENTRY HASH"]);
            for entry in &response.log_entries {
                entries.row(vec![
                    entry
                        .index
                        .map_or_else(|| "pending".to_owned(), |index| index.to_string()),
                    entry_kind(&entry.entry),
                    entry.entry_hash.clone(),
                ]);
            }
            out.push_str(&entries.render("(none)"));
            out
        }
    }
}

/// `identity list` (one page, or every page with `--all` and an empty token).
pub fn identities(identities: &[pb::IdentitySummary], next_page_token: &str, format: Format) -> String {
    match format {
        Format::Json => json_text(&json!({
            "identities": identities.iter().map(|identity| json!({
                "user_id": identity.user_id,
                "key_fingerprint": identity.key_fingerprint,
                "pinned_since": identity.pinned_since,
            })).collect::<Vec<_>>(),
            "next_page_token": next_page_token,
        })),
        Format::Table => {
            let mut table = Table::new(&["USER", "PINNED SINCE", "KEY FINGERPRINT"]);
            for identity in identities {
                table.row(vec![
                    identity.user_id.clone(),
                    identity.pinned_since.clone(),
                    identity.key_fingerprint.clone(),
                ]);
            }
            let mut out = table.render("(no identities)");
            if !next_page_token.is_empty() {
                out.push_str(&format!("\nmore: --page-token {next_page_token}\n"));
            }
            out
        }
    }
}

fn log_entry_json(entry: Option<&pb::LogEntryRef>) -> Value {
    entry.map_or(
        Value::Null,
        |entry| json!({ "index": entry.index, "entry_hash": entry.entry_hash }),
    )
}

/// `revoke`.
pub fn revoked(response: &pb::RevokeCertificateResponse, format: Format) -> String {
    match format {
        Format::Json => json_text(&json!({
            "revoked_serials": response.revoked_serials,
            "log_entry": log_entry_json(response.log_entry.as_ref()),
            "crl_number": response.crl_number,
        })),
        Format::Table => {
            let mut table = Table::new(&["REVOKED SERIAL"]);
            for serial in &response.revoked_serials {
                table.row(vec![serial.clone()]);
            }
            let mut out = table.render("(none)");
            let crl = if response.crl_number == 0 {
                "not signed yet (the CA retries; the revocation is committed)".to_owned()
            } else {
                response.crl_number.to_string()
            };
            out.push('\n');
            out.push_str(&fields(&[
                (
                    "log index",
                    response
                        .log_entry
                        .as_ref()
                        .map_or_else(|| "-".to_owned(), |entry| entry.index.to_string()),
                ),
                ("CRL number", crl),
            ]));
            out
        }
    }
}

/// The request kinds (`ApprovalRequest.kind`) whose rendering differs.
const IDENTITY_RESET: &str = "identity-reset";
const ESCROW_RELEASE: &str = "escrow-release";
const RECOVERY_KEY_REGISTRATION: &str = "recovery-key-registration";
const RECOVERY_KEY_DISABLE: &str = "recovery-key-disable";

fn request_json(request: &pb::ApprovalRequest) -> Value {
    json!({
        "request_id": request.request_id,
        "kind": request.kind,
        "user_id": present(&request.user_id),
        "reason": request.reason,
        "requested_by": request.requested_by,
        "requested_at": request.requested_at,
        "expires_at": request.expires_at,
        "approved_by": present(&request.approved_by),
        "approved_at": present(&request.approved_at),
        "revocation_reason": reason_name(request.revocation_reason),
        "key_fingerprint": present(&request.key_fingerprint),
        "ceremony_reference": present(&request.ceremony_reference),
    })
}

/// The request's fields; the ceremony reference only when it has one (a recovery-key registration).
fn request_fields(request: &pb::ApprovalRequest) -> String {
    let mut pairs = vec![
        ("request id", request.request_id.clone()),
        ("kind", request.kind.clone()),
        ("user", or_dash(&request.user_id)),
        ("reason", request.reason.clone()),
        ("requested by", request.requested_by.clone()),
        ("requested at", request.requested_at.clone()),
        ("expires at", request.expires_at.clone()),
        ("approved by", or_dash(&request.approved_by)),
        ("approved at", or_dash(&request.approved_at)),
        (
            "revocation reason",
            reason_name(request.revocation_reason).unwrap_or("-").to_owned(),
        ),
        ("key fingerprint", or_dash(&request.key_fingerprint)),
    ];
    if !request.ceremony_reference.is_empty() {
        pairs.push(("ceremony reference", request.ceremony_reference.clone()));
    }
    fields(&pairs)
}

/// `reset request`, `recovery register`, `recovery disable` and `escrow request`: the request
/// just opened, with a reminder that another admin approves it.
pub fn pending(request: &pb::ApprovalRequest, format: Format) -> String {
    match format {
        Format::Json => json_text(&request_json(request)),
        Format::Table => {
            let mut out = request_fields(request);
            out.push_str(&format!(
                "\nanother admin approves it with: e2ee-ca-admin request approve {}\n",
                request.request_id
            ));
            out
        }
    }
}

/// `request approve`: the request as it now is, and what the approval did or allows next.
pub fn approved(request: &pb::ApprovalRequest, format: Format) -> String {
    match format {
        Format::Json => json_text(&request_json(request)),
        Format::Table => {
            let mut out = request_fields(request);
            let next = match request.kind.as_str() {
                IDENTITY_RESET => {
                    "the user's next certificate request may pin a new key; the old certificates are then revoked"
                        .to_owned()
                }
                ESCROW_RELEASE => format!(
                    "fetch the sealed blob (once): e2ee-ca-admin escrow get --request {} --out FILE",
                    request.request_id
                ),
                RECOVERY_KEY_REGISTRATION => {
                    "the recovery key is registered and recovery is enabled (see: e2ee-ca-admin recovery status)"
                        .to_owned()
                }
                RECOVERY_KEY_DISABLE => "recovery is disabled: escrow deposits are refused from now on".to_owned(),
                _ => return out,
            };
            out.push('\n');
            out.push_str(&next);
            out.push('\n');
            out
        }
    }
}

/// `request list`.
pub fn requests(requests: &[pb::ApprovalRequest], format: Format) -> String {
    match format {
        Format::Json => json_text(&json!({
            "requests": requests.iter().map(request_json).collect::<Vec<_>>(),
        })),
        Format::Table => {
            let mut table = Table::new(&[
                "REQUEST ID",
                "KIND",
                "USER",
                "REQUESTED BY",
                "APPROVED BY",
                "EXPIRES AT",
                "REASON",
            ]);
            for request in requests {
                table.row(vec![
                    request.request_id.clone(),
                    request.kind.clone(),
                    or_dash(&request.user_id),
                    request.requested_by.clone(),
                    or_dash(&request.approved_by),
                    request.expires_at.clone(),
                    request.reason.clone(),
                ]);
            }
            let mut out = table.render("(no open requests)");
            // Approving a recovery-key request performs it, and this is the approver's only view
            // of the key before that: show what to check against the ceremony's record.
            let mut keys = Table::new(&["REQUEST ID", "KEY FINGERPRINT", "CEREMONY REFERENCE"]);
            for request in requests {
                if matches!(request.kind.as_str(), RECOVERY_KEY_REGISTRATION | RECOVERY_KEY_DISABLE) {
                    keys.row(vec![
                        request.request_id.clone(),
                        or_dash(&request.key_fingerprint),
                        or_dash(&request.ceremony_reference),
                    ]);
                }
            }
            if !keys.rows.is_empty() {
                out.push_str(
                    "\nrecovery-key requests (check the key against the ceremony's record before approving):\n",
                );
                out.push_str(&keys.render(""));
            }
            out
        }
    }
}

/// `recovery status`: GetCaInfo's recovery status, and where the certificate went, if anywhere.
pub fn recovery(status: &pb::RecoveryKeyStatus, certificate_out: Option<&str>, format: Format) -> String {
    match format {
        Format::Json => json_text(&json!({
            "enabled": status.enabled,
            "fingerprint": present(&status.fingerprint),
            "enabled_since": present(&status.enabled_since),
            "certificate_pem": present(&status.certificate_pem),
            "certificate_out": certificate_out,
        })),
        Format::Table if !status.enabled => {
            fields(&[("recovery", "disabled (escrow deposits are refused)".to_owned())])
        }
        Format::Table => fields(&[
            ("recovery", "enabled".to_owned()),
            ("fingerprint", status.fingerprint.clone()),
            ("enabled since", status.enabled_since.clone()),
            (
                "certificate",
                certificate_out.map_or_else(
                    || "not shown (--json, or --certificate-out FILE)".to_owned(),
                    |out| format!("written to {out}"),
                ),
            ),
        ]),
    }
}

/// `escrow get`: what was fetched and where it went. The blob itself is never rendered.
pub fn escrow(response: &pb::GetEscrowResponse, out: &str, format: Format) -> String {
    match format {
        Format::Json => json_text(&json!({
            "user_id": response.user_id,
            "recovery_key_fingerprint": response.recovery_key_fingerprint,
            "deposited_at": response.deposited_at,
            "log_entry": log_entry_json(response.log_entry.as_ref()),
            "blob_bytes": response.escrow_blob.len(),
            "out": out,
        })),
        Format::Table => fields(&[
            ("user", response.user_id.clone()),
            ("recovery key", response.recovery_key_fingerprint.clone()),
            ("deposited at", response.deposited_at.clone()),
            (
                "log index",
                response
                    .log_entry
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |entry| entry.index.to_string()),
            ),
            (
                "sealed blob",
                format!("{} bytes, written to {out}", response.escrow_blob.len()),
            ),
        ]),
    }
}

/// `checkpoint`: the signed note verbatim (for `tlog` verifiers) after its size.
pub fn checkpoint(response: &pb::GetCheckpointResponse, format: Format) -> String {
    match format {
        Format::Json => json_text(&json!({
            "tree_size": response.tree_size,
            "checkpoint": response.checkpoint,
        })),
        Format::Table => {
            let mut out = fields(&[("tree size", response.tree_size.to_string())]);
            out.push('\n');
            out.push_str(&response.checkpoint);
            if !response.checkpoint.ends_with('\n') {
                out.push('\n');
            }
            out
        }
    }
}

/// `log export`.
pub fn export(summary: &ExportSummary, format: Format) -> String {
    match format {
        Format::Json => json_text(&json!({
            "dir": summary.dir,
            "start": summary.start,
            "end": summary.end,
            "entries": summary.end - summary.start,
            "tree_size": summary.tree_size,
        })),
        Format::Table => fields(&[
            ("directory", summary.dir.clone()),
            (
                "entries",
                format!("{} [{}, {})", summary.end - summary.start, summary.start, summary.end),
            ),
            ("checkpoint size", summary.tree_size.to_string()),
        ]),
    }
}

/// `crl` (its summary).
pub fn crl(summary: &CrlSummary, format: Format) -> String {
    match format {
        Format::Json => json_text(&json!({
            "crl_number": summary.crl_number,
            "this_update": summary.this_update,
            "next_update": summary.next_update,
            "revoked_count": summary.revoked_count,
            "der_bytes": summary.der_bytes,
            "out": summary.out,
        })),
        Format::Table => {
            let mut pairs = vec![
                ("CRL number", summary.crl_number.to_string()),
                ("this update", summary.this_update.clone()),
                ("next update", summary.next_update.clone()),
                ("revoked", summary.revoked_count.to_string()),
                ("DER bytes", summary.der_bytes.to_string()),
            ];
            if let Some(out) = &summary.out {
                pairs.push(("written to", out.clone()));
            }
            fields(&pairs)
        }
    }
}

/// The CRL as PEM (`X509 CRL`).
pub fn crl_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("X509 CRL", der.to_vec()))
}

/// A path for output.
pub fn display_path(path: &Path) -> String {
    path.display().to_string()
}
