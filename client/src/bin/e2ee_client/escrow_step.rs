//! The escrow step of `e2ee-client` (`escrow`, and the end of `enroll`): the recovery-key warning on stderr, the
//! user's confirmation on stdin (or `--yes`), and the deposit; a declined notice is its own error and exit code.

use std::io::BufRead;
use std::path::Path;

use anyhow::Context;
use e2ee_client::protocol::folder::Account;
use e2ee_client::recovery::{self, EscrowStatus, RecoveryAcknowledgements, RecoveryError};
use e2ee_client::transport::{CaInfo, GrpcTransport};

use crate::device::RECOVERY_FILE;

/// The exit code when the user declines the recovery-key notice (nothing was deposited).
pub(crate) const DECLINED_EXIT_CODE: u8 = 3;

/// The user declined the recovery-key notice: nothing was recorded or deposited.
#[derive(Debug, thiserror::Error)]
#[error("the recovery-key notice was declined: nothing was deposited (run `escrow` to see it again)")]
pub(crate) struct Declined;

/// How a notice gets its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Confirmation {
    /// Ask on stdin.
    Ask,
    /// `--yes`: the warning is still printed, and taken as confirmed.
    Given,
}

/// Where the step runs, which decides what is said when there is nothing to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// At the end of `enroll`: silent when the CA has no recovery key.
    AfterEnrollment,
    /// The `escrow` command: says so when the CA has no recovery key.
    Command,
}

/// Reads the CA's recovery key, shows its notice when this device has not acknowledged it, and deposits the key
/// once acknowledged. A deposit refused as stale is reported, and the recovery key read once more (a changed key is
/// then a new notice).
pub(crate) async fn run(
    transport: &mut GrpcTransport,
    dir: &Path,
    account: &Account,
    enrolled: &CaInfo,
    confirmation: Confirmation,
    step: Step,
) -> anyhow::Result<()> {
    let mut acknowledgements = RecoveryAcknowledgements::open(&dir.join(RECOVERY_FILE))?;
    let mut attempts_left = 2;
    loop {
        attempts_left -= 1;
        let status = recovery::prepare_escrow(transport, enrolled, &acknowledgements)
            .await
            .context("cannot read the CA's recovery key")?;
        let acknowledged = match status {
            EscrowStatus::Disabled => {
                if step == Step::Command {
                    println!("the CA has no recovery key: there is nothing to deposit");
                }
                return Ok(());
            }
            EscrowStatus::DisabledSinceAcknowledged { fingerprint } => {
                eprintln!(
                    "note: the recovery key {fingerprint} acknowledged on this device is no longer enabled on the CA; \
                     it accepts no deposits, but keeps earlier ones, which the officers can still release"
                );
                return Ok(());
            }
            EscrowStatus::Notice(notice) => {
                eprint!(
                    "{}",
                    warning_text(notice.fingerprint(), notice.enabled_since(), notice.replaces())
                );
                let confirmed = match confirmation {
                    Confirmation::Given => {
                        eprintln!("confirmed with --yes");
                        true
                    }
                    Confirmation::Ask => {
                        eprint!("Deposit your private key for recovery by the officers? Type yes to confirm: ");
                        confirmed(&mut std::io::stdin().lock()).context("cannot read the answer")?
                    }
                };
                if !confirmed {
                    return Err(Declined.into());
                }
                notice.acknowledge(&mut acknowledgements)?
            }
            EscrowStatus::Acknowledged(acknowledged) => {
                eprintln!(
                    "the recovery key {} (enabled since {}) was acknowledged on this device before",
                    acknowledged.fingerprint(),
                    acknowledged.enabled_since()
                );
                acknowledged
            }
            other => anyhow::bail!("unexpected escrow status {other:?}"),
        };
        match recovery::deposit_escrow(transport, account, acknowledged).await {
            Ok(deposit) => {
                println!(
                    "deposited the private key of {:?} on the CA, sealed to recovery key {}",
                    account.user_id, deposit.fingerprint
                );
                if let Some(index) = deposit.log_index {
                    println!("audit log entry: {index}");
                }
                return Ok(());
            }
            Err(RecoveryError::Stale(message)) if attempts_left > 0 => {
                eprintln!("the CA refused the deposit: {message}; reading its recovery key again");
            }
            Err(error) => return Err(error).context("the escrow deposit failed"),
        }
    }
}

/// The warning shown before a deposit to a recovery key this device has not acknowledged.
fn warning_text(fingerprint: &str, enabled_since: &str, replaces: Option<&str>) -> String {
    let mut text = String::from(
        "\nWARNING: your organisation has an offline recovery key.\n\
         An offline recovery key held by your organisation's officers can recover your private key. If you\n\
         confirm, your private key is sealed to that recovery key and deposited on the CA; once two CA\n\
         administrators approve a release, the officers can open the deposit and read everything encrypted to\n\
         you, including files others share with you.\n",
    );
    text.push_str(&format!("  recovery key SHA-256: {fingerprint}\n"));
    text.push_str(&format!("  enabled since:        {enabled_since}\n"));
    if let Some(previous) = replaces {
        text.push_str(&format!(
            "  it replaces the recovery key {previous} acknowledged on this device before\n"
        ));
    }
    text.push_str("Check the fingerprint with your organisation, through another channel, before you confirm.\n");
    text
}

/// Reads one line: `y` or `yes` (any case, surrounding spaces ignored) confirms; anything else, or end of input,
/// declines.
fn confirmed(input: &mut impl BufRead) -> std::io::Result<bool> {
    let mut answer = String::new();
    input.read_line(&mut answer)?;
    Ok(matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_y_or_yes_confirms() {
        for (answer, expected) in [
            ("yes\n", true),
            ("y\n", true),
            ("  YES \n", true),
            ("Y", true),
            ("no\n", false),
            ("\n", false),
            ("", false),
            ("yes please\n", false),
            ("ja\n", false),
        ] {
            assert_eq!(confirmed(&mut answer.as_bytes()).expect("read"), expected, "{answer:?}");
        }
    }

    #[test]
    fn the_warning_names_the_key_its_date_and_the_key_it_replaces() {
        let fingerprint = "ab".repeat(32);
        let text = warning_text(&fingerprint, "2026-01-02T03:04:05Z", None);
        assert_eq!(
            text,
            format!(
                "\nWARNING: your organisation has an offline recovery key.\n\
                 An offline recovery key held by your organisation's officers can recover your private key. If you\n\
                 confirm, your private key is sealed to that recovery key and deposited on the CA; once two CA\n\
                 administrators approve a release, the officers can open the deposit and read everything encrypted \
                 to\n\
                 you, including files others share with you.\n  \
                 recovery key SHA-256: {fingerprint}\n  \
                 enabled since:        2026-01-02T03:04:05Z\n\
                 Check the fingerprint with your organisation, through another channel, before you confirm.\n"
            )
        );
        let previous = "cd".repeat(32);
        let text = warning_text(&fingerprint, "2026-01-02T03:04:05Z", Some(&previous));
        assert!(text.contains(&format!(
            "  it replaces the recovery key {previous} acknowledged on this device before\n"
        )));
    }
}
