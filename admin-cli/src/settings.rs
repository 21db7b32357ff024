//! Connection settings: each from its flag, else its environment variable, else the env file
//! (`--env-file`, KEY=VALUE lines), else the default; checked before any connection is made.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::exit::Failure;

/// The endpoint when none is given.
pub const DEFAULT_ENDPOINT: &str = "https://127.0.0.1:50051";

/// The variables an env file (and the environment) may set.
pub const ENDPOINT_VARIABLE: &str = "E2EE_CA_ENDPOINT";
/// See `ENDPOINT_VARIABLE`.
pub const CA_CERT_VARIABLE: &str = "E2EE_CA_CACERT";
/// See `ENDPOINT_VARIABLE`.
pub const CERT_VARIABLE: &str = "E2EE_CA_CERT";
/// See `ENDPOINT_VARIABLE`.
pub const KEY_VARIABLE: &str = "E2EE_CA_KEY";
const KNOWN_VARIABLES: [&str; 4] = [ENDPOINT_VARIABLE, CA_CERT_VARIABLE, CERT_VARIABLE, KEY_VARIABLE];

/// What the flags said (each `None` when not given).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionFlags {
    /// `--endpoint`.
    pub endpoint: Option<String>,
    /// `--ca-cert`.
    pub ca_cert: Option<PathBuf>,
    /// `--cert`.
    pub cert: Option<PathBuf>,
    /// `--key`.
    pub key: Option<PathBuf>,
    /// `--env-file`.
    pub env_file: Option<PathBuf>,
    /// `--plaintext`.
    pub plaintext: bool,
}

/// How to reach the CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    /// http://, only with `--plaintext` (a dev server).
    Plaintext {
        /// The endpoint.
        endpoint: String,
    },
    /// https://, verifying the server against `ca_cert`, presenting `identity` if given.
    Tls {
        /// The endpoint.
        endpoint: String,
        /// PEM file of the CA that issued the server's certificate.
        ca_cert: PathBuf,
        /// The admin's client certificate and key (PEM files); `None` connects without one.
        identity: Option<(PathBuf, PathBuf)>,
    },
}

impl Connection {
    /// The endpoint URL.
    pub fn endpoint(&self) -> &str {
        match self {
            Connection::Plaintext { endpoint } | Connection::Tls { endpoint, .. } => endpoint,
        }
    }
}

/// Parses an env file: `KEY=VALUE` per line; blank lines and lines starting with `#` are skipped,
/// an `export ` prefix is allowed, and a value may be wrapped in matching single or double quotes.
/// Keys other than `E2EE_CA_*` are ignored (the file may be shared with other tools); an unknown
/// `E2EE_CA_*` key, a line without `=`, an empty key or a repeated key is an error naming the line.
pub fn parse_env_file(path: &Path, text: &str) -> Result<BTreeMap<String, String>, Failure> {
    let mut values = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let number = number + 1;
        let at = || format!("{}:{number}", path.display());
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let Some((key, value)) = line.split_once('=') else {
            return Err(Failure::usage(format!("{}: expected KEY=VALUE, found {line:?}", at())));
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Failure::usage(format!("{}: {key:?} is not a variable name", at())));
        }
        let value = unquote(value.trim()).ok_or_else(|| Failure::usage(format!("{}: unbalanced quotes", at())))?;
        if !key.starts_with("E2EE_CA_") {
            continue;
        }
        if !KNOWN_VARIABLES.contains(&key) {
            return Err(Failure::usage(format!(
                "{}: unknown variable {key} (known: {})",
                at(),
                KNOWN_VARIABLES.join(", ")
            )));
        }
        if values.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(Failure::usage(format!("{}: {key} is set twice", at())));
        }
    }
    Ok(values)
}

/// `value` without one pair of matching surrounding quotes; `None` for a lone opening quote.
fn unquote(value: &str) -> Option<&str> {
    for quote in ['"', '\''] {
        if let Some(rest) = value.strip_prefix(quote) {
            return rest.strip_suffix(quote);
        }
    }
    Some(value)
}

/// Resolves the connection: flag, else `environment(NAME)`, else the env file, else the default;
/// then checks that the combination can work.
pub fn resolve(flags: &ConnectionFlags, environment: &dyn Fn(&str) -> Option<String>) -> Result<Connection, Failure> {
    let file = match &flags.env_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|error| Failure::usage(format!("cannot read env file {}: {error}", path.display())))?;
            parse_env_file(path, &text)?
        }
        None => BTreeMap::new(),
    };
    let pick = |flag: Option<String>, variable: &str| {
        flag.or_else(|| environment(variable).filter(|value| !value.is_empty()))
            .or_else(|| file.get(variable).cloned())
    };
    let path = |flag: &Option<PathBuf>| flag.as_ref().map(|path| path.display().to_string());
    let endpoint = pick(flags.endpoint.clone(), ENDPOINT_VARIABLE).unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
    let ca_cert = pick(path(&flags.ca_cert), CA_CERT_VARIABLE).map(PathBuf::from);
    let cert = pick(path(&flags.cert), CERT_VARIABLE).map(PathBuf::from);
    let key = pick(path(&flags.key), KEY_VARIABLE).map(PathBuf::from);

    if let Some(rest) = endpoint.strip_prefix("http://") {
        if !flags.plaintext {
            return Err(Failure::usage(format!(
                "{endpoint} is not TLS: pass --plaintext to talk to a plaintext dev server"
            )));
        }
        if rest.is_empty() {
            return Err(Failure::usage(format!("{endpoint} names no host")));
        }
        return Ok(Connection::Plaintext { endpoint });
    }
    let Some(rest) = endpoint.strip_prefix("https://") else {
        return Err(Failure::usage(format!(
            "--endpoint must start with https:// (or http:// with --plaintext), not {endpoint:?}"
        )));
    };
    if rest.is_empty() {
        return Err(Failure::usage(format!("{endpoint} names no host")));
    }
    if flags.plaintext {
        return Err(Failure::usage(format!(
            "--plaintext needs an http:// endpoint, not {endpoint}"
        )));
    }
    let ca_cert = ca_cert.ok_or_else(|| {
        Failure::usage(format!(
            "{endpoint} needs --ca-cert ({CA_CERT_VARIABLE}): the CA certificate that issued the server's"
        ))
    })?;
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => return Err(Failure::usage(format!("--cert needs --key ({KEY_VARIABLE})"))),
        (None, Some(_)) => return Err(Failure::usage(format!("--key needs --cert ({CERT_VARIABLE})"))),
    };
    Ok(Connection::Tls {
        endpoint,
        ca_cert,
        identity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BTreeMap<String, String>, String> {
        parse_env_file(Path::new("admin.env"), text).map_err(|failure| failure.message)
    }

    #[test]
    fn an_env_file_sets_known_variables_and_skips_comments_blanks_and_other_tools_keys() {
        let values = parse(
            "# the admin's workstation\n\n\
             E2EE_CA_ENDPOINT=https://ca.example:50051\n\
             export E2EE_CA_CACERT = \"/etc/e2ee-ca/ca.pem\"\n\
             E2EE_CA_CERT='alice.pem'\n\
             E2EE_CA_KEY=alice-key.pem\n\
             OTHER_TOOL=x=y\n",
        )
        .expect("parses");
        assert_eq!(
            values.into_iter().collect::<Vec<_>>(),
            vec![
                ("E2EE_CA_CACERT".to_owned(), "/etc/e2ee-ca/ca.pem".to_owned()),
                ("E2EE_CA_CERT".to_owned(), "alice.pem".to_owned()),
                ("E2EE_CA_ENDPOINT".to_owned(), "https://ca.example:50051".to_owned()),
                ("E2EE_CA_KEY".to_owned(), "alice-key.pem".to_owned()),
            ]
        );
    }

    #[test]
    fn a_bad_env_file_line_is_an_error_naming_the_file_and_line() {
        for (text, expected) in [
            (
                "E2EE_CA_ENDPOINT=x\nno equals sign\n",
                "admin.env:2: expected KEY=VALUE",
            ),
            ("=value\n", "admin.env:1: \"\" is not a variable name"),
            ("MY KEY=value\n", "admin.env:1: \"MY KEY\" is not a variable name"),
            ("\n\nE2EE_CA_CERT=\"unterminated\n", "admin.env:3: unbalanced quotes"),
            ("E2EE_CA_PIN=1234\n", "admin.env:1: unknown variable E2EE_CA_PIN"),
            (
                "E2EE_CA_KEY=a\nE2EE_CA_KEY=b\n",
                "admin.env:2: E2EE_CA_KEY is set twice",
            ),
        ] {
            let error = parse(text).expect_err(text);
            assert!(error.starts_with(&format!("USAGE: {expected}")), "{text:?}: {error}");
        }
    }

    fn flags() -> ConnectionFlags {
        ConnectionFlags::default()
    }

    fn nothing(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn a_flag_wins_over_the_environment_which_wins_over_the_env_file() {
        let directory = tempfile::tempdir().expect("tempdir");
        let env_file = directory.path().join("admin.env");
        std::fs::write(
            &env_file,
            "E2EE_CA_ENDPOINT=https://from-file:1\nE2EE_CA_CACERT=file-ca.pem\nE2EE_CA_CERT=file.pem\nE2EE_CA_KEY=file-key.pem\n",
        )
        .expect("write");
        let environment = |name: &str| (name == CA_CERT_VARIABLE).then(|| "env-ca.pem".to_owned());
        let connection = resolve(
            &ConnectionFlags {
                endpoint: Some("https://from-flag:2".to_owned()),
                env_file: Some(env_file),
                ..flags()
            },
            &environment,
        )
        .expect("resolves");
        assert_eq!(
            connection,
            Connection::Tls {
                endpoint: "https://from-flag:2".to_owned(),
                ca_cert: PathBuf::from("env-ca.pem"),
                identity: Some((PathBuf::from("file.pem"), PathBuf::from("file-key.pem"))),
            }
        );
    }

    #[test]
    fn the_default_endpoint_is_local_tls() {
        let connection = resolve(
            &ConnectionFlags {
                ca_cert: Some("ca.pem".into()),
                ..flags()
            },
            &nothing,
        )
        .expect("resolves");
        assert_eq!(connection.endpoint(), DEFAULT_ENDPOINT);
        let plaintext = resolve(
            &ConnectionFlags {
                endpoint: Some("http://127.0.0.1:1".to_owned()),
                plaintext: true,
                ..flags()
            },
            &nothing,
        );
        assert!(matches!(plaintext, Ok(Connection::Plaintext { .. })));
    }

    #[test]
    fn connection_settings_that_cannot_work_are_usage_errors() {
        let cases = [
            (
                ConnectionFlags {
                    endpoint: Some("http://127.0.0.1:1".to_owned()),
                    ..flags()
                },
                "is not TLS: pass --plaintext",
            ),
            (
                ConnectionFlags {
                    plaintext: true,
                    ca_cert: Some("ca.pem".into()),
                    ..flags()
                },
                "--plaintext needs an http:// endpoint",
            ),
            (
                ConnectionFlags {
                    endpoint: Some("127.0.0.1:50051".to_owned()),
                    ..flags()
                },
                "must start with https://",
            ),
            (
                ConnectionFlags {
                    endpoint: Some("https://".to_owned()),
                    ..flags()
                },
                "names no host",
            ),
            (flags(), "needs --ca-cert"),
            (
                ConnectionFlags {
                    ca_cert: Some("ca.pem".into()),
                    cert: Some("alice.pem".into()),
                    ..flags()
                },
                "--cert needs --key",
            ),
            (
                ConnectionFlags {
                    ca_cert: Some("ca.pem".into()),
                    key: Some("alice-key.pem".into()),
                    ..flags()
                },
                "--key needs --cert",
            ),
            (
                ConnectionFlags {
                    env_file: Some("/nonexistent/admin.env".into()),
                    ..flags()
                },
                "cannot read env file /nonexistent/admin.env",
            ),
        ];
        for (flags, expected) in cases {
            let failure = resolve(&flags, &nothing).expect_err(expected);
            assert_eq!(failure.exit, crate::exit::Exit::Usage);
            assert!(failure.message.contains(expected), "{expected}: {}", failure.message);
        }
    }
}
