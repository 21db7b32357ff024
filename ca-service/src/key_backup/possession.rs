//! Proofs of possession: the text a client signs with its pinned key before it may write its key
//! material (key_backup.proto documents it for clients), and the check of that signature.
//!
//! The text names its purpose, the user, the server's nonce and the SHA-256 of the payload, so a
//! proof is good for one write of one payload by one user, once.

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use sha2::{Digest, Sha256};
use x509_parser::oid_registry;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::{Nonce, Purpose};
use crate::identity::UserId;

/// The first line of every proof text.
const FORMAT_LINE: &str = "e2ee-ca proof-of-possession v1";

impl Purpose {
    /// The `purpose` line's value.
    pub fn name(self) -> &'static str {
        match self {
            Purpose::KeyBackup => "key-backup",
            Purpose::Escrow => "escrow",
        }
    }
}

/// The exact bytes a client signs to write `payload` for `user` under `nonce`.
pub fn proof_text(purpose: Purpose, user: &UserId, nonce: &Nonce, payload: &[u8]) -> Vec<u8> {
    format!(
        "{FORMAT_LINE}\npurpose {}\nuser {user}\nnonce {}\nsha256 {}\n",
        purpose.name(),
        hex::encode(nonce.as_bytes()),
        hex::encode(Sha256::digest(payload)),
    )
    .into_bytes()
}

/// True when `signature` is a signature of `message` by the key `spki_der`: RSASSA-PKCS1-v1_5
/// with SHA-256 for RSA (2048 to 8192 bits), ECDSA (DER) with SHA-256 for P-256 and SHA-384 for
/// P-384. Any other key cannot prove anything.
pub fn verifies(spki_der: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let Ok((rest, spki)) = SubjectPublicKeyInfo::from_der(spki_der) else {
        return false;
    };
    if !rest.is_empty() {
        return false;
    }
    let algorithm: &'static dyn VerificationAlgorithm =
        if spki.algorithm.algorithm == oid_registry::OID_PKCS1_RSAENCRYPTION {
            &signature::RSA_PKCS1_2048_8192_SHA256
        } else if spki.algorithm.algorithm == oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|parameters| parameters.as_oid().ok());
            match curve {
                Some(curve) if curve == oid_registry::OID_EC_P256 => &signature::ECDSA_P256_SHA256_ASN1,
                Some(curve) if curve == oid_registry::OID_NIST_EC_P384 => &signature::ECDSA_P384_SHA384_ASN1,
                _ => return false,
            }
        } else {
            return false;
        };
    UnparsedPublicKey::new(algorithm, spki.subject_public_key.data.as_ref())
        .verify(message, signature)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair};
    use rcgen::PublicKeyData;

    #[test]
    fn the_proof_text_is_what_the_proto_documents() {
        let user = UserId::parse("alice").expect("user");
        let nonce = Nonce::parse(&[0xab; 32]).expect("nonce");
        let text = proof_text(Purpose::KeyBackup, &user, &nonce, b"blob");
        let expected = format!(
            "e2ee-ca proof-of-possession v1\npurpose key-backup\nuser alice\nnonce {}\nsha256 {}\n",
            "ab".repeat(32),
            "fa2c8cc4f28176bbeed4b736df569a34c79cd3723e9ec42f9674b4d46ac6b8b8"
        );
        assert_eq!(String::from_utf8(text).expect("utf-8"), expected);
    }

    #[test]
    fn only_a_signature_by_the_key_over_exactly_the_text_verifies() {
        let random = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &random).expect("key");
        let key = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).expect("key");
        let spki = rcgen::KeyPair::try_from(pkcs8.as_ref())
            .expect("rcgen key")
            .subject_public_key_info();
        assert!(spki.ends_with(key.public_key().as_ref()), "the SPKI holds the key");
        let message = b"the proof text";
        let signed = key.sign(&random, message).expect("sign");
        assert!(verifies(&spki, message, signed.as_ref()));
        assert!(!verifies(&spki, b"another text", signed.as_ref()));
        let mut forged = signed.as_ref().to_vec();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(!verifies(&spki, message, &forged));
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        assert!(
            !verifies(&other.subject_public_key_info(), message, signed.as_ref()),
            "another key"
        );
        assert!(!verifies(b"not a key", message, signed.as_ref()));
    }
}
