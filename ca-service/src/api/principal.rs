//! Authentication and authorization, in one place: the `Authenticator` maps a request's TLS client
//! certificate to a `Principal`, and `ACCESS` says which RPC needs what. `AccessLayer`, a tower layer
//! on the tonic server, applies both to every request before any service sees it, and puts the
//! `Arc<Principal>` into the request's extensions; handlers read it back with `principal`.
//!
//! A tonic interceptor cannot do this: it does not see the method path. The layer reads the URI path
//! and tonic's `TlsConnectInfo` (the peer certificates the handshake verified) from the HTTP request.
//!
//! Refusals: no client certificate, or one that matches no principal, is UNAUTHENTICATED (the latter
//! names the certificate's SHA-256); a known principal without the role is PERMISSION_DENIED naming
//! the role, and is logged with the principal and the RPC. Without TLS (plaintext) nobody is
//! authenticated: every caller is `Principal::unauthenticated()` (`sync-server` only), and an RPC that
//! needs another role is UNAUTHENTICATED, since a certificate, not another role, is what is missing.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use tonic::Status;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::config::tls::{PrincipalSection, TlsSection};
use crate::principal::{Principal, Role};

/// What an RPC needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, with or without a certificate (health, reflection).
    Open,
    /// Any principal.
    Authenticated,
    /// A principal holding this role.
    Role(Role),
    /// Nobody: an RPC of ours that the table does not list, or any unknown path.
    Deny,
}

/// Per-RPC authorization, the only table of it: the first entry that matches a request's path
/// decides. An entry ending in `/` matches every method of that service; any other entry matches
/// one method exactly. A path that no entry matches is denied (fail closed), so a new RPC is
/// unreachable until it is listed here.
pub const ACCESS: &[(&str, Access)] = &[
    ("/grpc.health.v1.Health/", Access::Open),
    ("/grpc.reflection.v1.ServerReflection/", Access::Open),
    ("/grpc.reflection.v1alpha.ServerReflection/", Access::Open),
    ("/e2ee.ca.v1.Identity/IssueCertificate", Access::Role(Role::SyncServer)),
    ("/e2ee.ca.v1.Identity/GetCertificates", Access::Role(Role::SyncServer)),
    ("/e2ee.ca.v1.Identity/GetCaInfo", Access::Authenticated),
    // CRLs are public: whoever relies on a certificate may fetch them.
    ("/e2ee.ca.v1.Identity/GetCrl", Access::Authenticated),
    ("/e2ee.ca.v1.KeyBackup/", Access::Role(Role::SyncServer)),
    ("/e2ee.ca.v1.Admin/", Access::Role(Role::Admin)),
    ("/e2ee.ca.v1.Transparency/ExportEntries", Access::Role(Role::Auditor)),
    ("/e2ee.ca.v1.Transparency/GetCheckpoint", Access::Authenticated),
    ("/e2ee.ca.v1.Transparency/GetInclusionProof", Access::Authenticated),
    ("/e2ee.ca.v1.Transparency/GetConsistencyProof", Access::Authenticated),
];

/// What `path` (`/package.Service/Method`) needs, from `ACCESS`.
pub fn access(path: &str) -> Access {
    ACCESS
        .iter()
        .find(|(pattern, _)| match pattern.strip_suffix('/') {
            Some(_) => path.starts_with(pattern),
            None => path == *pattern,
        })
        .map_or(Access::Deny, |(_, access)| *access)
}

/// Maps callers to principals: every caller in plaintext, or client certificates under mTLS.
#[derive(Debug)]
pub struct Authenticator {
    mode: Mode,
}

#[derive(Debug)]
enum Mode {
    /// No TLS: everyone is this principal.
    Plaintext(Arc<Principal>),
    /// mTLS: certificates are matched against the configured principals.
    Tls(Directory),
}

/// The configured principals, indexed by how their certificates are matched.
#[derive(Debug)]
struct Directory {
    by_fingerprint: HashMap<[u8; 32], Arc<Principal>>,
    client_cas: Vec<ClientCa>,
    /// In config order: the first match wins.
    by_name: Vec<NameRule>,
    /// What name rules decided for a certificate (by its SHA-256), so that the parse and the
    /// signature check under each client CA run once per certificate, not once per request. The
    /// rules never change while the process runs, so a cached answer stays right; bounded, and
    /// emptied when full.
    resolved: std::sync::Mutex<HashMap<[u8; 32], Option<Arc<Principal>>>>,
}

/// Most certificates `Directory::resolved` remembers.
const RESOLVED_CERTIFICATES: usize = 4096;

#[derive(Debug)]
struct ClientCa {
    name: String,
    certificate_der: Vec<u8>,
}

#[derive(Debug)]
struct NameRule {
    /// Index into `client_cas`.
    client_ca: usize,
    name: CertificateName,
    principal: Arc<Principal>,
}

#[derive(Debug)]
enum CertificateName {
    CommonName(String),
    SubjectAltName(String),
}

impl Authenticator {
    /// Nobody is authenticated: every caller is `Principal::unauthenticated()`.
    pub fn plaintext() -> Authenticator {
        Authenticator {
            mode: Mode::Plaintext(Arc::new(Principal::unauthenticated())),
        }
    }

    /// Client certificates under `tls`'s client CAs (read from their files) map to `principals`.
    pub fn mutual_tls(tls: &TlsSection, principals: &[PrincipalSection]) -> anyhow::Result<Authenticator> {
        let mut client_cas = Vec::new();
        for client_ca in &tls.client_ca {
            let certificates = crate::ceremony::read_pem_certificates(&client_ca.file)
                .with_context(|| format!("cannot read tls.client_ca {:?}", client_ca.name))?;
            let [certificate_der] = <[Vec<u8>; 1]>::try_from(certificates).map_err(|certificates| {
                anyhow::anyhow!(
                    "tls.client_ca {:?} ({}) must hold exactly one certificate, not {}",
                    client_ca.name,
                    client_ca.file.display(),
                    certificates.len()
                )
            })?;
            X509Certificate::from_der(&certificate_der)
                .map_err(|error| anyhow::anyhow!("tls.client_ca {:?} is not a certificate: {error}", client_ca.name))?;
            client_cas.push(ClientCa {
                name: client_ca.name.clone(),
                certificate_der,
            });
        }
        let mut directory = Directory {
            by_fingerprint: HashMap::new(),
            client_cas,
            by_name: Vec::new(),
            resolved: std::sync::Mutex::new(HashMap::new()),
        };
        for section in principals {
            let principal = Arc::new(Principal::new(section.name.clone(), &section.roles));
            if let Some(fingerprint) = section.fingerprint()? {
                if directory.by_fingerprint.insert(fingerprint, principal).is_some() {
                    anyhow::bail!(
                        "two principals have the fingerprint_sha256 of principal {:?}",
                        section.name
                    );
                }
                continue;
            }
            let client_ca = directory
                .client_cas
                .iter()
                .position(|known| Some(&known.name) == section.client_ca.as_ref())
                .with_context(|| format!("principal {:?} has no known client_ca", section.name))?;
            let name = match (&section.cn, &section.san) {
                (Some(cn), _) => CertificateName::CommonName(cn.clone()),
                (None, Some(san)) => CertificateName::SubjectAltName(san.clone()),
                (None, None) => anyhow::bail!("principal {:?} has no cn or san", section.name),
            };
            directory.by_name.push(NameRule {
                client_ca,
                name,
                principal,
            });
        }
        Ok(Authenticator {
            mode: Mode::Tls(directory),
        })
    }

    /// Whether the service authenticates callers (mTLS).
    pub fn is_mutual_tls(&self) -> bool {
        matches!(self.mode, Mode::Tls(_))
    }

    /// Decides a request for `path` whose connection presented `peer_certificates` (the leaf
    /// first, as the handshake verified them): the principal to tag it with (`None` for an open
    /// RPC), or the status to answer.
    pub fn authorize(
        &self,
        path: &str,
        peer_certificates: Option<&[impl AsRef<[u8]>]>,
    ) -> Result<Option<Arc<Principal>>, Status> {
        let needed = access(path);
        if needed == Access::Open {
            return Ok(None);
        }
        let principal = match &self.mode {
            Mode::Plaintext(principal) => Arc::clone(principal),
            Mode::Tls(directory) => {
                let Some(leaf) = peer_certificates.and_then(<[_]>::first) else {
                    return Err(Status::unauthenticated(format!(
                        "{path} needs a client certificate: connect with mTLS (a certificate from one of the CA's client CAs)"
                    )));
                };
                directory.identify(leaf.as_ref()).map_err(|fingerprint| {
                    Status::unauthenticated(format!(
                        "unknown client certificate (SHA-256 {fingerprint}): no principal in the CA's config matches it"
                    ))
                })?
            }
        };
        match needed {
            Access::Open | Access::Authenticated => Ok(Some(principal)),
            Access::Role(role) if principal.has(role) => Ok(Some(principal)),
            Access::Role(role) if !self.is_mutual_tls() => Err(Status::unauthenticated(format!(
                "{path} needs role {role}, and this server authenticates nobody (plaintext): call it over mTLS with a \
                 client certificate"
            ))),
            Access::Role(role) => {
                tracing::warn!(principal = principal.name(), rpc = path, needed = %role, "permission denied");
                Err(Status::permission_denied(format!(
                    "{path} needs role {role}; principal {} does not hold it",
                    principal.name()
                )))
            }
            Access::Deny => {
                tracing::warn!(
                    principal = principal.name(),
                    rpc = path,
                    "permission denied: no access rule"
                );
                Err(Status::permission_denied(format!(
                    "{path} is not open to any principal"
                )))
            }
        }
    }
}

impl Directory {
    /// The principal `certificate_der` belongs to, or its SHA-256 (hex) when none matches.
    fn identify(&self, certificate_der: &[u8]) -> Result<Arc<Principal>, String> {
        let fingerprint: [u8; 32] = Sha256::digest(certificate_der).into();
        if let Some(principal) = self.by_fingerprint.get(&fingerprint) {
            return Ok(Arc::clone(principal));
        }
        let unknown = || hex::encode(fingerprint);
        let cached = {
            let resolved = self.resolved.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            resolved.get(&fingerprint).cloned()
        };
        let principal = match cached {
            Some(principal) => principal,
            None => {
                let principal = self.match_names(certificate_der);
                let mut resolved = self.resolved.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if resolved.len() >= RESOLVED_CERTIFICATES {
                    resolved.clear();
                }
                resolved.insert(fingerprint, principal.clone());
                principal
            }
        };
        principal.ok_or_else(unknown)
    }

    /// The first name rule `certificate_der` matches under the client CA the rule names.
    fn match_names(&self, certificate_der: &[u8]) -> Option<Arc<Principal>> {
        let Ok((_, certificate)) = X509Certificate::from_der(certificate_der) else {
            return None;
        };
        // Which client CA signed it: the handshake checked that it chains to one of them, and a
        // name only counts under the CA the principal names.
        let issuers: Vec<bool> = self
            .client_cas
            .iter()
            .map(|client_ca| {
                X509Certificate::from_der(&client_ca.certificate_der).is_ok_and(|(_, ca)| {
                    certificate.issuer() == ca.subject() && certificate.verify_signature(Some(ca.public_key())).is_ok()
                })
            })
            .collect();
        self.by_name
            .iter()
            .find(|rule| issuers[rule.client_ca] && rule.name.matches(&certificate))
            .map(|rule| Arc::clone(&rule.principal))
    }
}

impl CertificateName {
    fn matches(&self, certificate: &X509Certificate<'_>) -> bool {
        match self {
            CertificateName::CommonName(expected) => certificate
                .subject()
                .iter_common_name()
                .any(|name| name.as_str().is_ok_and(|name| name == expected)),
            CertificateName::SubjectAltName(expected) => {
                let Ok(Some(names)) = certificate.subject_alternative_name() else {
                    return false;
                };
                names.value.general_names.iter().any(|name| match name {
                    GeneralName::DNSName(name) | GeneralName::URI(name) | GeneralName::RFC822Name(name) => {
                        name == expected
                    }
                    _ => false,
                })
            }
        }
    }
}

/// The tower layer that runs the `Authenticator` in front of every service.
#[derive(Debug, Clone)]
pub struct AccessLayer {
    authenticator: Arc<Authenticator>,
}

impl AccessLayer {
    /// A layer deciding every request with `authenticator`.
    pub fn new(authenticator: Authenticator) -> AccessLayer {
        AccessLayer {
            authenticator: Arc::new(authenticator),
        }
    }
}

impl<S> tower::Layer<S> for AccessLayer {
    type Service = AccessService<S>;

    fn layer(&self, inner: S) -> AccessService<S> {
        AccessService {
            inner,
            authenticator: Arc::clone(&self.authenticator),
        }
    }
}

/// `AccessLayer`'s service: tags the request with its principal and passes it on, or answers the
/// refusal itself.
#[derive(Debug, Clone)]
pub struct AccessService<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

type Response = http::Response<tonic::body::Body>;

impl<S, B> tower::Service<http::Request<B>> for AccessService<S>
where
    S: tower::Service<http::Request<B>, Response = Response>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let peer_certificates = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs);
        let decision = self
            .authenticator
            .authorize(request.uri().path(), peer_certificates.as_deref().map(Vec::as_slice));
        match decision {
            Ok(principal) => {
                if let Some(principal) = principal {
                    // tonic carries the HTTP extensions into `tonic::Request::extensions`.
                    request.extensions_mut().insert(principal);
                }
                Box::pin(self.inner.call(request))
            }
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

/// The principal the `AccessLayer` put on `request`; a request that did not pass it is refused.
pub(super) fn principal<T>(request: &tonic::Request<T>) -> Result<Arc<Principal>, Status> {
    request
        .extensions()
        .get::<Arc<Principal>>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("the request carries no authenticated principal"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_CERTIFICATES: Option<&[Vec<u8>]> = None;

    #[test]
    fn the_table_maps_every_rpc_to_its_role_and_denies_what_it_does_not_list() {
        let cases = [
            ("/e2ee.ca.v1.Identity/IssueCertificate", Access::Role(Role::SyncServer)),
            ("/e2ee.ca.v1.Identity/GetCertificates", Access::Role(Role::SyncServer)),
            ("/e2ee.ca.v1.Identity/GetCaInfo", Access::Authenticated),
            ("/e2ee.ca.v1.Identity/GetCrl", Access::Authenticated),
            (
                "/e2ee.ca.v1.KeyBackup/PutWrappedPrivateKey",
                Access::Role(Role::SyncServer),
            ),
            (
                "/e2ee.ca.v1.KeyBackup/GetWrappedPrivateKey",
                Access::Role(Role::SyncServer),
            ),
            ("/e2ee.ca.v1.Admin/RevokeCertificate", Access::Role(Role::Admin)),
            ("/e2ee.ca.v1.Admin/ApproveRequest", Access::Role(Role::Admin)),
            ("/e2ee.ca.v1.Admin/GetEscrow", Access::Role(Role::Admin)),
            ("/e2ee.ca.v1.Transparency/ExportEntries", Access::Role(Role::Auditor)),
            ("/e2ee.ca.v1.Transparency/GetCheckpoint", Access::Authenticated),
            ("/e2ee.ca.v1.Transparency/GetInclusionProof", Access::Authenticated),
            ("/e2ee.ca.v1.Transparency/GetConsistencyProof", Access::Authenticated),
            ("/grpc.health.v1.Health/Check", Access::Open),
            ("/grpc.health.v1.Health/Watch", Access::Open),
            (
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                Access::Open,
            ),
            ("/e2ee.ca.v1.Identity/RevokeCertificate", Access::Deny),
            ("/e2ee.ca.v1.Identity/IssueCertificateX", Access::Deny),
            ("/e2ee.ca.v1.Transparency/ExportEntriesAll", Access::Deny),
            ("/e2ee.ca.v1.Unknown/Call", Access::Deny),
            ("/e2ee.ca.v1.AdminX/Call", Access::Deny),
            ("/other.Service/Call", Access::Deny),
            ("/", Access::Deny),
        ];
        for (path, expected) in cases {
            assert_eq!(access(path), expected, "{path}");
        }
    }

    #[test]
    fn plaintext_callers_are_the_sync_server_and_need_a_certificate_for_other_roles() {
        let authenticator = Authenticator::plaintext();
        let issued = authenticator
            .authorize("/e2ee.ca.v1.Identity/IssueCertificate", NO_CERTIFICATES)
            .expect("allowed")
            .expect("tagged");
        assert_eq!(issued.name(), "unauthenticated");
        for path in [
            "/e2ee.ca.v1.Identity/GetCaInfo",
            "/e2ee.ca.v1.Transparency/GetCheckpoint",
        ] {
            assert!(
                authenticator
                    .authorize(path, NO_CERTIFICATES)
                    .expect("allowed")
                    .is_some()
            );
        }
        for path in [
            "/e2ee.ca.v1.Transparency/ExportEntries",
            "/e2ee.ca.v1.Admin/RevokeCertificate",
        ] {
            let status = authenticator.authorize(path, NO_CERTIFICATES).expect_err("refused");
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{path}");
            assert!(
                status.message().contains("authenticates nobody"),
                "{}",
                status.message()
            );
        }
        assert!(
            authenticator
                .authorize("/grpc.health.v1.Health/Check", NO_CERTIFICATES)
                .expect("open")
                .is_none()
        );
        assert_eq!(
            authenticator
                .authorize("/e2ee.ca.v1.Identity/Unlisted", NO_CERTIFICATES)
                .expect_err("denied")
                .code(),
            tonic::Code::PermissionDenied
        );
    }

    /// A CA and a leaf it issued (CN `common_name`, `email` as an rfc822 SAN), both DER.
    fn certificates(ca_name: &str, common_name: &str, email: &str) -> (String, Vec<u8>) {
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, ca_name);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        params
            .subject_alt_names
            .push(rcgen::SanType::Rfc822Name(email.try_into().expect("email")));
        let leaf = params.signed_by(&key, &ca).expect("leaf");
        (ca.pem(), leaf.der().to_vec())
    }

    #[test]
    fn names_count_only_under_the_client_ca_the_principal_names_and_fingerprints_match_exactly() {
        let directory = tempfile::tempdir().expect("tempdir");
        let (corp_pem, corp_leaf) = certificates("Corp clients", "sync", "ops@corp.example");
        // Another CA with the same subject name as corp's: only corp's key makes a corp certificate.
        let (twin_pem, twin_leaf) = certificates("Corp clients", "sync", "ops@corp.example");
        let (partner_pem, partner_leaf) = certificates("Partner clients", "sync", "audit@partner.example");
        for (name, pem) in [
            ("corp.pem", &corp_pem),
            ("twin.pem", &twin_pem),
            ("partner.pem", &partner_pem),
        ] {
            std::fs::write(directory.path().join(name), pem).expect("write");
        }
        let text = format!(
            "certificate = \"server.pem\"\nkey = \"server-key.pem\"\n\
             [[client_ca]]\nname = \"corp\"\nfile = {corp:?}\n[[client_ca]]\nname = \"partner\"\nfile = {partner:?}\n",
            corp = directory.path().join("corp.pem"),
            partner = directory.path().join("partner.pem"),
        );
        let tls: TlsSection = toml::from_str(&text).expect("tls section");
        let principals: Vec<PrincipalSection> = toml::from_str::<toml::Table>(&format!(
            "[[principals]]\nname = \"sync\"\nroles = [\"sync-server\"]\nclient_ca = \"corp\"\ncn = \"sync\"\n\
             [[principals]]\nname = \"partner-audit\"\nroles = [\"auditor\"]\nclient_ca = \"partner\"\nsan = \"audit@partner.example\"\n\
             [[principals]]\nname = \"pinned\"\nroles = []\nfingerprint_sha256 = \"{}\"\n",
            hex::encode(Sha256::digest(&twin_leaf))
        ))
        .expect("principals")["principals"]
            .clone()
            .try_into()
            .expect("principal sections");
        let authenticator = Authenticator::mutual_tls(&tls, &principals).expect("authenticator");
        let who = |leaf: &Vec<u8>| {
            authenticator
                .authorize("/e2ee.ca.v1.Identity/GetCaInfo", Some(std::slice::from_ref(leaf)))
                .map(|principal| principal.expect("tagged").name().to_owned())
        };
        assert_eq!(who(&corp_leaf).expect("known"), "sync");
        assert_eq!(who(&partner_leaf).expect("known"), "partner-audit");
        assert_eq!(who(&twin_leaf).expect("known by fingerprint"), "pinned");
        // The partner CA's "sync" is not corp's "sync"; a certificate from the twin CA matches only
        // by its fingerprint, so a fresh one from the same twin is unknown.
        let (_, other_twin_leaf) = certificates("Corp clients", "sync", "ops@corp.example");
        let status = who(&other_twin_leaf).expect_err("unknown");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(
            status
                .message()
                .contains(&hex::encode(Sha256::digest(&other_twin_leaf))),
            "{}",
            status.message()
        );
        let refused = authenticator
            .authorize(
                "/e2ee.ca.v1.Transparency/ExportEntries",
                Some(std::slice::from_ref(&corp_leaf)),
            )
            .expect_err("sync is no auditor");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(
            refused.message().contains("needs role auditor"),
            "{}",
            refused.message()
        );
        let anonymous = authenticator
            .authorize("/e2ee.ca.v1.Identity/GetCaInfo", NO_CERTIFICATES)
            .expect_err("no certificate");
        assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);
        assert!(
            authenticator
                .authorize("/grpc.health.v1.Health/Check", NO_CERTIFICATES)
                .expect("open")
                .is_none()
        );
        // A client CA file with more or less than one certificate is refused at startup.
        std::fs::write(directory.path().join("corp.pem"), format!("{corp_pem}{partner_pem}")).expect("write");
        let error = Authenticator::mutual_tls(&tls, &principals).expect_err("two certificates");
        assert!(error.to_string().contains("exactly one certificate"), "{error}");
    }

    #[test]
    fn every_request_that_passes_the_layer_names_its_principal() {
        assert_eq!(
            principal(&tonic::Request::new(()))
                .expect_err("not authenticated")
                .code(),
            tonic::Code::Unauthenticated
        );
        let mut request = tonic::Request::new(());
        request.extensions_mut().insert(Arc::new(Principal::unauthenticated()));
        assert_eq!(principal(&request).expect("tagged").name(), "unauthenticated");
    }
}
