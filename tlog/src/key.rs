//! Note verifier keys ("vkeys"): Ed25519 (type 0x01) and ECDSA P-256 (type 0x02), verified with ring.
//!
//! A vkey is `<name>+<8 hex digits of key ID>+<base64(type byte ‖ public key)>`.
//! For Ed25519 the public key is the 32-byte key, and the key ID is
//! `SHA-256(name ‖ "\n" ‖ 0x01 ‖ key)[:4]`.
//! For ECDSA it is the DER SubjectPublicKeyInfo, and the key ID is `SHA-256(SPKI)[:4]`: neither
//! the name nor the type byte is hashed in (the transparency-dev and Sigstore convention).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::signature::{ECDSA_P256_SHA256_ASN1, ED25519, UnparsedPublicKey};

use crate::note::{KeyId, KeyName};

/// Signature type byte of Ed25519 notes.
const TYPE_ED25519: u8 = 0x01;
/// Signature type byte of ECDSA notes.
const TYPE_ECDSA: u8 = 0x02;

/// DER prefix of a P-256 SubjectPublicKeyInfo holding an uncompressed point: SEQUENCE {
/// SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (no unused bits) }; the 65-byte point
/// `04 ‖ X ‖ Y` follows.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
    0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// Length of an uncompressed P-256 point.
const P256_POINT_LENGTH: usize = 65;

/// Why a verifier key could not be parsed or built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The vkey is not three '+'-separated fields.
    #[error("a vkey is <name>+<hex key ID>+<base64 key>")]
    Malformed,
    /// The key name is invalid.
    #[error(transparent)]
    InvalidKeyName(#[from] crate::note::InvalidKeyName),
    /// The key ID is not 8 hex digits.
    #[error("the key ID is not 8 hex digits")]
    InvalidKeyId,
    /// The key material is not valid base64, or is empty.
    #[error("the key material is not valid base64")]
    InvalidBase64,
    /// The signature type byte is not one this crate verifies (0x01, 0x02).
    #[error("unsupported signature type {0:#04x}")]
    UnsupportedType(u8),
    /// The public key has the wrong length or encoding (ECDSA: not an uncompressed P-256 SPKI).
    #[error("invalid public key")]
    InvalidPublicKey,
    /// The key ID in the vkey is not the one derived from the name and key.
    #[error("the vkey says key ID {stated}, the key derives {derived}")]
    KeyIdMismatch {
        /// The key ID written in the vkey.
        stated: KeyId,
        /// The key ID derived from the key.
        derived: KeyId,
    },
}

/// A public key that verifies note signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: KeyName,
    key_id: KeyId,
    public_key: PublicKey,
}

/// The key material, by signature type.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PublicKey {
    /// A 32-byte Ed25519 public key.
    Ed25519([u8; 32]),
    /// The DER SPKI of a P-256 key; invariant: [`P256_SPKI_PREFIX`] then an uncompressed point.
    EcdsaP256(Vec<u8>),
}

impl VerifierKey {
    /// Parses a vkey and checks that its key ID matches its name and key.
    pub fn parse(vkey: &str) -> Result<Self, KeyError> {
        // The base64 key material may itself contain '+'; the name and key ID cannot.
        let mut fields = vkey.splitn(3, '+');
        let (Some(name), Some(key_id), Some(material)) = (fields.next(), fields.next(), fields.next()) else {
            return Err(KeyError::Malformed);
        };
        let name = KeyName::new(name)?;
        let stated = parse_key_id(key_id)?;
        let material = BASE64.decode(material).map_err(|_| KeyError::InvalidBase64)?;
        let (&key_type, public_key) = material.split_first().ok_or(KeyError::InvalidBase64)?;
        let key = match key_type {
            TYPE_ED25519 => {
                let public_key = public_key.try_into().map_err(|_| KeyError::InvalidPublicKey)?;
                VerifierKey::ed25519(name, public_key)
            }
            TYPE_ECDSA => VerifierKey::ecdsa_p256(name, public_key)?,
            other => return Err(KeyError::UnsupportedType(other)),
        };
        if key.key_id != stated {
            return Err(KeyError::KeyIdMismatch {
                stated,
                derived: key.key_id,
            });
        }
        Ok(key)
    }

    /// An Ed25519 verifier key, with the recommended key ID derivation.
    pub fn ed25519(name: KeyName, public_key: [u8; 32]) -> Self {
        let key_id = derive_key_id(&[name.as_str().as_bytes(), b"\n", &[TYPE_ED25519], &public_key]);
        VerifierKey {
            name,
            key_id,
            public_key: PublicKey::Ed25519(public_key),
        }
    }

    /// An ECDSA P-256 verifier key from its DER SubjectPublicKeyInfo (uncompressed point only);
    /// the key ID is `SHA-256(SPKI)[:4]`.
    pub fn ecdsa_p256(name: KeyName, spki_der: &[u8]) -> Result<Self, KeyError> {
        let is_p256_spki = spki_der.len() == P256_SPKI_PREFIX.len() + P256_POINT_LENGTH
            && spki_der.starts_with(&P256_SPKI_PREFIX)
            && spki_der[P256_SPKI_PREFIX.len()] == 0x04;
        if !is_p256_spki {
            return Err(KeyError::InvalidPublicKey);
        }
        Ok(VerifierKey {
            name,
            key_id: derive_key_id(&[spki_der]),
            public_key: PublicKey::EcdsaP256(spki_der.to_vec()),
        })
    }

    /// The key name.
    pub fn name(&self) -> &KeyName {
        &self.name
    }

    /// The key ID.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// Whether `signature` (the bytes after the key ID on a signature line) signs `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.public_key {
            PublicKey::Ed25519(public_key) => UnparsedPublicKey::new(&ED25519, public_key)
                .verify(message, signature)
                .is_ok(),
            // ring's P-256/SHA-256 ASN.1 algorithm hashes the message and checks the DER
            // signature, which is exactly the note's ECDSA rule.
            PublicKey::EcdsaP256(spki) => {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &spki[P256_SPKI_PREFIX.len()..])
                    .verify(message, signature)
                    .is_ok()
            }
        }
    }
}

impl fmt::Display for VerifierKey {
    /// The vkey text.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut material = Vec::new();
        match &self.public_key {
            PublicKey::Ed25519(public_key) => {
                material.push(TYPE_ED25519);
                material.extend_from_slice(public_key);
            }
            PublicKey::EcdsaP256(spki) => {
                material.push(TYPE_ECDSA);
                material.extend_from_slice(spki);
            }
        }
        write!(formatter, "{}+{}+{}", self.name, self.key_id, BASE64.encode(material))
    }
}

/// The DER SubjectPublicKeyInfo of a P-256 key given its uncompressed point `04 ‖ X ‖ Y`
/// (what PKCS#11 `CKA_EC_POINT` wraps in an OCTET STRING).
pub fn p256_spki_der(uncompressed_point: &[u8]) -> Result<Vec<u8>, KeyError> {
    if uncompressed_point.len() != P256_POINT_LENGTH || uncompressed_point[0] != 0x04 {
        return Err(KeyError::InvalidPublicKey);
    }
    let mut spki = P256_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(uncompressed_point);
    Ok(spki)
}

/// Re-encodes a fixed-size P-256 ECDSA signature `r ‖ s` (what PKCS#11 `CKM_ECDSA` returns) as the
/// ASN.1 DER `SEQUENCE { INTEGER r, INTEGER s }` that notes carry.
pub fn ecdsa_der_signature(fixed: &[u8; 64]) -> Vec<u8> {
    let (r, s) = fixed.split_at(32);
    let r = der_unsigned_integer(r);
    let s = der_unsigned_integer(s);
    // At most 2 × (2 + 33) = 70 content bytes, so the short length form always applies.
    let mut der = vec![0x30, (r.len() + s.len()) as u8];
    der.extend_from_slice(&r);
    der.extend_from_slice(&s);
    der
}

/// DER INTEGER of a big-endian unsigned value of at most 32 bytes: minimal, and positive.
fn der_unsigned_integer(value: &[u8]) -> Vec<u8> {
    let first_nonzero = value.iter().position(|&byte| byte != 0);
    let digits = match first_nonzero {
        Some(position) => &value[position..],
        None => &[0u8][..],
    };
    let needs_pad = digits[0] & 0x80 != 0;
    let mut integer = vec![0x02, (digits.len() + usize::from(needs_pad)) as u8];
    if needs_pad {
        integer.push(0x00);
    }
    integer.extend_from_slice(digits);
    integer
}

/// First 4 bytes of SHA-256 over the concatenation of `parts`.
fn derive_key_id(parts: &[&[u8]]) -> KeyId {
    let digest = crate::merkle::sha256(parts);
    KeyId([digest[0], digest[1], digest[2], digest[3]])
}

/// Parses exactly 8 hex digits.
fn parse_key_id(text: &str) -> Result<KeyId, KeyError> {
    if text.len() != 8 || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(KeyError::InvalidKeyId);
    }
    let value = u32::from_str_radix(text, 16).map_err(|_| KeyError::InvalidKeyId)?;
    Ok(KeyId(value.to_be_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{EcdsaEncoding, EcdsaSigner};

    const PETER: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";

    #[test]
    fn vkeys_round_trip() {
        let ed25519 = VerifierKey::parse(PETER).expect("parses");
        assert_eq!(ed25519.name().as_str(), "PeterNeumann");
        assert_eq!(ed25519.key_id().to_string(), "c74f20a3");
        assert_eq!(ed25519.to_string(), PETER);

        let ecdsa = EcdsaSigner::new("ca.example.org/audit/v1", EcdsaEncoding::Der).verifier();
        let vkey = ecdsa.to_string();
        assert!(vkey.starts_with("ca.example.org/audit/v1+"));
        assert_eq!(VerifierKey::parse(&vkey), Ok(ecdsa));
    }

    #[test]
    fn ecdsa_key_id_hashes_only_the_spki() {
        let verifier = EcdsaSigner::new("any/name", EcdsaEncoding::Der).verifier();
        let PublicKey::EcdsaP256(spki) = &verifier.public_key else {
            panic!("an ECDSA key");
        };
        let digest = crate::merkle::sha256(&[spki]);
        assert_eq!(verifier.key_id().0, digest[..4]);
        // Renaming the key keeps its ID, unlike the Ed25519 derivation.
        let renamed = VerifierKey::ecdsa_p256(KeyName::new("other").expect("valid"), spki).expect("same key");
        assert_eq!(renamed.key_id(), verifier.key_id());
    }

    #[test]
    fn malformed_vkeys_are_rejected() {
        let (name, rest) = PETER.split_once('+').expect("has fields");
        let (_, material) = rest.split_once('+').expect("has fields");
        let cases = [
            ("PeterNeumann+c74f20a3".to_owned(), KeyError::Malformed),
            (format!("{PETER}+extra"), KeyError::InvalidBase64),
            (
                format!("+c74f20a3+{material}"),
                KeyError::InvalidKeyName(crate::note::InvalidKeyName(String::new())),
            ),
            (format!("{name}+c74f20a+{material}"), KeyError::InvalidKeyId),
            (format!("{name}+-74f20a3+{material}"), KeyError::InvalidKeyId),
            (format!("{name}+c74f20a3+not base64"), KeyError::InvalidBase64),
            (format!("{name}+c74f20a3+"), KeyError::InvalidBase64),
            (
                format!("{name}+c74f20a3+{}", BASE64.encode([4u8; 33])),
                KeyError::UnsupportedType(4),
            ),
            (
                format!("{name}+c74f20a3+{}", BASE64.encode([1u8; 32])),
                KeyError::InvalidPublicKey,
            ),
            (
                format!("{name}+c74f20a3+{}", BASE64.encode([2u8; 92])),
                KeyError::InvalidPublicKey,
            ),
            (
                format!("Peter+c74f20a3+{material}"),
                KeyError::KeyIdMismatch {
                    stated: KeyId([0xc7, 0x4f, 0x20, 0xa3]),
                    derived: VerifierKey::parse(PETER)
                        .map(|key| {
                            VerifierKey::ed25519(
                                KeyName::new("Peter").expect("valid"),
                                match key.public_key {
                                    PublicKey::Ed25519(bytes) => bytes,
                                    PublicKey::EcdsaP256(_) => [0; 32],
                                },
                            )
                            .key_id()
                        })
                        .expect("parses"),
                },
            ),
        ];
        for (vkey, expected) in cases {
            assert_eq!(VerifierKey::parse(&vkey), Err(expected), "{vkey}");
        }
    }

    #[test]
    fn p256_points_and_signatures_are_encoded_strictly() {
        assert_eq!(p256_spki_der(&[4u8; 64]), Err(KeyError::InvalidPublicKey));
        let mut compressed = [0u8; 65];
        compressed[0] = 0x02;
        assert_eq!(p256_spki_der(&compressed), Err(KeyError::InvalidPublicKey));

        // r with its high bit set gains a zero byte; s with leading zeros loses them.
        let mut fixed = [0u8; 64];
        fixed[0] = 0x80;
        fixed[63] = 0x05;
        let der = ecdsa_der_signature(&fixed);
        let mut expected = vec![0x30, 38, 0x02, 33, 0x00, 0x80];
        expected.extend_from_slice(&[0u8; 31]);
        expected.extend_from_slice(&[0x02, 1, 0x05]);
        assert_eq!(der, expected);
        assert_eq!(ecdsa_der_signature(&[0u8; 64]), [0x30, 6, 2, 1, 0, 2, 1, 0]);
    }
}
