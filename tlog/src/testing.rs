//! Software note signers for this crate's unit tests (the real signer is an HSM elsewhere).

use std::convert::Infallible;

use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
};

use crate::key::{VerifierKey, ecdsa_der_signature, p256_spki_der};
use crate::note::{KeyId, KeyName, NoteSigner};

/// An Ed25519 signer from a fixed seed, so its signatures are reproducible.
pub(crate) struct Ed25519Signer {
    key_pair: Ed25519KeyPair,
    verifier: VerifierKey,
}

impl Ed25519Signer {
    pub(crate) fn new(name: &str, seed: u8) -> Self {
        let key_pair = Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).expect("valid seed");
        let public_key = key_pair.public_key().as_ref().try_into().expect("32 bytes");
        let verifier = VerifierKey::ed25519(KeyName::new(name).expect("valid name"), public_key);
        Ed25519Signer { key_pair, verifier }
    }

    pub(crate) fn verifier(&self) -> VerifierKey {
        self.verifier.clone()
    }
}

impl NoteSigner for Ed25519Signer {
    type Error = Infallible;

    fn key_name(&self) -> &KeyName {
        self.verifier.name()
    }

    fn key_id(&self) -> KeyId {
        self.verifier.key_id()
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Infallible> {
        Ok(self.key_pair.sign(message).as_ref().to_vec())
    }
}

/// How the ECDSA test signer produces its DER signature.
#[derive(Clone, Copy)]
pub(crate) enum EcdsaEncoding {
    /// ring signs straight to ASN.1 DER.
    Der,
    /// ring signs to fixed r‖s, as PKCS#11 does, and [`ecdsa_der_signature`] re-encodes it.
    FixedThenReencoded,
}

/// A P-256 signer with a fresh random key.
pub(crate) struct EcdsaSigner {
    key_pair: EcdsaKeyPair,
    encoding: EcdsaEncoding,
    random: SystemRandom,
    verifier: VerifierKey,
}

impl EcdsaSigner {
    pub(crate) fn new(name: &str, encoding: EcdsaEncoding) -> Self {
        let random = SystemRandom::new();
        let algorithm = match encoding {
            EcdsaEncoding::Der => &ECDSA_P256_SHA256_ASN1_SIGNING,
            EcdsaEncoding::FixedThenReencoded => &ECDSA_P256_SHA256_FIXED_SIGNING,
        };
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(algorithm, &random).expect("key generation");
        let key_pair = EcdsaKeyPair::from_pkcs8(algorithm, pkcs8.as_ref(), &random).expect("own key");
        let spki = p256_spki_der(key_pair.public_key().as_ref()).expect("uncompressed point");
        let verifier = VerifierKey::ecdsa_p256(KeyName::new(name).expect("valid name"), &spki).expect("spki");
        EcdsaSigner {
            key_pair,
            encoding,
            random,
            verifier,
        }
    }

    pub(crate) fn verifier(&self) -> VerifierKey {
        self.verifier.clone()
    }
}

impl NoteSigner for EcdsaSigner {
    type Error = ring::error::Unspecified;

    fn key_name(&self) -> &KeyName {
        self.verifier.name()
    }

    fn key_id(&self) -> KeyId {
        self.verifier.key_id()
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Self::Error> {
        let signature = self.key_pair.sign(&self.random, message)?;
        Ok(match self.encoding {
            EcdsaEncoding::Der => signature.as_ref().to_vec(),
            EcdsaEncoding::FixedThenReencoded => ecdsa_der_signature(signature.as_ref().try_into().expect("64 bytes")),
        })
    }
}
