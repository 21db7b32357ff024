//! Exit codes and the one-line error: what a script can branch on without parsing messages.

use std::fmt;

/// The process exit codes (documented in `--help` and the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done.
    Ok,
    /// 1: anything not listed below (INTERNAL, UNKNOWN, UNIMPLEMENTED, a local I/O error, ...).
    Other,
    /// 2: a usage error: clap's, or connection settings that cannot work (no CA certificate for
    /// https, a certificate without its key, a bad env file).
    Usage,
    /// 3: the server refused: INVALID_ARGUMENT, FAILED_PRECONDITION, ALREADY_EXISTS,
    /// PERMISSION_DENIED, UNAUTHENTICATED. Retrying the same call will not help.
    Refused,
    /// 4: NOT_FOUND.
    NotFound,
    /// 5: the CA could not be reached or could not answer now: UNAVAILABLE, DEADLINE_EXCEEDED,
    /// RESOURCE_EXHAUSTED, or the connection failed. Retry later.
    Unavailable,
}

impl Exit {
    /// The process exit status.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Other => 1,
            Exit::Usage => 2,
            Exit::Refused => 3,
            Exit::NotFound => 4,
            Exit::Unavailable => 5,
        }
    }

    /// The exit for a gRPC status code.
    pub fn of_status(code: tonic::Code) -> Exit {
        use tonic::Code;
        match code {
            Code::Ok => Exit::Ok,
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated => Exit::Refused,
            Code::NotFound => Exit::NotFound,
            Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => Exit::Unavailable,
            Code::Cancelled
            | Code::Unknown
            | Code::OutOfRange
            | Code::Unimplemented
            | Code::Internal
            | Code::DataLoss
            | Code::Aborted => Exit::Other,
        }
    }
}

/// The exit-code table for `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  ok
  1  anything else (INTERNAL, UNIMPLEMENTED, a local file error, ...)
  2  usage error (bad flags, unusable connection settings, a bad env file)
  3  refused: INVALID_ARGUMENT, FAILED_PRECONDITION, ALREADY_EXISTS, PERMISSION_DENIED, UNAUTHENTICATED
  4  not found: NOT_FOUND
  5  unavailable: UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, or no connection; retry later
Errors go to stderr as one line: `error: CODE: message`.";

/// Why a command failed: the exit code and the one line for stderr.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub exit: Exit,
    /// `CODE: message`, one line.
    pub message: String,
}

impl Failure {
    /// A failure with `exit` and `code_name: detail`.
    pub fn new(exit: Exit, code_name: &str, detail: impl fmt::Display) -> Failure {
        Failure {
            exit,
            message: one_line(&format!("{code_name}: {detail}")),
        }
    }

    /// A usage error (exit 2).
    pub fn usage(detail: impl fmt::Display) -> Failure {
        Failure::new(Exit::Usage, "USAGE", detail)
    }

    /// A local error that is not the server's (exit 1), e.g. a file that cannot be written.
    pub fn local(error: &anyhow::Error) -> Failure {
        Failure::new(Exit::Other, "LOCAL", format!("{error:#}"))
    }

    /// The connection failed (exit 5).
    pub fn connection(endpoint: &str, error: &dyn std::error::Error) -> Failure {
        let mut detail = format!("cannot connect to {endpoint}: {error}");
        let mut source = error.source();
        while let Some(cause) = source {
            detail.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        Failure::new(Exit::Unavailable, "UNAVAILABLE", detail)
    }
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Failure {
        let message = if status.message().is_empty() {
            "(no message)"
        } else {
            status.message()
        };
        Failure::new(Exit::of_status(status.code()), code_name(status.code()), message)
    }
}

/// The canonical gRPC name of `code` (as in grpc/status.proto).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `text` on one line: line breaks become "; ".
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn every_grpc_code_maps_to_the_documented_exit() {
        let expected = [
            (Code::Ok, 0),
            (Code::Cancelled, 1),
            (Code::Unknown, 1),
            (Code::InvalidArgument, 3),
            (Code::DeadlineExceeded, 5),
            (Code::NotFound, 4),
            (Code::AlreadyExists, 3),
            (Code::PermissionDenied, 3),
            (Code::ResourceExhausted, 5),
            (Code::FailedPrecondition, 3),
            (Code::Aborted, 1),
            (Code::OutOfRange, 1),
            (Code::Unimplemented, 1),
            (Code::Internal, 1),
            (Code::Unavailable, 5),
            (Code::DataLoss, 1),
            (Code::Unauthenticated, 3),
        ];
        for (code, exit) in expected {
            assert_eq!(Exit::of_status(code).code(), exit, "{code:?}");
            // Every name is the canonical one, e.g. PERMISSION_DENIED for PermissionDenied.
            let name = code_name(code);
            let canonical: String = format!("{code:?}")
                .chars()
                .enumerate()
                .flat_map(|(index, character)| {
                    let separator = (index > 0 && character.is_uppercase()).then_some('_');
                    separator.into_iter().chain(character.to_uppercase())
                })
                .collect();
            assert_eq!(name, canonical);
        }
    }

    #[test]
    fn a_status_becomes_one_line_naming_its_code_and_the_servers_message() {
        let failure = Failure::from(tonic::Status::permission_denied(
            "the approver must be another admin\nthan the requester",
        ));
        assert_eq!(failure.exit, Exit::Refused);
        assert_eq!(
            failure.message,
            "PERMISSION_DENIED: the approver must be another admin; than the requester"
        );
        let failure = Failure::from(tonic::Status::unavailable(""));
        assert_eq!(
            (failure.exit.code(), failure.message.as_str()),
            (5, "UNAVAILABLE: (no message)")
        );
    }

    #[test]
    fn the_help_table_lists_every_exit_code() {
        for exit in [
            Exit::Ok,
            Exit::Other,
            Exit::Usage,
            Exit::Refused,
            Exit::NotFound,
            Exit::Unavailable,
        ] {
            assert!(EXIT_CODES_HELP.contains(&format!("\n  {}  ", exit.code())), "{exit:?}");
        }
    }
}
