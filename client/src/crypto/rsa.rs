//! RSA-OAEP with SHA-256 and MGF1-SHA-256 (empty label): how Nextcloud wraps metadata and file-drop keys.

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, OaepPublicEncryptingKey, PrivateDecryptingKey,
    PublicEncryptingKey,
};
use zeroize::Zeroizing;

use super::CryptoError;

/// An RSA public key that encrypts with OAEP-SHA256.
#[derive(Clone)]
pub struct RsaPublicKey {
    /// Kept unbound so the type can be `Clone`; bound to OAEP for each encryption.
    key: PublicEncryptingKey,
    spki_der: Vec<u8>,
}

impl std::fmt::Debug for RsaPublicKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "RsaPublicKey({} bits)", self.key.key_size_bits())
    }
}

impl RsaPublicKey {
    /// Parses a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(spki_der: &[u8]) -> Result<RsaPublicKey, CryptoError> {
        let public =
            PublicEncryptingKey::from_der(spki_der).map_err(|error| CryptoError::InvalidRsaKey(error.to_string()))?;
        RsaPublicKey::from_aws(public)
    }

    /// The public key certified by a PEM certificate (any signature algorithm, serial 0 tolerated).
    pub fn from_certificate_pem(certificate_pem: &str) -> Result<RsaPublicKey, CryptoError> {
        let block =
            pem::parse(certificate_pem).map_err(|_| CryptoError::InvalidRsaKey("the certificate is not PEM".into()))?;
        let (_, certificate) = x509_parser::parse_x509_certificate(block.contents())
            .map_err(|error| CryptoError::InvalidRsaKey(format!("cannot parse the certificate: {error}")))?;
        RsaPublicKey::from_spki_der(certificate.public_key().raw)
    }

    fn from_aws(public: PublicEncryptingKey) -> Result<RsaPublicKey, CryptoError> {
        let spki_der = AsDer::<PublicKeyX509Der>::as_der(&public)
            .map_err(|_| CryptoError::Backend("SPKI encoding"))?
            .as_ref()
            .to_vec();
        Ok(RsaPublicKey { key: public, spki_der })
    }

    /// The DER SubjectPublicKeyInfo, to compare with a certificate's.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// Verifies an RSASSA-PKCS1-v1_5 signature with SHA-256 over `message` (CMS metadata signatures).
    pub fn verify_pkcs1_sha256(&self, message: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256, &self.spki_der)
            .verify(message, signature)
            .map_err(|_| CryptoError::BadSignature)
    }

    /// Encrypts `plaintext` (a 16-byte key, in practice) with RSA-OAEP-SHA256/MGF1-SHA256 and an empty label.
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let oaep_key = OaepPublicEncryptingKey::new(self.key.clone())
            .map_err(|error| CryptoError::InvalidRsaKey(error.to_string()))?;
        let mut ciphertext = vec![0u8; oaep_key.ciphertext_size()];
        let written = oaep_key
            .encrypt(&OAEP_SHA256_MGF1SHA256, plaintext, &mut ciphertext, None)
            .map_err(|_| CryptoError::InvalidLength {
                what: "RSA-OAEP plaintext",
                length: plaintext.len(),
            })?
            .len();
        ciphertext.truncate(written);
        Ok(ciphertext)
    }
}

/// An RSA private key that decrypts RSA-OAEP-SHA256. Its PKCS#8 encoding is zeroized on drop.
pub struct RsaPrivateKey {
    key: OaepPrivateDecryptingKey,
    public: RsaPublicKey,
    pkcs8_der: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for RsaPrivateKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "RsaPrivateKey({} bits, <secret>)", self.key.key_size_bits())
    }
}

impl RsaPrivateKey {
    /// A fresh RSA-2048 key, the size every Nextcloud client uses.
    pub fn generate_2048() -> Result<RsaPrivateKey, CryptoError> {
        let private =
            PrivateDecryptingKey::generate(KeySize::Rsa2048).map_err(|_| CryptoError::Backend("RSA keygen"))?;
        RsaPrivateKey::from_aws(private)
    }

    /// Parses an unencrypted PKCS#8 DER private key.
    pub fn from_pkcs8_der(pkcs8_der: &[u8]) -> Result<RsaPrivateKey, CryptoError> {
        let private = PrivateDecryptingKey::from_pkcs8(pkcs8_der)
            .map_err(|error| CryptoError::InvalidRsaKey(error.to_string()))?;
        RsaPrivateKey::from_aws(private)
    }

    /// Parses a `-----BEGIN PRIVATE KEY-----` (PKCS#8) PEM.
    pub fn from_pkcs8_pem(pkcs8_pem: &str) -> Result<RsaPrivateKey, CryptoError> {
        let block = pem::parse(pkcs8_pem).map_err(|_| CryptoError::InvalidRsaKey("not PEM".into()))?;
        if block.tag() != "PRIVATE KEY" {
            return Err(CryptoError::InvalidRsaKey(format!(
                "a PEM {:?} block, not PRIVATE KEY",
                block.tag()
            )));
        }
        let der = Zeroizing::new(block.into_contents());
        RsaPrivateKey::from_pkcs8_der(&der)
    }

    fn from_aws(private: PrivateDecryptingKey) -> Result<RsaPrivateKey, CryptoError> {
        let pkcs8_der = Zeroizing::new(
            AsDer::<Pkcs8V1Der>::as_der(&private)
                .map_err(|_| CryptoError::Backend("PKCS#8 encoding"))?
                .as_ref()
                .to_vec(),
        );
        let public = RsaPublicKey::from_aws(private.public_key())?;
        let key =
            OaepPrivateDecryptingKey::new(private).map_err(|error| CryptoError::InvalidRsaKey(error.to_string()))?;
        Ok(RsaPrivateKey { key, public, pkcs8_der })
    }

    /// The matching public key.
    pub fn public_key(&self) -> &RsaPublicKey {
        &self.public
    }

    /// The PKCS#8 DER (what an escrow deposit seals).
    pub fn to_pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        self.pkcs8_der.clone()
    }

    /// The PKCS#8 PEM as Nextcloud clients write it: 64-character lines, LF line ends, a trailing LF.
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        let block = pem::Pem::new("PRIVATE KEY", self.pkcs8_der.to_vec());
        let encoded = pem::encode_config(&block, pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF));
        // `Pem` does not zeroize its buffer; clear our copy by hand.
        let mut contents = block.into_contents();
        zeroize::Zeroize::zeroize(&mut contents);
        Zeroizing::new(encoded)
    }

    /// Signs `message` with RSASSA-PKCS1-v1_5 and SHA-256 (CMS metadata signatures).
    pub fn sign_pkcs1_sha256(&self, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let key_pair = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(&self.pkcs8_der)
            .map_err(|error| CryptoError::InvalidRsaKey(error.to_string()))?;
        let mut signature = vec![0u8; key_pair.public_modulus_len()];
        key_pair
            .sign(
                &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                message,
                &mut signature,
            )
            .map_err(|_| CryptoError::Backend("RSA signing"))?;
        Ok(signature)
    }

    /// Decrypts an RSA-OAEP-SHA256/MGF1-SHA256 ciphertext with an empty label.
    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let mut plaintext = Zeroizing::new(vec![0u8; self.key.min_output_size()]);
        let written = self
            .key
            .decrypt(&OAEP_SHA256_MGF1SHA256, ciphertext, &mut plaintext, None)
            .map_err(|_| CryptoError::RsaDecryption)?
            .len();
        plaintext.truncate(written);
        Ok(plaintext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wrong_key() {
        let key = RsaPrivateKey::generate_2048().expect("keygen");
        let wrapped = key.public_key().encrypt(&[7u8; 16]).expect("encrypt");
        assert_eq!(wrapped.len(), 256);
        assert_eq!(*key.decrypt(&wrapped).expect("decrypt"), [7u8; 16]);

        let mut altered = wrapped.clone();
        altered[100] ^= 1;
        assert!(matches!(key.decrypt(&altered), Err(CryptoError::RsaDecryption)));
        let other = RsaPrivateKey::generate_2048().expect("keygen");
        assert!(matches!(other.decrypt(&wrapped), Err(CryptoError::RsaDecryption)));

        let signature = key.sign_pkcs1_sha256(b"message").expect("sign");
        assert!(key.public_key().verify_pkcs1_sha256(b"message", &signature).is_ok());
        assert!(matches!(
            key.public_key().verify_pkcs1_sha256(b"massage", &signature),
            Err(CryptoError::BadSignature)
        ));

        let reloaded = RsaPrivateKey::from_pkcs8_pem(&key.to_pkcs8_pem()).expect("reload");
        assert_eq!(reloaded.public_key().spki_der(), key.public_key().spki_der());
        let from_spki = RsaPublicKey::from_spki_der(key.public_key().spki_der()).expect("spki");
        assert_eq!(
            *reloaded
                .decrypt(&from_spki.encrypt(b"k").expect("encrypt"))
                .expect("decrypt"),
            b"k"
        );
    }

    #[test]
    fn pem_that_is_not_a_private_key_is_refused() {
        assert!(RsaPrivateKey::from_pkcs8_pem("not pem").is_err());
        let certificate = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            RsaPrivateKey::from_pkcs8_pem(certificate),
            Err(CryptoError::InvalidRsaKey(_))
        ));
    }
}
