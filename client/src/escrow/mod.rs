//! Escrow to the CA's offline recovery key: a user's private key sealed with HPKE to an X25519 key held on paper.
//!
//! The recovery key's private half never exists on a server: `e2ee-recovery ceremony` makes it on an air-gapped
//! machine and splits it into Shamir shares (`shares`); the CA only registers the public key. A client `seal`s the
//! user's PKCS#8 private key to it and deposits the blob; after a two-admin release, officers combine enough shares
//! offline and `open` it (`ceremony` and `opening` hold the tool's steps, `files` their files).
//!
//! Blob, version 1 (all lengths fixed except the ciphertext):
//! ```text
//! magic "e2ee-esc" (8) ‖ version 0x01 (1) ‖ SHA-256 of the recipient's SPKI DER (32)
//!   ‖ HPKE encapsulated key (32) ‖ AES-256-GCM ciphertext ‖ tag (16)
//! ```
//! HPKE (RFC 9180) base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM, single shot. The `info` is
//! `"e2ee-ca escrow v1" ‖ u16 len ‖ user id ‖ u16 len ‖ fingerprint` (lengths big-endian), so a blob opens only for
//! the user id and the recovery key it was sealed for; the `aad` is empty. The header is not in the `aad` because
//! everything in it is bound already: the version by the label, the fingerprint by `info`, the encapsulated key by
//! the KEM. So everything after the header is exactly RFC 9180's single-shot `enc ‖ ct`, which any HPKE
//! implementation without an `aad` parameter opens too (testdata/escrow was made with Python `cryptography`'s).

pub mod ceremony;
pub mod files;
pub mod opening;
pub mod shares;

use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub use shares::RecoverySecret;

/// The HPKE suite of blob version 1.
type EscrowKem = hpke::kem::X25519HkdfSha256;
type EscrowKdf = hpke::kdf::HkdfSha256;
type EscrowAead = hpke::aead::AesGcm256;

/// The first bytes of every escrow blob.
const MAGIC: &[u8; 8] = b"e2ee-esc";
/// The blob version this code writes and reads.
const VERSION: u8 = 1;
/// Domain separation for the HPKE `info`.
const INFO_LABEL: &[u8] = b"e2ee-ca escrow v1";
/// Length of an X25519 key and of an encapsulated key.
const X25519_LEN: usize = 32;
/// Length of a SHA-256 fingerprint.
const FINGERPRINT_LEN: usize = 32;
/// Length of the AES-256-GCM tag.
const TAG_LEN: usize = 16;
/// The header up to the encapsulated key: magic, version, fingerprint.
const PREFIX_LEN: usize = MAGIC.len() + 1 + FINGERPRINT_LEN;
/// Everything before the ciphertext.
const HEADER_LEN: usize = PREFIX_LEN + X25519_LEN;

/// Largest blob accepted (the CA refuses deposits over 16 KiB).
pub const MAX_BLOB_LEN: usize = 16 * 1024;
/// Largest private key `seal` accepts, so that the blob stays within `MAX_BLOB_LEN`.
pub const MAX_PLAINTEXT_LEN: usize = MAX_BLOB_LEN - HEADER_LEN - TAG_LEN;
/// Longest user id bound into a blob, in bytes (the CA's are at most 255; HPKE's `info` must stay under 64 KiB).
pub const MAX_USER_ID_LEN: usize = 1024;

/// The DER SubjectPublicKeyInfo of an X25519 key (RFC 8410 §4) up to the key: SEQUENCE { SEQUENCE { OID
/// 1.3.101.110 }, BIT STRING (33 bytes, 0 unused bits) }. DER has one encoding of it, so a key is accepted only
/// as these 12 bytes followed by the 32 key bytes.
const X25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00];
/// The X25519 algorithm OID, dotted.
const X25519_OID: &str = "1.3.101.110";

/// Why a recovery key was refused or a blob could not be sealed or opened. No message contains key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EscrowError {
    /// The recovery public key is not an RFC 8410 X25519 SubjectPublicKeyInfo (or PEM of one).
    #[error("not an X25519 recovery public key: {0}")]
    BadKey(String),
    /// The blob is not an escrow blob, or is truncated or too long.
    #[error("malformed escrow blob: {0}")]
    MalformedBlob(&'static str),
    /// The blob is of a version this client does not know.
    #[error("escrow blob version {0} is not supported (this client reads version {VERSION})")]
    UnsupportedVersion(u8),
    /// The blob was sealed to another recovery key than the one given.
    #[error("the blob is sealed to recovery key {blob}, not to {given}")]
    WrongRecoveryKey {
        /// The fingerprint in the blob's header.
        blob: String,
        /// The fingerprint of the key given.
        given: String,
    },
    /// The blob does not open: it was sealed for another user id, or was altered.
    #[error("the blob does not open for this user id (it was sealed for another user, or altered)")]
    DoesNotOpen,
    /// The user id is empty or longer than `MAX_USER_ID_LEN` bytes.
    #[error("the user id is {0} bytes; it must be 1 to {MAX_USER_ID_LEN}")]
    UserId(usize),
    /// The private key to seal is empty or longer than `MAX_PLAINTEXT_LEN` bytes.
    #[error("the private key to seal is {0} bytes; it must be 1 to {MAX_PLAINTEXT_LEN}")]
    PayloadSize(usize),
    /// HPKE refused to seal (a backend failure).
    #[error("HPKE sealing failed")]
    Seal,
}

/// The CA's offline recovery public key: an X25519 key (RFC 8410).
#[derive(Clone, PartialEq, Eq)]
pub struct RecoveryPublicKey {
    key: [u8; X25519_LEN],
}

impl std::fmt::Debug for RecoveryPublicKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "RecoveryPublicKey({})", self.fingerprint())
    }
}

impl RecoveryPublicKey {
    /// From the raw 32-byte X25519 public key (the recovery secret computes it).
    pub(crate) fn from_raw(key: [u8; X25519_LEN]) -> RecoveryPublicKey {
        RecoveryPublicKey { key }
    }

    /// Parses a DER SubjectPublicKeyInfo: algorithm 1.3.101.110 without parameters, a 32-byte key, nothing after.
    pub fn from_spki_der(spki_der: &[u8]) -> Result<RecoveryPublicKey, EscrowError> {
        use x509_parser::prelude::FromDer;
        let (rest, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der)
            .map_err(|_| EscrowError::BadKey("not a DER SubjectPublicKeyInfo".into()))?;
        if !rest.is_empty() {
            return Err(EscrowError::BadKey(format!(
                "{} bytes after the SubjectPublicKeyInfo",
                rest.len()
            )));
        }
        let oid = spki.algorithm.algorithm.to_id_string();
        if oid != X25519_OID {
            return Err(EscrowError::BadKey(format!(
                "algorithm {oid}, not X25519 ({X25519_OID})"
            )));
        }
        if spki.algorithm.parameters.is_some() {
            return Err(EscrowError::BadKey(
                "the algorithm has parameters (RFC 8410 forbids them)".into(),
            ));
        }
        let key_bytes: &[u8] = &spki.subject_public_key.data;
        if key_bytes.len() != X25519_LEN {
            return Err(EscrowError::BadKey(format!(
                "the key is {} bytes, not {X25519_LEN}",
                key_bytes.len()
            )));
        }
        // The checks above accept BER variants (long-form lengths, unused bits); only the DER bytes hash to the
        // fingerprint the CA computes, so anything else is refused.
        if spki_der.len() != X25519_SPKI_PREFIX.len() + X25519_LEN
            || spki_der[..X25519_SPKI_PREFIX.len()] != X25519_SPKI_PREFIX
        {
            return Err(EscrowError::BadKey(
                "not the DER encoding of an X25519 SubjectPublicKeyInfo".into(),
            ));
        }
        let mut key = [0u8; X25519_LEN];
        key.copy_from_slice(&spki_der[X25519_SPKI_PREFIX.len()..]);
        Ok(RecoveryPublicKey { key })
    }

    /// Parses exactly one PEM "PUBLIC KEY" block holding the SubjectPublicKeyInfo.
    pub fn from_pem(pem_text: &str) -> Result<RecoveryPublicKey, EscrowError> {
        let blocks = pem::parse_many(pem_text).map_err(|_| EscrowError::BadKey("not PEM".into()))?;
        let [block] = blocks.as_slice() else {
            return Err(EscrowError::BadKey(format!(
                "{} PEM blocks, expected one",
                blocks.len()
            )));
        };
        if block.tag() != "PUBLIC KEY" {
            return Err(EscrowError::BadKey(format!(
                "a PEM {:?} block, not PUBLIC KEY",
                block.tag()
            )));
        }
        RecoveryPublicKey::from_spki_der(block.contents())
    }

    /// The DER SubjectPublicKeyInfo (44 bytes).
    pub fn spki_der(&self) -> Vec<u8> {
        let mut der = Vec::with_capacity(X25519_SPKI_PREFIX.len() + X25519_LEN);
        der.extend_from_slice(&X25519_SPKI_PREFIX);
        der.extend_from_slice(&self.key);
        der
    }

    /// The PEM "PUBLIC KEY" block, LF line ends.
    pub fn to_pem(&self) -> String {
        let block = pem::Pem::new("PUBLIC KEY", self.spki_der());
        pem::encode_config(&block, pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF))
    }

    /// Lowercase hex SHA-256 of the SPKI DER: what the CA reports and what a blob names.
    pub fn fingerprint(&self) -> String {
        hex::encode(self.fingerprint_bytes())
    }

    fn fingerprint_bytes(&self) -> [u8; FINGERPRINT_LEN] {
        Sha256::digest(self.spki_der()).into()
    }
}

/// Seals `private_key_pkcs8_der` (the user's private key, PKCS#8 DER) for `user_id` to the recovery key.
///
/// The payload is not parsed here; `e2ee-recovery open` checks that what it opens is an RSA key.
pub fn seal(
    recipient: &RecoveryPublicKey,
    user_id: &str,
    private_key_pkcs8_der: &[u8],
) -> Result<Vec<u8>, EscrowError> {
    check_user_id(user_id)?;
    if private_key_pkcs8_der.is_empty() || private_key_pkcs8_der.len() > MAX_PLAINTEXT_LEN {
        return Err(EscrowError::PayloadSize(private_key_pkcs8_der.len()));
    }
    let fingerprint = recipient.fingerprint_bytes();
    let public_key = <EscrowKem as hpke::Kem>::PublicKey::from_bytes(&recipient.key)
        .map_err(|_| EscrowError::BadKey("not an X25519 public key".into()))?;
    let mut blob = Vec::with_capacity(HEADER_LEN + private_key_pkcs8_der.len() + TAG_LEN);
    blob.extend_from_slice(MAGIC);
    blob.push(VERSION);
    blob.extend_from_slice(&fingerprint);
    // The OS generator draws the ephemeral key; hpke panics only if the OS generator fails.
    let (encapsulated, ciphertext) = hpke::single_shot_seal::<EscrowAead, EscrowKdf, EscrowKem>(
        &OpModeS::Base,
        &public_key,
        &info(user_id, &fingerprint),
        private_key_pkcs8_der,
        &[],
    )
    .map_err(|error| match error {
        // DH with a low-order point gives the all-zero secret, which RFC 9180 §7.1.4 refuses.
        hpke::HpkeError::EncapError => EscrowError::BadKey("a low-order point".into()),
        _ => EscrowError::Seal,
    })?;
    blob.extend_from_slice(&encapsulated.to_bytes());
    blob.extend_from_slice(&ciphertext);
    Ok(blob)
}

/// Opens a blob sealed for `user_id` with the combined recovery secret; returns the PKCS#8 DER it holds.
pub fn open(secret: &RecoverySecret, user_id: &str, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, EscrowError> {
    check_user_id(user_id)?;
    if !blob.starts_with(MAGIC) {
        return Err(EscrowError::MalformedBlob("it does not start with the escrow magic"));
    }
    if blob.len() > MAX_BLOB_LEN {
        return Err(EscrowError::MalformedBlob("it is longer than 16 KiB"));
    }
    match blob.get(MAGIC.len()) {
        Some(&VERSION) => {}
        Some(&version) => return Err(EscrowError::UnsupportedVersion(version)),
        None => return Err(EscrowError::MalformedBlob("it ends after the magic")),
    }
    // A private key is never empty, so neither is a ciphertext.
    if blob.len() <= HEADER_LEN + TAG_LEN {
        return Err(EscrowError::MalformedBlob("it is truncated"));
    }
    let (prefix, rest) = blob.split_at(PREFIX_LEN);
    let (encapsulated, ciphertext) = rest.split_at(X25519_LEN);
    let blob_fingerprint = &prefix[MAGIC.len() + 1..];
    let recovery_key = secret.public_key();
    let fingerprint = recovery_key.fingerprint_bytes();
    if blob_fingerprint != fingerprint {
        return Err(EscrowError::WrongRecoveryKey {
            blob: hex::encode(blob_fingerprint),
            given: hex::encode(fingerprint),
        });
    }
    let encapsulated = <EscrowKem as hpke::Kem>::EncappedKey::from_bytes(encapsulated)
        .map_err(|_| EscrowError::MalformedBlob("bad encapsulated key"))?;
    let plaintext = hpke::single_shot_open::<EscrowAead, EscrowKdf, EscrowKem>(
        &OpModeR::Base,
        secret.hpke_private_key(),
        &encapsulated,
        &info(user_id, &fingerprint),
        ciphertext,
        &[],
    )
    .map_err(|_| EscrowError::DoesNotOpen)?;
    Ok(Zeroizing::new(plaintext))
}

fn check_user_id(user_id: &str) -> Result<(), EscrowError> {
    if user_id.is_empty() || user_id.len() > MAX_USER_ID_LEN {
        return Err(EscrowError::UserId(user_id.len()));
    }
    Ok(())
}

/// `"e2ee-ca escrow v1" ‖ u16 len ‖ user id ‖ u16 len ‖ fingerprint`, lengths big-endian.
fn info(user_id: &str, fingerprint: &[u8; FINGERPRINT_LEN]) -> Vec<u8> {
    let mut info = Vec::with_capacity(INFO_LABEL.len() + 4 + user_id.len() + FINGERPRINT_LEN);
    info.extend_from_slice(INFO_LABEL);
    for field in [user_id.as_bytes(), fingerprint.as_slice()] {
        // Both fit: the user id is at most MAX_USER_ID_LEN bytes (`check_user_id`), the fingerprint 32.
        let length = u16::try_from(field.len()).unwrap_or(u16::MAX);
        info.extend_from_slice(&length.to_be_bytes());
        info.extend_from_slice(field);
    }
    info
}

/// The public key of a KEM private key (for `RecoverySecret::public_key`).
pub(crate) fn public_key_of(private_key: &<EscrowKem as hpke::Kem>::PrivateKey) -> RecoveryPublicKey {
    let public_key = EscrowKem::sk_to_pk(private_key);
    let mut raw = [0u8; X25519_LEN];
    raw.copy_from_slice(&public_key.to_bytes());
    RecoveryPublicKey::from_raw(raw)
}

/// The KEM's private-key type, for `shares`.
pub(crate) type EscrowPrivateKey = <EscrowKem as hpke::Kem>::PrivateKey;

/// Generates a key pair with the KEM's own `GenerateKeyPair` (DeriveKeyPair of fresh OS randomness).
pub(crate) fn generate_private_key() -> EscrowPrivateKey {
    EscrowKem::gen_keypair().0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 8410 §10.1's Ed25519 public key: a well-formed SPKI of another algorithm.
    const ED25519_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";

    fn key_pair() -> (RecoverySecret, RecoveryPublicKey) {
        RecoverySecret::generate()
    }

    #[test]
    fn the_public_key_round_trips_through_der_and_pem() {
        let (_, public_key) = key_pair();
        let der = public_key.spki_der();
        assert_eq!(der.len(), 44);
        assert_eq!(RecoveryPublicKey::from_spki_der(&der).expect("der"), public_key);
        let pem_text = public_key.to_pem();
        assert!(pem_text.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert_eq!(RecoveryPublicKey::from_pem(&pem_text).expect("pem"), public_key);
        assert_eq!(public_key.fingerprint(), hex::encode(Sha256::digest(&der)));
        assert_eq!(public_key.fingerprint().len(), 64);
        assert!(!format!("{public_key:?}").contains(&hex::encode(public_key.key)));
    }

    #[test]
    fn other_keys_and_encodings_are_refused() {
        let (_, public_key) = key_pair();
        let der = public_key.spki_der();
        let refused = |bytes: &[u8]| matches!(RecoveryPublicKey::from_spki_der(bytes), Err(EscrowError::BadKey(_)));
        assert!(refused(&[]));
        assert!(refused(&der[..43]));
        assert!(refused(&[der.as_slice(), &[0]].concat()));
        // Ed25519 (1.3.101.112) and X448 (1.3.101.111) are other algorithms.
        let ed25519 = RecoveryPublicKey::from_pem(ED25519_PEM);
        assert!(matches!(&ed25519, Err(EscrowError::BadKey(reason)) if reason.contains("1.3.101.112")));
        let mut x448_oid = der.clone();
        x448_oid[8] = 0x6f;
        assert!(refused(&x448_oid));
        // NULL parameters, as some encoders add for RSA.
        let with_null = [
            &[
                0x30, 0x2c, 0x30, 0x07, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x05, 0x00, 0x03, 0x21, 0x00,
            ][..],
            &der[12..],
        ]
        .concat();
        assert!(
            matches!(RecoveryPublicKey::from_spki_der(&with_null), Err(EscrowError::BadKey(reason)) if reason.contains("parameters"))
        );
        // A 31-byte key, and the long-form length BER allows but DER does not.
        let short = [
            &[0x30, 0x29, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x20, 0x00][..],
            &der[12..43],
        ]
        .concat();
        assert!(refused(&short));
        let long_form = [&[0x30, 0x81, 0x2a][..], &der[2..]].concat();
        assert!(refused(&long_form));
        // PEM: another label, two blocks, not PEM at all.
        let private_label = public_key.to_pem().replace("PUBLIC KEY", "PRIVATE KEY");
        assert!(matches!(
            RecoveryPublicKey::from_pem(&private_label),
            Err(EscrowError::BadKey(_))
        ));
        let two = format!("{}{}", public_key.to_pem(), public_key.to_pem());
        assert!(
            matches!(RecoveryPublicKey::from_pem(&two), Err(EscrowError::BadKey(reason)) if reason.contains("2 PEM"))
        );
        assert!(matches!(
            RecoveryPublicKey::from_pem("hello"),
            Err(EscrowError::BadKey(_))
        ));
    }

    #[test]
    fn a_blob_has_the_documented_layout() {
        let (secret, public_key) = key_pair();
        let payload = b"a PKCS#8 key".as_slice();
        let blob = seal(&public_key, "alice", payload).expect("seal");
        assert_eq!(blob.len(), 8 + 1 + 32 + 32 + payload.len() + 16);
        assert_eq!(&blob[..8], b"e2ee-esc");
        assert_eq!(blob[8], 1);
        assert_eq!(hex::encode(&blob[9..41]), public_key.fingerprint());
        assert_eq!(*open(&secret, "alice", &blob).expect("open"), payload);
        // A fresh ephemeral key each time.
        assert_ne!(seal(&public_key, "alice", payload).expect("seal"), blob);
    }

    #[test]
    fn a_blob_for_another_user_does_not_open() {
        let (secret, public_key) = key_pair();
        let blob = seal(&public_key, "alice", b"key").expect("seal");
        assert!(matches!(open(&secret, "bob", &blob), Err(EscrowError::DoesNotOpen)));
        assert!(matches!(open(&secret, "Alice", &blob), Err(EscrowError::DoesNotOpen)));
        assert!(matches!(open(&secret, "alice ", &blob), Err(EscrowError::DoesNotOpen)));
    }

    #[test]
    fn a_blob_for_another_recovery_key_is_named_as_such() {
        let (_, public_key) = key_pair();
        let (other_secret, other_public_key) = key_pair();
        let blob = seal(&public_key, "alice", b"key").expect("seal");
        match open(&other_secret, "alice", &blob) {
            Err(EscrowError::WrongRecoveryKey { blob, given }) => {
                assert_eq!(blob, public_key.fingerprint());
                assert_eq!(given, other_public_key.fingerprint());
            }
            other => panic!("expected WrongRecoveryKey, got {other:?}"),
        }
        // A header rewritten to name the other key still does not open: the fingerprint is in `info`.
        let mut rewritten = blob.clone();
        rewritten[9..41].copy_from_slice(&other_public_key.fingerprint_bytes());
        assert!(matches!(
            open(&other_secret, "alice", &rewritten),
            Err(EscrowError::DoesNotOpen)
        ));
    }

    #[test]
    fn every_altered_byte_is_refused() {
        let (secret, public_key) = key_pair();
        let blob = seal(&public_key, "alice", b"0123456789").expect("seal");
        for at in 0..blob.len() {
            let mut altered = blob.clone();
            altered[at] ^= 0x01;
            let result = open(&secret, "alice", &altered);
            match at {
                0..8 => assert!(matches!(result, Err(EscrowError::MalformedBlob(_))), "byte {at}"),
                8 => assert!(matches!(result, Err(EscrowError::UnsupportedVersion(0))), "byte {at}"),
                9..41 => assert!(matches!(result, Err(EscrowError::WrongRecoveryKey { .. })), "byte {at}"),
                _ => assert!(matches!(result, Err(EscrowError::DoesNotOpen)), "byte {at}"),
            }
        }
    }

    #[test]
    fn sizes_are_bounded() {
        let (secret, public_key) = key_pair();
        let largest = vec![7u8; MAX_PLAINTEXT_LEN];
        let blob = seal(&public_key, "alice", &largest).expect("the largest payload seals");
        assert_eq!(blob.len(), MAX_BLOB_LEN);
        assert_eq!(*open(&secret, "alice", &blob).expect("open"), largest);
        let too_large = vec![7u8; MAX_PLAINTEXT_LEN + 1];
        assert!(matches!(
            seal(&public_key, "alice", &too_large),
            Err(EscrowError::PayloadSize(_))
        ));
        assert!(matches!(
            seal(&public_key, "alice", b""),
            Err(EscrowError::PayloadSize(0))
        ));
        assert!(matches!(
            open(&secret, "alice", &[blob.as_slice(), &[0]].concat()),
            Err(EscrowError::MalformedBlob(_))
        ));
        for length in [0, 8, 9, HEADER_LEN, HEADER_LEN + TAG_LEN] {
            assert!(
                matches!(
                    open(&secret, "alice", &blob[..length]),
                    Err(EscrowError::MalformedBlob(_))
                ),
                "length {length}"
            );
        }
        let longest_id = "a".repeat(MAX_USER_ID_LEN);
        let blob = seal(&public_key, &longest_id, b"key").expect("seal");
        assert_eq!(*open(&secret, &longest_id, &blob).expect("open"), b"key");
        let too_long_id = "a".repeat(MAX_USER_ID_LEN + 1);
        assert!(matches!(
            seal(&public_key, &too_long_id, b"key"),
            Err(EscrowError::UserId(_))
        ));
        assert!(matches!(seal(&public_key, "", b"key"), Err(EscrowError::UserId(0))));
        assert!(matches!(open(&secret, "", &blob), Err(EscrowError::UserId(0))));
    }

    #[test]
    fn a_low_order_recovery_key_is_refused_when_sealing() {
        // The all-zero u-coordinate is a point of small order: every DH with it is all zeros.
        let der = [X25519_SPKI_PREFIX.as_slice(), &[0u8; 32]].concat();
        let public_key = RecoveryPublicKey::from_spki_der(&der).expect("it parses as a key");
        assert!(matches!(
            seal(&public_key, "alice", b"key"),
            Err(EscrowError::BadKey(_))
        ));
    }

    #[test]
    fn errors_do_not_show_keys() {
        let (secret, public_key) = key_pair();
        let blob = seal(&public_key, "alice", b"secret payload").expect("seal");
        let error = open(&secret, "bob", &blob).expect_err("another user");
        assert!(!error.to_string().contains("secret payload"));
        assert_eq!(format!("{secret:?}"), "RecoverySecret(<secret>)");
    }

    #[test]
    fn independent_blob_vectors() {
        let cases = shares::tests::vector_cases(include_str!("../../testdata/escrow/blobs.txt"));
        assert_eq!(cases.len(), 10);
        for case in cases {
            let name = &case["name"];
            let secret = RecoverySecret::from_bytes(&hex::decode(&case["secret"]).expect("hex")).expect(name);
            let public_key = RecoveryPublicKey::from_spki_der(&hex::decode(&case["spki"]).expect("hex")).expect(name);
            assert_eq!(secret.public_key(), public_key, "{name}");
            let blob = hex::decode(&case["blob"]).expect("hex");
            let result = open(&secret, &case["user_id"], &blob);
            match (case["expect"].as_str(), result) {
                ("opens", Ok(payload)) => assert_eq!(hex::encode(&*payload), case["payload"], "{name}"),
                ("does-not-open", Err(EscrowError::DoesNotOpen))
                | ("wrong-recovery-key", Err(EscrowError::WrongRecoveryKey { .. }))
                | ("unsupported-version", Err(EscrowError::UnsupportedVersion(2)))
                | ("malformed", Err(EscrowError::MalformedBlob(_))) => {}
                (expect, result) => panic!("{name}: expected {expect}, got {result:?}"),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn seal_then_open_round_trips(
            user_id in "[\\PC]{1,40}",
            other_user_id in "[\\PC]{1,40}",
            payload in proptest::collection::vec(any::<u8>(), 1..3000),
        ) {
            let (secret, public_key) = key_pair();
            let blob = seal(&public_key, &user_id, &payload).expect("seal");
            prop_assert_eq!(&*open(&secret, &user_id, &blob).expect("open"), &payload);
            if other_user_id != user_id {
                prop_assert!(matches!(open(&secret, &other_user_id, &blob), Err(EscrowError::DoesNotOpen)));
            }
        }

        #[test]
        fn open_never_panics_on_arbitrary_bytes(tail in proptest::collection::vec(any::<u8>(), 0..200)) {
            let (secret, _) = key_pair();
            let blob = [MAGIC.as_slice(), &[VERSION], &tail].concat();
            prop_assert!(open(&secret, "alice", &blob).is_err());
            prop_assert!(open(&secret, "alice", &tail).is_err());
        }
    }
}
