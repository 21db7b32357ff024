//! Dev mode's TLS PKI under `<data>/dev-pki/`: one dev CA (ECDSA P-256, software key) that issues
//! the server certificate (127.0.0.1 and localhost) and a client certificate per dev principal
//! (CN = the principal's name). Made once, reused on restart; keys are mode 0600.
//!
//! These are software keys by design: they authenticate dev callers on one machine. The CA key that
//! signs users' certificates stays on the token, made by the ceremony.
//!
//! Layout: `ca.pem` and `ca-key.pem` (the dev CA, which can mint more client certificates),
//! `server.pem` and `server-key.pem`, and `<principal>.pem` and `<principal>-key.pem` for each of
//! `DEV_PRINCIPALS`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::principal::Role;

/// The dev principals, each with a client certificate whose CN is its name.
pub const DEV_PRINCIPALS: [(&str, &[Role]); 4] = [
    ("sync-server", &[Role::SyncServer]),
    ("admin-alice", &[Role::Admin]),
    ("admin-bob", &[Role::Admin]),
    ("auditor", &[Role::Auditor]),
];

/// The `[[tls.client_ca]]` name of the dev CA.
pub const DEV_CLIENT_CA: &str = "dev";

/// The files of the dev PKI.
#[derive(Debug, Clone)]
pub struct DevPki {
    directory: PathBuf,
}

impl DevPki {
    /// The directory holding the files.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// The dev CA certificate: the client CA, and the CA that clients trust for the server.
    pub fn ca_certificate(&self) -> PathBuf {
        self.directory.join("ca.pem")
    }

    /// The server certificate (127.0.0.1, localhost).
    pub fn server_certificate(&self) -> PathBuf {
        self.directory.join("server.pem")
    }

    /// The server certificate's key.
    pub fn server_key(&self) -> PathBuf {
        self.directory.join("server-key.pem")
    }

    /// The client certificate of dev principal `name`.
    pub fn certificate(&self, name: &str) -> PathBuf {
        self.directory.join(format!("{name}.pem"))
    }

    /// The client key of dev principal `name`.
    pub fn key(&self, name: &str) -> PathBuf {
        self.directory.join(format!("{name}-key.pem"))
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![
            self.ca_certificate(),
            self.directory.join("ca-key.pem"),
            self.server_certificate(),
            self.server_key(),
        ];
        for (name, _) in DEV_PRINCIPALS {
            files.extend([self.certificate(name), self.key(name)]);
        }
        files
    }

    /// The `[tls]` and `[[principals]]` sections of the dev serve config. Paths are absolute, so
    /// that a copy of the config elsewhere (a replica's) still finds the files.
    pub fn config_sections(&self) -> String {
        let path = |path: PathBuf| path.display().to_string();
        let mut text = format!(
            "# Dev mode's mTLS (dev-pki/, made by `ca-service serve --dev`): dev principals match by CN under the\n\
             # dev client CA.\n[tls]\ncertificate = {certificate:?}\nkey = {key:?}\n\n\
             [[tls.client_ca]]\nname = {DEV_CLIENT_CA:?}\nfile = {ca:?}\n",
            certificate = path(self.server_certificate()),
            key = path(self.server_key()),
            ca = path(self.ca_certificate()),
        );
        for (name, roles) in DEV_PRINCIPALS {
            let roles: Vec<String> = roles.iter().map(|role| format!("{:?}", role.name())).collect();
            text.push_str(&format!(
                "\n[[principals]]\nname = {name:?}\nroles = [{}]\nclient_ca = {DEV_CLIENT_CA:?}\ncn = {name:?}\n",
                roles.join(", ")
            ));
        }
        text
    }
}

/// Makes the dev PKI under `root/dev-pki` unless it exists; returns it and whether it was made now.
/// It is written to a scratch directory and renamed into place, so an interrupted run leaves no
/// half PKI behind.
pub fn ensure(root: &Path) -> anyhow::Result<(DevPki, bool)> {
    let pki = DevPki {
        directory: root.join("dev-pki"),
    };
    if pki.directory.exists() {
        if let Some(missing) = pki.files().into_iter().find(|file| !file.is_file()) {
            anyhow::bail!(
                "the dev PKI in {} is incomplete ({} is missing): remove that directory to make a new one",
                pki.directory.display(),
                missing.display()
            );
        }
        return Ok((pki, false));
    }
    let scratch = DevPki {
        directory: root.join("dev-pki.partial"),
    };
    if scratch.directory.exists() {
        std::fs::remove_dir_all(&scratch.directory)
            .with_context(|| format!("cannot remove {}", scratch.directory.display()))?;
    }
    std::fs::create_dir(&scratch.directory)
        .with_context(|| format!("cannot create {}", scratch.directory.display()))?;
    write(&scratch).context("cannot make the dev TLS PKI")?;
    std::fs::rename(&scratch.directory, &pki.directory)
        .with_context(|| format!("cannot move the dev PKI into {}", pki.directory.display()))?;
    Ok((pki, true))
}

fn write(pki: &DevPki) -> anyhow::Result<()> {
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name = name("e2ee-ca dev TLS CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    write_secret(&pki.directory.join("ca-key.pem"), &ca_key.serialize_pem())?;
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;
    write_public(&pki.ca_certificate(), &ca.pem())?;
    let leaf = |subject_alt_names: Vec<String>,
                common_name: &str,
                usage: ExtendedKeyUsagePurpose,
                certificate: &Path,
                key: &Path| {
        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(subject_alt_names)?;
        params.distinguished_name = name(common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let issued = params.signed_by(&leaf_key, &ca)?;
        write_secret(key, &leaf_key.serialize_pem())?;
        write_public(certificate, &issued.pem())
    };
    leaf(
        vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
        "localhost",
        ExtendedKeyUsagePurpose::ServerAuth,
        &pki.server_certificate(),
        &pki.server_key(),
    )?;
    for (principal, _) in DEV_PRINCIPALS {
        leaf(
            Vec::new(),
            principal,
            ExtendedKeyUsagePurpose::ClientAuth,
            &pki.certificate(principal),
            &pki.key(principal),
        )?;
    }
    Ok(())
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name.push(DnType::OrganizationName, "e2ee-ca dev mode");
    name
}

fn write_secret(path: &Path, pem: &str) -> anyhow::Result<()> {
    let pem = zeroize::Zeroizing::new(pem.to_owned());
    hsm_sim::write_secret_file(path, &pem).with_context(|| format!("cannot write {}", path.display()))
}

fn write_public(path: &Path, pem: &str) -> anyhow::Result<()> {
    crate::ceremony::write_new_file(path, pem.as_bytes())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_dev_pki_is_made_once_with_private_keys_and_reused() {
        let directory = tempfile::tempdir().expect("tempdir");
        let (pki, created) = ensure(directory.path()).expect("made");
        assert!(created);
        for key in [pki.server_key(), pki.key("auditor"), pki.directory.join("ca-key.pem")] {
            let mode = std::fs::metadata(&key).expect("key").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }
        let before = std::fs::read(pki.certificate("sync-server")).expect("read");
        let (again, created) = ensure(directory.path()).expect("reused");
        assert!(!created);
        assert_eq!(std::fs::read(again.certificate("sync-server")).expect("read"), before);
        std::fs::remove_file(again.key("admin-bob")).expect("remove");
        let error = ensure(directory.path()).expect_err("incomplete");
        assert!(error.to_string().contains("admin-bob-key.pem is missing"), "{error}");
    }
}
