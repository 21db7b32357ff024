//! The recovery-key ceremony's files as `recovery register` reads them: the public key (PEM) and
//! the registration request (JSON), parsed while the command line is, before any connection.
//!
//! Checked here only as far as keeps a mistake on the workstation: one PEM "PUBLIC KEY" block, so
//! that a private key or a certificate given by mistake is never sent. Whether the key is X25519 is
//! the CA's check (INVALID_ARGUMENT), which also opens no request.

use std::path::Path;

use serde_json::Value;

/// A recovery public key file's text: one PEM "PUBLIC KEY" block, sent as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryPublicKeyPem(String);

impl RecoveryPublicKeyPem {
    /// Reads and checks `--public-key FILE` (clap's value parser).
    pub fn read(path: &str) -> Result<RecoveryPublicKeyPem, String> {
        let text = read_text(Path::new(path))?;
        RecoveryPublicKeyPem::parse(path, text)
    }

    /// Checks `text`, from `origin` (named in the error).
    fn parse(origin: &str, text: String) -> Result<RecoveryPublicKeyPem, String> {
        let blocks = pem::parse_many(&text).map_err(|error| format!("{origin} is not PEM: {error}"))?;
        let tags: Vec<&str> = blocks.iter().map(pem::Pem::tag).collect();
        match tags.as_slice() {
            ["PUBLIC KEY"] => Ok(RecoveryPublicKeyPem(text)),
            tags if tags.iter().any(|tag| tag.contains("PRIVATE KEY")) => Err(format!(
                "{origin} holds a private key: give the recovery public key (recovery-public-key.pem); \
                 the private key stays with the officers"
            )),
            [] => Err(format!("{origin} holds no PEM block: expected one \"PUBLIC KEY\"")),
            tags => Err(format!(
                "{origin} holds {}: expected one \"PUBLIC KEY\" block",
                tags.iter().map(|tag| format!("{tag:?}")).collect::<Vec<_>>().join(", ")
            )),
        }
    }

    /// The PEM text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The ceremony's `registration-request.json`: the fields a registration needs (others ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationRequest {
    /// Its `public_key_pem`, checked as `--public-key` is.
    pub public_key: RecoveryPublicKeyPem,
    /// Its `ceremony_reference`.
    pub ceremony_reference: String,
}

impl RegistrationRequest {
    /// Reads and checks `--request FILE` (clap's value parser).
    pub fn read(path: &str) -> Result<RegistrationRequest, String> {
        RegistrationRequest::parse(path, &read_text(Path::new(path))?)
    }

    fn parse(path: &str, text: &str) -> Result<RegistrationRequest, String> {
        let document: Value = serde_json::from_str(text).map_err(|error| format!("{path} is not JSON: {error}"))?;
        let field = |name: &str| {
            document
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("{path} has no string field {name:?}"))
        };
        let public_key = RecoveryPublicKeyPem::parse(&format!("{path} public_key_pem"), field("public_key_pem")?)?;
        Ok(RegistrationRequest {
            public_key,
            ceremony_reference: field("ceremony_reference")?,
        })
    }
}

fn read_text(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|error| format!("cannot read {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An X25519 SubjectPublicKeyInfo (RFC 8410's 44 bytes), PEM.
    const PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----\n\
        MCowBQYDK2VuAyEAhSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=\n\
        -----END PUBLIC KEY-----\n";

    #[test]
    fn one_public_key_block_is_accepted_and_sent_as_read() {
        let text = format!("recovery key of the 2026-03-01 ceremony\n{PUBLIC_KEY}");
        let key = RecoveryPublicKeyPem::parse("key.pem", text.clone()).expect("accepted");
        assert_eq!(key.as_str(), text);
    }

    #[test]
    fn a_private_key_a_certificate_two_keys_or_no_pem_are_refused_naming_what_was_found() {
        let private = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VuBCIEIHcHbQpzGKV9PBbBclGyZkXfTC+H68CZKrF3+6UduSwq\n-----END PRIVATE KEY-----\n";
        let certificate = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        for (text, expected) in [
            (private.to_owned(), "key.pem holds a private key"),
            (format!("{PUBLIC_KEY}{private}"), "key.pem holds a private key"),
            (certificate.to_owned(), "key.pem holds \"CERTIFICATE\": expected one"),
            (
                format!("{PUBLIC_KEY}{PUBLIC_KEY}"),
                "key.pem holds \"PUBLIC KEY\", \"PUBLIC KEY\": expected one",
            ),
            ("not a key\n".to_owned(), "key.pem holds no PEM block"),
        ] {
            let error = RecoveryPublicKeyPem::parse("key.pem", text.clone()).expect_err(&text);
            assert!(error.starts_with(expected), "{text:?}: {error}");
            assert!(!error.contains("MC4CAQ"), "no key material in the error: {error}");
        }
    }

    #[test]
    fn a_registration_request_gives_its_key_and_reference_and_other_fields_are_ignored() {
        let text = serde_json::json!({
            "public_key_pem": PUBLIC_KEY,
            "ceremony_reference": "2026-03-01 vault B, officers A, B, C",
            "fingerprint": "ignored",
        })
        .to_string();
        let request = RegistrationRequest::parse("registration-request.json", &text).expect("parses");
        assert_eq!(request.public_key.as_str(), PUBLIC_KEY);
        assert_eq!(request.ceremony_reference, "2026-03-01 vault B, officers A, B, C");
    }

    #[test]
    fn a_registration_request_without_its_fields_or_with_a_bad_key_is_refused() {
        for (text, expected) in [
            ("{".to_owned(), "r.json is not JSON"),
            ("[]".to_owned(), "r.json has no string field \"public_key_pem\""),
            (
                serde_json::json!({ "public_key_pem": PUBLIC_KEY }).to_string(),
                "r.json has no string field \"ceremony_reference\"",
            ),
            (
                serde_json::json!({ "public_key_pem": PUBLIC_KEY, "ceremony_reference": 7 }).to_string(),
                "r.json has no string field \"ceremony_reference\"",
            ),
            (
                serde_json::json!({ "public_key_pem": "junk", "ceremony_reference": "x" }).to_string(),
                "r.json public_key_pem holds no PEM block",
            ),
        ] {
            let error = RegistrationRequest::parse("r.json", &text).expect_err(&text);
            assert!(error.starts_with(expected), "{text}: {error}");
        }
    }
}
