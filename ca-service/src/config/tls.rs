//! `[tls]` (the server's certificate and the client CAs), `[[principals]]` (who a client
//! certificate is) and the listener rule: mTLS, or plaintext only when asked for on loopback.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::bail;
use serde::Deserialize;

use super::{ServeConfig, is_loopback, resolve};
use crate::principal::Role;

/// The TLS listener: the server's certificate and the CAs whose client certificates it accepts.
/// Client authentication is optional in the handshake (health and reflection stay reachable
/// without a certificate) but a presented certificate must chain to one of `client_ca`, or the
/// handshake fails; which RPCs a principal may call is decided per request (`api::principal`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM file: the server certificate first, then any intermediates.
    pub certificate: PathBuf,
    /// PEM file: the server certificate's private key (PKCS#8, SEC1 or PKCS#1; mode 0600). Its
    /// contents are never logged.
    pub key: PathBuf,
    /// The client CAs, at least one: `[[tls.client_ca]] name = "corp", file = "clients-ca.pem"`.
    pub client_ca: Vec<ClientCaSection>,
}

/// A CA that issues client certificates, named so that principals can refer to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCaSection {
    /// The name principals use in `client_ca` (unique).
    pub name: String,
    /// PEM file holding the CA certificate. A client certificate is matched to this CA when the
    /// CA signed it directly (client certificates under an intermediate match by fingerprint only).
    pub file: PathBuf,
}

/// A known caller: `[[principals]] name = "…", roles = [...]` and one match rule, either
/// `fingerprint_sha256`, or `client_ca` with `cn` or `san`. A certificate is matched by
/// fingerprint first, then by the `client_ca` rules in file order; the first match wins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalSection {
    /// The principal's name (unique): the actor of its audit entries and the name in logs.
    pub name: String,
    /// Its roles: `sync-server` (Identity issuance and lookups, KeyBackup), `admin` (Admin),
    /// `auditor` (Transparency `ExportEntries`). Every principal may read CA info and proofs.
    pub roles: Vec<Role>,
    /// Match rule 1: the SHA-256 of the client certificate's DER, 64 hex digits (`openssl x509
    /// -noout -fingerprint -sha256`, with or without colons).
    pub fingerprint_sha256: Option<String>,
    /// Match rule 2: the `[[tls.client_ca]]` name of the CA that issued the certificate, with
    /// `cn` or `san`.
    pub client_ca: Option<String>,
    /// With `client_ca`: the certificate's subject common name.
    pub cn: Option<String>,
    /// With `client_ca`: a DNS name, URI or email address among the certificate's subject
    /// alternative names.
    pub san: Option<String>,
}

impl PrincipalSection {
    /// The fingerprint rule as 32 bytes, if set (validated at load).
    pub fn fingerprint(&self) -> anyhow::Result<Option<[u8; 32]>> {
        let Some(text) = &self.fingerprint_sha256 else {
            return Ok(None);
        };
        let digits: String = text.chars().filter(|character| *character != ':').collect();
        let bytes = hex::decode(&digits)
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok());
        match bytes {
            Some(bytes) => Ok(Some(bytes)),
            None => bail!(
                "principal {:?}: fingerprint_sha256 must be 64 hex digits (the SHA-256 of the certificate's DER)",
                self.name
            ),
        }
    }

    fn validate(&self, tls: &TlsSection) -> anyhow::Result<()> {
        let name = &self.name;
        if name.is_empty() || name.chars().any(char::is_control) {
            bail!("a [[principals]] name must be non-empty without control characters (got {name:?})");
        }
        self.fingerprint()?;
        match (&self.fingerprint_sha256, &self.client_ca, &self.cn, &self.san) {
            (None, None, None, None) => {
                bail!("principal {name:?} has no match rule: set fingerprint_sha256, or client_ca with cn or san")
            }
            (Some(_), None, None, None) => Ok(()),
            (Some(_), _, _, _) => {
                bail!("principal {name:?}: set either fingerprint_sha256 or client_ca with cn or san, not both")
            }
            (None, None, _, _) => {
                bail!("principal {name:?}: cn and san need client_ca, the CA that issued the certificate")
            }
            (None, Some(_), None, None) => bail!("principal {name:?}: client_ca needs cn or san"),
            (None, Some(_), Some(_), Some(_)) => bail!("principal {name:?}: set cn or san, not both"),
            (None, Some(ca), cn, san) => {
                if !tls.client_ca.iter().any(|known| known.name == *ca) {
                    let known: Vec<&str> = tls.client_ca.iter().map(|known| known.name.as_str()).collect();
                    bail!(
                        "principal {name:?}: client_ca {ca:?} is not a [[tls.client_ca]] name (known: {})",
                        known.join(", ")
                    );
                }
                if cn.as_deref().or(san.as_deref()).is_some_and(str::is_empty) {
                    bail!("principal {name:?}: cn and san must not be empty");
                }
                Ok(())
            }
        }
    }
}

impl TlsSection {
    pub(super) fn resolve(&mut self, base: &Path) {
        self.certificate = resolve(base, &self.certificate);
        self.key = resolve(base, &self.key);
        for client_ca in &mut self.client_ca {
            client_ca.file = resolve(base, &client_ca.file);
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.client_ca.is_empty() {
            bail!(
                "[tls] needs at least one [[tls.client_ca]] (name, file): the CAs whose client certificates \
                 authenticate callers"
            );
        }
        let mut names = HashSet::new();
        for client_ca in &self.client_ca {
            if client_ca.name.is_empty() {
                bail!("a [[tls.client_ca]] name must not be empty");
            }
            if !names.insert(client_ca.name.as_str()) {
                bail!("[[tls.client_ca]] name {:?} is used twice", client_ca.name);
            }
        }
        Ok(())
    }
}

impl ServeConfig {
    /// Sets the listen address (`--listen`), checked like the file's.
    pub fn set_listen(&mut self, listen: SocketAddr) -> anyhow::Result<()> {
        self.listen = listen;
        self.check_listener()
    }

    /// mTLS, or plaintext only when asked for on loopback (`Service::run` checks the address
    /// actually bound again).
    pub(super) fn check_listener(&self) -> anyhow::Result<()> {
        match (&self.tls, self.allow_plaintext) {
            (Some(tls), false) => tls.validate(),
            (Some(_), true) => bail!("allow_plaintext = true contradicts [tls]: remove one of them"),
            (None, true) if is_loopback(self.listen.ip()) => Ok(()),
            (None, true) => bail!(
                "allow_plaintext = true is allowed on a loopback address only (listen = {}): configure [tls] \
                 to serve mTLS on this address, or put a TLS-terminating proxy on the same host and listen on \
                 127.0.0.1",
                self.listen
            ),
            (None, false) => bail!(
                "no [tls] section: the CA serves mTLS (set [tls] certificate, key and [[tls.client_ca]]), or \
                 plaintext behind a TLS-terminating proxy on the same host with allow_plaintext = true and a \
                 loopback listen address"
            ),
        }
    }

    pub(super) fn validate_principals(&self) -> anyhow::Result<()> {
        let Some(tls) = &self.tls else {
            if !self.principals.is_empty() {
                bail!("[[principals]] need [tls]: without client certificates nobody can be matched to them");
            }
            return Ok(());
        };
        let mut names = HashSet::new();
        for principal in &self.principals {
            principal.validate(tls)?;
            if !names.insert(principal.name.as_str()) {
                bail!("principal name {:?} is used twice", principal.name);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{VALID, load};

    /// `VALID` with mTLS instead of plaintext, two client CAs and three principals.
    fn with_tls(listen: &str) -> String {
        let tls = r#"
[tls]
certificate = "tls/server.pem"
key = "tls/server-key.pem"
[[tls.client_ca]]
name = "corp"
file = "tls/corp-ca.pem"
[[tls.client_ca]]
name = "partners"
file = "/etc/partners-ca.pem"
[[principals]]
name = "sync-1"
roles = ["sync-server"]
client_ca = "corp"
cn = "sync.corp.example"
[[principals]]
name = "alice"
roles = ["admin", "auditor"]
client_ca = "partners"
san = "alice@partners.example"
[[principals]]
name = "witness"
roles = []
fingerprint_sha256 = "AB:cd:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:01"
"#;
        format!(
            "{}{tls}",
            VALID
                .replace("allow_plaintext = true\n", "")
                .replace("127.0.0.1:50051", listen)
        )
    }

    #[test]
    fn tls_sections_resolve_paths_and_read_principals() {
        let config = load(&with_tls("0.0.0.0:50051")).expect("valid");
        let tls = config.tls.as_ref().expect("tls");
        assert!(tls.certificate.is_absolute() && tls.certificate.ends_with("tls/server.pem"));
        assert!(tls.key.is_absolute());
        assert!(tls.client_ca[0].file.is_absolute());
        assert_eq!(tls.client_ca[1].file, PathBuf::from("/etc/partners-ca.pem"));
        assert_eq!(config.principals.len(), 3);
        assert_eq!(config.principals[1].roles, [Role::Admin, Role::Auditor]);
        let fingerprint = config.principals[2].fingerprint().expect("valid").expect("set");
        assert_eq!((fingerprint[0], fingerprint[1], fingerprint[31]), (0xab, 0xcd, 0x01));
    }

    #[test]
    fn plaintext_needs_allow_plaintext_and_a_loopback_address() {
        // Allowed: mTLS anywhere; plaintext on loopback when asked for.
        load(&with_tls("0.0.0.0:50051")).expect("mTLS on any address");
        load(VALID).expect("plaintext on loopback with allow_plaintext");
        load(&VALID.replace("127.0.0.1:50051", "[::1]:50051")).expect("IPv6 loopback");
        let without_permission = VALID.replace("allow_plaintext = true\n", "");
        let cases = [
            (without_permission.clone(), "no [tls] section"),
            (
                without_permission.replace("127.0.0.1:50051", "0.0.0.0:50051"),
                "no [tls] section",
            ),
            (
                VALID.replace("127.0.0.1:50051", "10.0.0.1:50051"),
                "loopback address only",
            ),
            (
                format!("allow_plaintext = true\n{}", with_tls("127.0.0.1:1").trim_start()),
                "contradicts [tls]",
            ),
        ];
        for (text, expected) in cases {
            let error = format!("{:#}", load(&text).expect_err("must be refused"));
            assert!(error.contains(expected), "{error:?} should mention {expected:?}");
        }
        // `--listen` is checked like the file.
        let mut config = load(VALID).expect("valid");
        let error = config
            .set_listen("0.0.0.0:1".parse().expect("address"))
            .expect_err("refused");
        assert!(error.to_string().contains("loopback address only"), "{error}");
        config
            .set_listen("127.0.0.1:0".parse().expect("address"))
            .expect("loopback");
    }

    #[test]
    fn bad_tls_and_principal_sections_are_refused_with_the_reason() {
        let valid = with_tls("0.0.0.0:50051");
        let cases = [
            (
                valid.replace("[\"sync-server\"]", "[\"superuser\"]"),
                "unknown variant `superuser`",
            ),
            (
                valid.replace("name = \"alice\"", "name = \"sync-1\""),
                "\"sync-1\" is used twice",
            ),
            (valid.replace("name = \"alice\"", "name = \"\""), "must be non-empty"),
            (
                valid.replace("client_ca = \"partners\"\n", ""),
                "cn and san need client_ca",
            ),
            (
                valid.replace("san = \"alice@partners.example\"\n", ""),
                "client_ca needs cn or san",
            ),
            (
                valid.replace("san = \"alice@partners.example\"", "san = \"a\"\ncn = \"b\""),
                "cn or san, not both",
            ),
            (
                valid.replace("client_ca = \"partners\"", "client_ca = \"nobody\""),
                "\"nobody\" is not a [[tls.client_ca]] name (known: corp, partners)",
            ),
            (
                valid.replace(
                    "cn = \"sync.corp.example\"",
                    &format!(
                        "cn = \"sync.corp.example\"\nfingerprint_sha256 = \"{}\"",
                        "0".repeat(64)
                    ),
                ),
                "not both",
            ),
            (valid.replace("AB:cd:00", "zz:cd:00"), "64 hex digits"),
            (valid.replace("AB:cd:00:", ""), "64 hex digits"),
            (valid.replace("fingerprint_sha256 = ", "# "), "has no match rule"),
            (
                valid.replace("name = \"partners\"", "name = \"corp\""),
                "name \"corp\" is used twice",
            ),
            (
                valid
                    .replace(
                        "[[tls.client_ca]]\nname = \"partners\"\nfile = \"/etc/partners-ca.pem\"\n",
                        "",
                    )
                    .replace(
                        "[[tls.client_ca]]\nname = \"corp\"\nfile = \"tls/corp-ca.pem\"\n",
                        "client_ca = []\n",
                    )
                    .split("[[principals]]")
                    .next()
                    .expect("prefix")
                    .to_owned(),
                "at least one [[tls.client_ca]]",
            ),
            (
                valid.replace("key = \"tls/server-key.pem\"\n", ""),
                "missing field `key`",
            ),
            (
                format!(
                    "{VALID}[[principals]]\nname = \"x\"\nroles = []\nfingerprint_sha256 = \"{}\"\n",
                    "0".repeat(64)
                ),
                "[[principals]] need [tls]",
            ),
        ];
        for (text, expected) in cases {
            let error = format!("{:#}", load(&text).expect_err("must be refused"));
            assert!(error.contains(expected), "{error:?} should mention {expected:?}");
        }
    }
}
