//! The gRPC side: a channel from the resolved settings, then one call (or a few, for `--all` and
//! `log export`) per command, rendered by `render`; and the files the answers are written to.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Duration;

use e2ee_ca_proto::v1 as pb;
use e2ee_ca_proto::v1::admin_client::AdminClient;
use e2ee_ca_proto::v1::identity_client::IdentityClient;
use e2ee_ca_proto::v1::transparency_client::TransparencyClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::cli::{
    self, Command, CrlArgs, EscrowCommand, IdentityCommand, LogCommand, Reason, RecoveryCommand, RequestCommand,
    ResetCommand, ResetRevocationReason,
};
use crate::exit::{Exit, Failure};
use crate::render::{self, Format};
use crate::settings::Connection;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The export directory's files and first line: the format of ca-service's
/// `transparency::export`, which `ca-service audit verify` reads (tests/admin_cli.rs runs it on
/// what this writes). Kept here because the CLI does not depend on ca-service.
const ENTRIES_FILE: &str = "entries.bin";
const CHECKPOINT_FILE: &str = "checkpoint.txt";
const VKEY_FILE: &str = "vkey.txt";
const ENTRIES_MAGIC: &[u8] = b"e2ee-ca log entries v1\n";

/// Opens a channel to the CA as the settings say.
pub async fn connect(connection: &Connection) -> Result<Channel, Failure> {
    let endpoint_url = connection.endpoint().to_owned();
    let endpoint = Endpoint::from_shared(endpoint_url.clone())
        .map_err(|error| Failure::usage(format!("--endpoint {endpoint_url:?} is not a URL: {error}")))?
        .connect_timeout(CONNECT_TIMEOUT);
    let endpoint = match connection {
        Connection::Plaintext { .. } => endpoint,
        Connection::Tls { ca_cert, identity, .. } => {
            let read = |flag: &str, path: &Path| {
                std::fs::read(path)
                    .map_err(|error| Failure::usage(format!("cannot read {flag} {}: {error}", path.display())))
            };
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("--ca-cert", ca_cert)?));
            if let Some((cert, key)) = identity {
                tls = tls.identity(Identity::from_pem(read("--cert", cert)?, read("--key", key)?));
            }
            endpoint
                .tls_config(tls)
                .map_err(|error| Failure::usage(format!("unusable TLS settings: {error}")))?
        }
    };
    endpoint
        .connect()
        .await
        .map_err(|error| Failure::connection(&endpoint_url, &error))
}

/// What a command prints on stdout.
pub type Output = String;

/// Runs `command` over `channel`.
pub async fn execute(channel: Channel, command: &Command, format: Format) -> Result<Output, Failure> {
    match command {
        Command::Identity(IdentityCommand::Show { user }) => {
            let response = AdminClient::new(channel)
                .get_identity(pb::GetIdentityRequest { user_id: user.clone() })
                .await?
                .into_inner();
            Ok(render::identity(&response, format))
        }
        Command::Identity(IdentityCommand::List {
            page_token,
            page_size,
            all,
        }) => {
            let mut client = AdminClient::new(channel);
            let mut token = page_token.clone().unwrap_or_default();
            let mut identities = Vec::new();
            loop {
                let page = client
                    .list_identities(pb::ListIdentitiesRequest {
                        page_token: token,
                        page_size: page_size.unwrap_or(0),
                    })
                    .await?
                    .into_inner();
                identities.extend(page.identities);
                token = page.next_page_token;
                if !all || token.is_empty() {
                    break;
                }
            }
            Ok(render::identities(&identities, &token, format))
        }
        Command::Revoke(revoke) => {
            let target = match (&revoke.serial, &revoke.user) {
                (Some(serial), _) => pb::revoke_certificate_request::Target::SerialHex(serial.clone()),
                (None, Some(user)) => pb::revoke_certificate_request::Target::UserId(user.clone()),
                // clap's required group: one of them is there.
                (None, None) => return Err(Failure::usage("give --serial or --user")),
            };
            let response = AdminClient::new(channel)
                .revoke_certificate(pb::RevokeCertificateRequest {
                    target: Some(target),
                    reason: proto_reason(revoke.reason).into(),
                })
                .await?
                .into_inner();
            Ok(render::revoked(&response, format))
        }
        Command::Reset(ResetCommand::Request {
            user,
            reason,
            revocation_reason,
        }) => {
            let revocation_reason = match revocation_reason {
                None => pb::RevocationReason::Unspecified,
                Some(ResetRevocationReason::KeyCompromise) => pb::RevocationReason::KeyCompromise,
                Some(ResetRevocationReason::Superseded) => pb::RevocationReason::Superseded,
            };
            let response = AdminClient::new(channel)
                .request_identity_reset(pb::RequestIdentityResetRequest {
                    user_id: user.clone(),
                    reason: reason.clone(),
                    revocation_reason: revocation_reason.into(),
                })
                .await?
                .into_inner();
            Ok(render::pending(&response.request.unwrap_or_default(), format))
        }
        Command::Request(RequestCommand::Approve { request_id }) => {
            let response = AdminClient::new(channel)
                .approve_request(pb::ApproveRequestRequest {
                    request_id: request_id.clone(),
                })
                .await?
                .into_inner();
            Ok(render::approved(&response.request.unwrap_or_default(), format))
        }
        Command::Request(RequestCommand::List) => {
            let response = AdminClient::new(channel)
                .list_requests(pb::ListRequestsRequest {})
                .await?
                .into_inner();
            Ok(render::requests(&response.requests, format))
        }
        Command::Recovery(RecoveryCommand::Register(register)) => {
            let (public_key, ceremony_reference) = match (&register.request, &register.public_key, &register.reference)
            {
                (Some(request), _, _) => (&request.public_key, &request.ceremony_reference),
                (None, Some(public_key), Some(reference)) => (public_key, reference),
                // clap's required group and `requires`: one of the two forms is there.
                _ => return Err(Failure::usage("give --public-key with --reference, or --request")),
            };
            let response = AdminClient::new(channel)
                .register_recovery_key(pb::RegisterRecoveryKeyRequest {
                    public_key_pem: public_key.as_str().to_owned(),
                    ceremony_reference: ceremony_reference.clone(),
                    reason: register.reason.clone(),
                })
                .await?
                .into_inner();
            Ok(render::pending(&response.request.unwrap_or_default(), format))
        }
        Command::Recovery(RecoveryCommand::Disable { reason }) => {
            let response = AdminClient::new(channel)
                .disable_recovery_key(pb::DisableRecoveryKeyRequest { reason: reason.clone() })
                .await?
                .into_inner();
            Ok(render::pending(&response.request.unwrap_or_default(), format))
        }
        Command::Recovery(RecoveryCommand::Status { certificate_out }) => {
            recovery_status(channel, certificate_out.as_deref(), format).await
        }
        Command::Escrow(EscrowCommand::Request { user, reason }) => {
            let response = AdminClient::new(channel)
                .request_escrow_release(pb::RequestEscrowReleaseRequest {
                    user_id: user.clone(),
                    reason: reason.clone(),
                })
                .await?
                .into_inner();
            Ok(render::pending(&response.request.unwrap_or_default(), format))
        }
        Command::Escrow(EscrowCommand::Get { request, out }) => escrow(channel, request, out, format).await,
        Command::Checkpoint => {
            let response = TransparencyClient::new(channel)
                .get_checkpoint(pb::GetCheckpointRequest {})
                .await?
                .into_inner();
            Ok(render::checkpoint(&response, format))
        }
        Command::Log(LogCommand::Export { start, end, out }) => {
            let summary = export(channel, *start, *end, out).await?;
            Ok(render::export(&summary, format))
        }
        Command::Crl(arguments) => crl(channel, arguments, format).await,
    }
}

fn proto_reason(reason: Reason) -> pb::RevocationReason {
    match reason {
        Reason::KeyCompromise => pb::RevocationReason::KeyCompromise,
        Reason::AffiliationChanged => pb::RevocationReason::AffiliationChanged,
        Reason::Superseded => pb::RevocationReason::Superseded,
        Reason::CessationOfOperation => pb::RevocationReason::CessationOfOperation,
        Reason::PrivilegeWithdrawn => pb::RevocationReason::PrivilegeWithdrawn,
    }
}

async fn crl(channel: Channel, arguments: &CrlArgs, format: Format) -> Result<Output, Failure> {
    let response = IdentityClient::new(channel)
        .get_crl(pb::GetCrlRequest {})
        .await?
        .into_inner();
    let bytes = if arguments.pem {
        render::crl_pem(&response.crl_der).into_bytes()
    } else {
        response.crl_der.clone()
    };
    let Some(out) = &arguments.out else {
        if arguments.pem {
            return Ok(render::crl_pem(&response.crl_der));
        }
        return Ok(render::crl(&summary(&response, None), format));
    };
    std::fs::write(out, bytes)
        .map_err(|error| Failure::local(&anyhow::anyhow!("cannot write {}: {error}", out.display())))?;
    Ok(render::crl(
        &summary(&response, Some(render::display_path(out))),
        format,
    ))
}

async fn recovery_status(channel: Channel, certificate_out: Option<&Path>, format: Format) -> Result<Output, Failure> {
    let status = IdentityClient::new(channel)
        .get_ca_info(pb::GetCaInfoRequest {})
        .await?
        .into_inner()
        .recovery
        .unwrap_or_default();
    let Some(out) = certificate_out else {
        return Ok(render::recovery(&status, None, format));
    };
    if !status.enabled || status.certificate_pem.is_empty() {
        return Err(Failure::new(
            Exit::NotFound,
            "NOT_FOUND",
            "recovery is disabled: there is no recovery-key certificate to write",
        ));
    }
    std::fs::write(out, status.certificate_pem.as_bytes())
        .map_err(|error| Failure::local(&anyhow::anyhow!("cannot write {}: {error}", out.display())))?;
    Ok(render::recovery(&status, Some(&render::display_path(out)), format))
}

/// `escrow get`. The CA returns the blob once (the call uses the release up), so its file is
/// created first: a file that exists or cannot be created is refused before the call, and only a
/// failed write after it (a full disk) can lose the blob, which then needs a new release.
async fn escrow(channel: Channel, request_id: &str, out: &Path, format: Format) -> Result<Output, Failure> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    // Owner-only, like a key file: the blob is sealed, but it is what the recovery key opens.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(out).map_err(|error| {
        if error.kind() == std::io::ErrorKind::AlreadyExists {
            Failure::usage(cli::exists_message(out))
        } else {
            Failure::local(&anyhow::anyhow!("cannot create {}: {error}", out.display()))
        }
    })?;
    let fetched = AdminClient::new(channel)
        .get_escrow(pb::GetEscrowRequest {
            request_id: request_id.to_owned(),
        })
        .await;
    let response = match fetched {
        Ok(response) => response.into_inner(),
        Err(status) => {
            // No blob came: the file created above is empty, so it goes.
            drop(file);
            let _ = std::fs::remove_file(out);
            return Err(status.into());
        }
    };
    if let Err(error) = file.write_all(&response.escrow_blob).and_then(|()| file.sync_all()) {
        drop(file);
        let _ = std::fs::remove_file(out);
        return Err(Failure::local(&anyhow::anyhow!(
            "cannot write {}: {error}; the release is used up: open a new one (escrow request)",
            out.display()
        )));
    }
    Ok(render::escrow(&response, &render::display_path(out), format))
}

fn summary(response: &pb::GetCrlResponse, out: Option<String>) -> render::CrlSummary {
    render::CrlSummary {
        crl_number: response.crl_number,
        this_update: response.this_update.clone(),
        next_update: response.next_update.clone(),
        revoked_count: response.revoked_count,
        der_bytes: response.crl_der.len(),
        out,
    }
}

/// `log export`: the latest checkpoint first, so that the entries written are the ones it covers
/// (by default all of them), then the entries streamed in order, each checked to follow the last.
async fn export(channel: Channel, start: u64, end: Option<u64>, dir: &Path) -> Result<render::ExportSummary, Failure> {
    let local = |what: &str, path: &Path, error: std::io::Error| {
        Failure::local(&anyhow::anyhow!("cannot {what} {}: {error}", path.display()))
    };
    let mut transparency = TransparencyClient::new(channel.clone());
    let checkpoint = transparency
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await?
        .into_inner();
    let end = end.unwrap_or(checkpoint.tree_size);
    if start > end {
        return Err(Failure::usage(format!("--start {start} is past --end {end}")));
    }
    std::fs::create_dir_all(dir).map_err(|error| local("create", dir, error))?;
    // Written aside and renamed into place, so that a refused or broken stream leaves no partial
    // entries file next to an earlier export's checkpoint.
    let partial = dir.join(format!("{ENTRIES_FILE}.partial"));
    let written = write_entries(&mut transparency, start, end, &partial).await;
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written?;
    let entries_path = dir.join(ENTRIES_FILE);
    std::fs::rename(&partial, &entries_path).map_err(|error| local("rename into", &entries_path, error))?;
    let checkpoint_path = dir.join(CHECKPOINT_FILE);
    std::fs::write(&checkpoint_path, checkpoint.checkpoint.as_bytes())
        .map_err(|error| local("write", &checkpoint_path, error))?;
    // The verifier key is informational (audit verify trusts only the key the auditor passes).
    let info = IdentityClient::new(channel).get_ca_info(pb::GetCaInfoRequest {}).await;
    if let Some(vkey) = info
        .ok()
        .and_then(|info| info.into_inner().checkpoint_verifier_keys.into_iter().next())
    {
        let vkey_path = dir.join(VKEY_FILE);
        std::fs::write(&vkey_path, format!("{vkey}\n")).map_err(|error| local("write", &vkey_path, error))?;
    }
    Ok(render::ExportSummary {
        dir: render::display_path(dir),
        start,
        end,
        tree_size: checkpoint.tree_size,
    })
}

/// Streams entries [start, end) into `path` in the export format, each checked to follow the last.
async fn write_entries(
    transparency: &mut TransparencyClient<Channel>,
    start: u64,
    end: u64,
    path: &Path,
) -> Result<(), Failure> {
    let local = |what: &str, error: std::io::Error| {
        Failure::local(&anyhow::anyhow!("cannot {what} {}: {error}", path.display()))
    };
    let file = std::fs::File::create(path).map_err(|error| local("create", error))?;
    let mut writer = BufWriter::new(file);
    writer.write_all(ENTRIES_MAGIC).map_err(|error| local("write", error))?;
    let mut next = start;
    if start < end {
        let mut stream = transparency
            .export_entries(pb::ExportEntriesRequest { start, end })
            .await?
            .into_inner();
        while let Some(message) = stream.message().await? {
            if message.start != next {
                return Err(Failure::new(
                    Exit::Other,
                    "DATA_LOSS",
                    format!("the server sent entries from {} where {next} was due", message.start),
                ));
            }
            for entry in message.entries {
                let length = u32::try_from(entry.len())
                    .map_err(|_| Failure::new(Exit::Other, "DATA_LOSS", format!("entry {next} is over 4 GiB")))?;
                writer
                    .write_all(&next.to_be_bytes())
                    .and_then(|()| writer.write_all(&length.to_be_bytes()))
                    .and_then(|()| writer.write_all(&entry))
                    .map_err(|error| local("write", error))?;
                next += 1;
            }
        }
    }
    if next != end {
        return Err(Failure::new(
            Exit::Other,
            "DATA_LOSS",
            format!("the export stream ended at {next}, before {end}"),
        ));
    }
    let file = writer
        .into_inner()
        .map_err(|error| local("write", error.into_error()))?;
    file.sync_all().map_err(|error| local("write", error))
}
