//! AES-GCM with the 96- and 128-bit nonces Nextcloud clients write, one-shot and streaming.
//!
//! aws-lc-rs's AEAD API accepts only 96-bit nonces and whole messages, and its `cipher` API has no GCM mode.
//! Nextcloud's desktop, Android and iOS clients use 128-bit nonces for files and metadata
//! (nextcloud-e2ee.md §2.3, §3), the web client 96-bit ones, and files must stream. So:
//! * one-shot calls with a 96-bit nonce go straight to aws-lc-rs's AES-GCM;
//! * everything else (128-bit nonces, and all streaming) goes through the `gcm-stream` crate: aws-lc's EVP
//!   AES-GCM, the same stitched one-pass AES-CTR + GHASH code as aws-lc-rs's AEAD, fed incrementally.
//!   That crate holds the FFI, so this one stays free of `unsafe`.
//!
//! GCM's counter is `inc32`: only the low 32 bits of the counter block count, wrapping to zero without
//! carrying into the upper 96 bits. With a random 128-bit nonce the low word of the pre-counter block J0
//! is random, so a wrap inside a large file is routine (a 64 MiB file crosses it with probability 2^-10).
//!
//! The tests cross-check the streaming path against aws-lc-rs for 96-bit nonces, against Python
//! `cryptography` (OpenSSL) for 128-bit ones, and across the counter wrap against a block-at-a-time
//! reference built here from the AES block function and SP 800-38D's bit-serial GHASH.

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::Zeroizing;

use super::{CryptoError, constant_time_eq, fill_random};

/// Length of the GCM authentication tag (128 bits, the only size Nextcloud uses).
pub const TAG_LEN: usize = 16;

/// An AES key of `N` bytes: 16 (AES-128: metadata, files, file drop) or 32 (AES-256: private-key wrapping).
/// Zeroized on drop.
#[derive(Clone)]
pub struct AesKey<const N: usize>(Zeroizing<[u8; N]>);

/// An AES-128 key.
pub type Aes128Key = AesKey<16>;
/// An AES-256 key.
pub type Aes256Key = AesKey<32>;

impl<const N: usize> AesKey<N> {
    /// A fresh random key.
    pub fn generate() -> Result<AesKey<N>, CryptoError> {
        let mut bytes = Zeroizing::new([0u8; N]);
        fill_random(bytes.as_mut())?;
        AesKey::from_array(bytes)
    }

    /// The key with these bytes; fails unless there are exactly `N`.
    pub fn from_slice(bytes: &[u8]) -> Result<AesKey<N>, CryptoError> {
        let mut array = Zeroizing::new([0u8; N]);
        if bytes.len() != N {
            return Err(CryptoError::InvalidLength {
                what: "AES key",
                length: bytes.len(),
            });
        }
        array.copy_from_slice(bytes);
        AesKey::from_array(array)
    }

    fn from_array(bytes: Zeroizing<[u8; N]>) -> Result<AesKey<N>, CryptoError> {
        // Only AES-128 and AES-256 exist in these formats; refuse other widths at construction.
        if N != 16 && N != 32 {
            return Err(CryptoError::InvalidLength {
                what: "AES key",
                length: N,
            });
        }
        Ok(AesKey(bytes))
    }

    /// The raw key bytes, e.g. to base64 them into metadata.
    pub fn as_bytes(&self) -> &[u8; N] {
        &self.0
    }

    fn aead_algorithm() -> &'static aead::Algorithm {
        if N == 16 {
            &aead::AES_128_GCM
        } else {
            &aead::AES_256_GCM
        }
    }
}

impl<const N: usize> PartialEq for AesKey<N> {
    fn eq(&self, other: &AesKey<N>) -> bool {
        constant_time_eq(self.0.as_ref(), other.0.as_ref())
    }
}

impl<const N: usize> Eq for AesKey<N> {}

impl<const N: usize> std::fmt::Debug for AesKey<N> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "AesKey<{N}>(<secret>)")
    }
}

/// A GCM nonce (IV) of 12 or 16 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct GcmNonce {
    bytes: [u8; 16],
    len: usize,
}

impl GcmNonce {
    /// A fresh random 16-byte nonce: what the desktop, Android and iOS clients write.
    pub fn random16() -> Result<GcmNonce, CryptoError> {
        let mut bytes = [0u8; 16];
        fill_random(&mut bytes)?;
        Ok(GcmNonce { bytes, len: 16 })
    }

    /// A fresh random 12-byte nonce: what the private-key blob and the web client use.
    pub fn random12() -> Result<GcmNonce, CryptoError> {
        let mut bytes = [0u8; 16];
        fill_random(&mut bytes[..12])?;
        Ok(GcmNonce { bytes, len: 12 })
    }

    /// The nonce with these bytes; fails unless there are 12 or 16.
    pub fn from_slice(bytes: &[u8]) -> Result<GcmNonce, CryptoError> {
        if bytes.len() != 12 && bytes.len() != 16 {
            return Err(CryptoError::InvalidLength {
                what: "GCM nonce",
                length: bytes.len(),
            });
        }
        let mut array = [0u8; 16];
        array[..bytes.len()].copy_from_slice(bytes);
        Ok(GcmNonce {
            bytes: array,
            len: bytes.len(),
        })
    }

    /// The nonce bytes (12 or 16).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl std::fmt::Debug for GcmNonce {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "GcmNonce({})", hex::encode(self.as_bytes()))
    }
}

/// A 16-byte GCM authentication tag.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct GcmTag([u8; TAG_LEN]);

impl GcmTag {
    /// The tag with these bytes; fails unless there are 16.
    pub fn from_slice(bytes: &[u8]) -> Result<GcmTag, CryptoError> {
        let array = <[u8; TAG_LEN]>::try_from(bytes).map_err(|_| CryptoError::InvalidLength {
            what: "GCM tag",
            length: bytes.len(),
        })?;
        Ok(GcmTag(array))
    }

    /// The tag bytes.
    pub fn as_bytes(&self) -> &[u8; TAG_LEN] {
        &self.0
    }

    /// Whether `other` is this tag, compared in constant time.
    pub(crate) fn matches(&self, other: &[u8]) -> bool {
        constant_time_eq(&self.0, other)
    }
}

impl std::fmt::Debug for GcmTag {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "GcmTag({})", hex::encode(self.0))
    }
}

/// Encrypts `plaintext` with no associated data; returns ciphertext ‖ tag (the layout of every Nextcloud field).
pub fn seal<const N: usize>(key: &AesKey<N>, nonce: &GcmNonce, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut buffer = Vec::with_capacity(plaintext.len() + TAG_LEN);
    buffer.extend_from_slice(plaintext);
    if nonce.len == 12 {
        let sealing_key = aead_key(key)?;
        let aead_nonce =
            Nonce::try_assume_unique_for_key(nonce.as_bytes()).map_err(|_| CryptoError::Backend("nonce"))?;
        sealing_key
            .seal_in_place_append_tag(aead_nonce, Aad::empty(), &mut buffer)
            .map_err(|_| CryptoError::MessageTooLong)?;
    } else {
        let mut encryptor = GcmEncryptor::new(key, nonce)?;
        encryptor.encrypt_in_place(&mut buffer)?;
        let tag = encryptor.finish()?;
        buffer.extend_from_slice(tag.as_bytes());
    }
    Ok(buffer)
}

/// Decrypts ciphertext ‖ tag; returns the plaintext only if the tag verifies.
pub fn open<const N: usize>(
    key: &AesKey<N>,
    nonce: &GcmNonce,
    ciphertext_and_tag: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let Some(plaintext_len) = ciphertext_and_tag.len().checked_sub(TAG_LEN) else {
        return Err(CryptoError::Authentication);
    };
    let mut buffer = Zeroizing::new(ciphertext_and_tag.to_vec());
    if nonce.len == 12 {
        let opening_key = aead_key(key)?;
        let aead_nonce =
            Nonce::try_assume_unique_for_key(nonce.as_bytes()).map_err(|_| CryptoError::Backend("nonce"))?;
        opening_key
            .open_in_place(aead_nonce, Aad::empty(), &mut buffer)
            .map_err(|_| CryptoError::Authentication)?;
    } else {
        let mut decryptor = GcmDecryptor::new(key, nonce)?;
        decryptor.decrypt_in_place(&mut buffer[..plaintext_len])?;
        decryptor.verify(&ciphertext_and_tag[plaintext_len..])?;
    }
    buffer.truncate(plaintext_len);
    Ok(buffer)
}

fn aead_key<const N: usize>(key: &AesKey<N>) -> Result<LessSafeKey, CryptoError> {
    // "LessSafe" only because the caller supplies the nonce: Nextcloud's formats carry explicit random nonces.
    let unbound = UnboundKey::new(AesKey::<N>::aead_algorithm(), key.as_bytes())
        .map_err(|_| CryptoError::Backend("AES-GCM key"))?;
    Ok(LessSafeKey::new(unbound))
}

/// Streaming encryption of one GCM message in constant memory (one pass, through `gcm_stream`).
pub(crate) struct GcmEncryptor(gcm_stream::Encryptor);

impl GcmEncryptor {
    /// Starts a message under `key` and `nonce`.
    pub(crate) fn new<const N: usize>(key: &AesKey<N>, nonce: &GcmNonce) -> Result<GcmEncryptor, CryptoError> {
        Ok(GcmEncryptor(gcm_stream::Encryptor::new(
            key.as_bytes(),
            nonce.as_bytes(),
        )?))
    }

    /// Encrypts the next `data` in place.
    pub(crate) fn encrypt_in_place(&mut self, data: &mut [u8]) -> Result<(), CryptoError> {
        Ok(self.0.update_in_place(data)?)
    }

    /// Encrypts the next `plaintext` into `ciphertext`, which is exactly as long.
    pub(crate) fn encrypt(&mut self, plaintext: &[u8], ciphertext: &mut [u8]) -> Result<(), CryptoError> {
        Ok(self.0.update(plaintext, ciphertext)?)
    }

    /// Encrypts the next `plaintext` onto the end of `ciphertext` (no zero-filling first).
    pub(crate) fn encrypt_append(&mut self, plaintext: &[u8], ciphertext: &mut Vec<u8>) -> Result<(), CryptoError> {
        Ok(self.0.update_append(plaintext, ciphertext)?)
    }

    /// The tag over everything encrypted.
    pub(crate) fn finish(self) -> Result<GcmTag, CryptoError> {
        Ok(GcmTag(self.0.finish()?))
    }
}

/// Streaming decryption of one GCM message in constant memory (one pass, through `gcm_stream`).
///
/// Crate-private on purpose: `decrypt` releases plaintext before the tag is checked, so only code that
/// withholds that plaintext until `verify` succeeds (see `protocol::file`) may use it.
pub(crate) struct GcmDecryptor(gcm_stream::Decryptor);

impl GcmDecryptor {
    /// Starts a message under `key` and `nonce`.
    pub(crate) fn new<const N: usize>(key: &AesKey<N>, nonce: &GcmNonce) -> Result<GcmDecryptor, CryptoError> {
        Ok(GcmDecryptor(gcm_stream::Decryptor::new(
            key.as_bytes(),
            nonce.as_bytes(),
        )?))
    }

    /// Decrypts the next `data` in place. The output is unauthenticated until `verify` succeeds.
    pub(crate) fn decrypt_in_place(&mut self, data: &mut [u8]) -> Result<(), CryptoError> {
        Ok(self.0.update_in_place(data)?)
    }

    /// Decrypts the next `ciphertext` into `plaintext`, which is exactly as long. The output is unauthenticated
    /// until `verify` succeeds.
    pub(crate) fn decrypt(&mut self, ciphertext: &[u8], plaintext: &mut [u8]) -> Result<(), CryptoError> {
        Ok(self.0.update(ciphertext, plaintext)?)
    }

    /// Decrypts the next `ciphertext` onto the end of `plaintext` (no zero-filling first). The output is
    /// unauthenticated until `verify` succeeds.
    pub(crate) fn decrypt_append(&mut self, ciphertext: &[u8], plaintext: &mut Vec<u8>) -> Result<(), CryptoError> {
        Ok(self.0.update_append(ciphertext, plaintext)?)
    }

    /// Checks `received_tag` against the tag over everything decrypted, in constant time.
    pub(crate) fn verify(self, received_tag: &[u8]) -> Result<(), CryptoError> {
        let received_tag = <&[u8; TAG_LEN]>::try_from(received_tag).map_err(|_| CryptoError::Authentication)?;
        Ok(self.0.finish(received_tag)?)
    }
}

impl From<gcm_stream::GcmError> for CryptoError {
    fn from(error: gcm_stream::GcmError) -> CryptoError {
        use gcm_stream::GcmError;
        match error {
            GcmError::Authentication => CryptoError::Authentication,
            GcmError::MessageTooLong => CryptoError::MessageTooLong,
            GcmError::KeyLength(length) => CryptoError::InvalidLength {
                what: "AES key",
                length,
            },
            GcmError::NonceLength(length) => CryptoError::InvalidLength {
                what: "GCM nonce",
                length,
            },
            GcmError::Backend(what) => CryptoError::Backend(what),
            // Output-length mismatches cannot happen in place; anything newer is a backend failure to us.
            _ => CryptoError::Backend("streaming AES-GCM"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::cipher::{self, EncryptingKey, UnboundCipherKey};
    use proptest::prelude::*;

    fn unhex(text: &str) -> Vec<u8> {
        hex::decode(text).expect("hex")
    }

    /// Seals through the streaming path, whatever the nonce length (bypassing aws-lc-rs's AEAD).
    fn streamed_seal_whole<const N: usize>(key: &AesKey<N>, nonce: &GcmNonce, plaintext: &[u8]) -> Vec<u8> {
        let mut encryptor = GcmEncryptor::new(key, nonce).expect("encryptor");
        let mut buffer = plaintext.to_vec();
        encryptor.encrypt_in_place(&mut buffer).expect("encrypt");
        buffer.extend_from_slice(encryptor.finish().expect("finish").as_bytes());
        buffer
    }

    /// The reduction constant R = 11100001 || 0^120.
    const R: u128 = 0xE1 << 120;

    /// X • Y in GF(2^128), SP 800-38D algorithm 1, bit by bit (GCM's bit order: bit 0 is the most significant
    /// bit of the first byte). Slow and obviously the specification: for the reference only.
    fn multiply(x: u128, y: u128) -> u128 {
        let mut product = 0u128;
        let mut v = y;
        for bit_index in 0..128 {
            if (x >> (127 - bit_index)) & 1 == 1 {
                product ^= v;
            }
            v = if v & 1 == 1 { (v >> 1) ^ R } else { v >> 1 };
        }
        product
    }

    /// GHASH_H over whole blocks (SP 800-38D algorithm 2).
    fn hash_blocks(hash_key: &[u8; 16], blocks: &[[u8; 16]]) -> [u8; 16] {
        let h = u128::from_be_bytes(*hash_key);
        let mut y = 0u128;
        for block in blocks {
            y = multiply(y ^ u128::from_be_bytes(*block), h);
        }
        y.to_be_bytes()
    }

    /// inc32 applied `count` times: adds `count` to the last 32 bits of the counter block, modulo 2^32,
    /// leaving the first 96 bits alone (SP 800-38D §6.2).
    fn increment32(block: &mut [u8; 16], count: u64) {
        let low = u32::from_be_bytes([block[12], block[13], block[14], block[15]]).wrapping_add(count as u32);
        block[12..].copy_from_slice(&low.to_be_bytes());
    }

    /// The AES block function under `key` (aws-lc-rs's ECB), applied to `block` in place.
    fn block_cipher<const N: usize>(key: &AesKey<N>) -> impl Fn(&mut [u8; 16]) {
        let algorithm = if N == 16 { &cipher::AES_128 } else { &cipher::AES_256 };
        let ecb = EncryptingKey::ecb(UnboundCipherKey::new(algorithm, key.as_bytes()).expect("key")).expect("ecb");
        move |block: &mut [u8; 16]| {
            ecb.encrypt(block).expect("block");
        }
    }

    /// GCM block at a time from the AES block function and bit-serial GHASH, as SP 800-38D §7.1 writes it:
    /// the reference for the streaming path (aws-lc's stitched EVP AES-GCM).
    fn reference_seal<const N: usize>(key: &AesKey<N>, nonce: &GcmNonce, plaintext: &[u8]) -> Vec<u8> {
        let encrypt_block = block_cipher(key);
        let mut hash_key = [0u8; 16];
        encrypt_block(&mut hash_key);
        let pre_counter = if nonce.len == 12 {
            let mut block = [0u8; 16];
            block[..12].copy_from_slice(nonce.as_bytes());
            block[15] = 1;
            block
        } else {
            hash_blocks(&hash_key, &[nonce.bytes, u128::from(128u64).to_be_bytes()])
        };
        let mut counter = pre_counter;
        let mut sealed = Vec::with_capacity(plaintext.len() + TAG_LEN);
        let mut hashed_blocks = Vec::new();
        for chunk in plaintext.chunks(16) {
            increment32(&mut counter, 1);
            let mut keystream = counter;
            encrypt_block(&mut keystream);
            let mut block = [0u8; 16];
            for (index, byte) in chunk.iter().enumerate() {
                block[index] = byte ^ keystream[index];
            }
            sealed.extend_from_slice(&block[..chunk.len()]);
            hashed_blocks.push(block);
        }
        hashed_blocks.push(u128::from(plaintext.len() as u64 * 8).to_be_bytes());
        let mut tag = hash_blocks(&hash_key, &hashed_blocks);
        let mut tag_mask = pre_counter;
        encrypt_block(&mut tag_mask);
        for (tag_byte, mask_byte) in tag.iter_mut().zip(tag_mask) {
            *tag_byte ^= mask_byte;
        }
        sealed.extend_from_slice(&tag);
        sealed
    }

    /// The 16-byte nonce whose pre-counter block is `pre_counter`: nonce = ((J0·H⁻¹) ⊕ [128]_128)·H⁻¹.
    /// Lets the tests put the inc32 wrap wherever they want it.
    fn nonce_for_pre_counter<const N: usize>(key: &AesKey<N>, pre_counter: u128) -> GcmNonce {
        let mut hash_key = [0u8; 16];
        block_cipher(key)(&mut hash_key);
        let h = u128::from_be_bytes(hash_key);
        // H⁻¹ = H^(2^128 - 2): square-and-multiply over the exponent's bits, most significant first.
        let one = 1u128 << 127;
        let mut inverse = one;
        for bit in (0..128).rev() {
            inverse = multiply(inverse, inverse);
            if bit != 0 {
                inverse = multiply(inverse, h);
            }
        }
        assert_eq!(multiply(inverse, h), one);
        let nonce = multiply(multiply(pre_counter, inverse) ^ 128, inverse);
        let nonce = GcmNonce::from_slice(&nonce.to_be_bytes()).expect("nonce");
        assert_eq!(
            hash_blocks(&hash_key, &[nonce.bytes, 128u128.to_be_bytes()]),
            pre_counter.to_be_bytes()
        );
        nonce
    }

    /// Seals `plaintext` through a stream fed in pieces of the given lengths (cycled).
    fn streamed_seal<const N: usize>(key: &AesKey<N>, nonce: &GcmNonce, plaintext: &[u8], pieces: &[usize]) -> Vec<u8> {
        let mut encryptor = GcmEncryptor::new(key, nonce).expect("encryptor");
        let mut buffer = plaintext.to_vec();
        let mut rest = buffer.as_mut_slice();
        for piece in pieces.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (now, later) = rest.split_at_mut((*piece).min(rest.len()));
            encryptor.encrypt_in_place(now).expect("encrypt");
            rest = later;
        }
        buffer.extend_from_slice(encryptor.finish().expect("finish").as_bytes());
        buffer
    }

    #[test]
    fn mcgrew_viega_test_cases_1_and_2() {
        // The GCM specification's test cases 1 and 2: AES-128, zero key, zero 96-bit IV.
        let key = Aes128Key::from_slice(&[0u8; 16]).expect("key");
        let nonce = GcmNonce::from_slice(&[0u8; 12]).expect("nonce");
        assert_eq!(
            streamed_seal_whole(&key, &nonce, b""),
            unhex("58e2fccefa7e3061367f1d57a4e7455a")
        );
        assert_eq!(
            streamed_seal_whole(&key, &nonce, &[0u8; 16]),
            unhex("0388dace60b6a392f328c2b971b2fe78ab6e47d42cec13bdf53a67b21257bddf")
        );
    }

    /// Vectors for 16-byte nonces made with Python `cryptography` (OpenSSL's GCM); see testdata/README.md.
    #[test]
    fn sixteen_byte_nonces_match_openssl() {
        fn check<const N: usize>(key: &[u8], nonce: &GcmNonce, plaintext: &[u8], expected: &[u8]) {
            let key = AesKey::<N>::from_slice(key).expect("key");
            let sealed = seal(&key, nonce, plaintext).expect("seal");
            assert_eq!(hex::encode(&sealed), hex::encode(expected));
            assert_eq!(*open(&key, nonce, &sealed).expect("open"), plaintext);
        }
        let vectors = include_str!("../../testdata/gcm-16-byte-nonce.txt");
        let mut count = 0;
        for line in vectors.lines().filter(|line| !line.starts_with('#')) {
            let fields: Vec<Vec<u8>> = line
                .split(' ')
                .map(|field| if field == "-" { Vec::new() } else { unhex(field) })
                .collect();
            let [key, nonce, plaintext, expected] = fields.as_slice() else {
                panic!("bad vector line {line}")
            };
            let nonce = GcmNonce::from_slice(nonce).expect("nonce");
            match key.len() {
                16 => check::<16>(key, &nonce, plaintext, expected),
                _ => check::<32>(key, &nonce, plaintext, expected),
            }
            count += 1;
        }
        assert_eq!(count, 11);
    }

    #[test]
    fn tampering_and_truncation_fail() {
        let key = Aes128Key::generate().expect("key");
        for nonce in [
            GcmNonce::random12().expect("nonce"),
            GcmNonce::random16().expect("nonce"),
        ] {
            let sealed = seal(&key, &nonce, b"some metadata").expect("seal");
            for index in 0..sealed.len() {
                let mut altered = sealed.clone();
                altered[index] ^= 0x01;
                assert!(matches!(open(&key, &nonce, &altered), Err(CryptoError::Authentication)));
            }
            assert!(matches!(
                open(&key, &nonce, &sealed[..sealed.len() - 1]),
                Err(CryptoError::Authentication)
            ));
            assert!(matches!(
                open(&key, &nonce, &sealed[..15]),
                Err(CryptoError::Authentication)
            ));
            let other_key = Aes128Key::generate().expect("key");
            assert!(matches!(
                open(&other_key, &nonce, &sealed),
                Err(CryptoError::Authentication)
            ));
        }
    }

    #[test]
    fn lengths_are_checked() {
        assert!(GcmNonce::from_slice(&[0u8; 13]).is_err());
        assert!(Aes128Key::from_slice(&[0u8; 32]).is_err());
        assert!(AesKey::<24>::generate().is_err());
        assert!(GcmTag::from_slice(&[0u8; 15]).is_err());
    }

    #[test]
    fn the_32_bit_counter_wraps_without_carry() {
        let mut block = [0xffu8; 16];
        increment32(&mut block, 1);
        assert_eq!(&block[..12], &[0xffu8; 12]);
        assert_eq!(&block[12..], &[0u8; 4]);
        increment32(&mut block, 1 << 32);
        assert_eq!(&block[12..], &[0u8; 4]);
        block[12..].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        increment32(&mut block, 17);
        assert_eq!(&block[..12], &[0xffu8; 12]);
        assert_eq!(&block[12..], &[0, 0, 0, 1]);
    }

    /// OpenSSL vectors whose counter wraps inside the message (testdata/README.md), one-shot and streamed
    /// in pieces that straddle the wrap.
    #[test]
    fn counter_wrap_vectors_match_openssl() {
        fn check<const N: usize>(key: &[u8], nonce: &GcmNonce, plaintext: &[u8], expected: &[u8]) {
            let key = AesKey::<N>::from_slice(key).expect("key");
            assert_eq!(
                hex::encode(seal(&key, nonce, plaintext).expect("seal")),
                hex::encode(expected)
            );
            assert_eq!(*open(&key, nonce, expected).expect("open"), plaintext);
            assert_eq!(reference_seal(&key, nonce, plaintext), expected);
            for pieces in [&[1][..], &[7], &[16], &[33, 5], &[240, 1]] {
                assert_eq!(
                    streamed_seal(&key, nonce, plaintext, pieces),
                    expected,
                    "pieces {pieces:?}"
                );
            }
        }
        let vectors = include_str!("../../testdata/gcm-counter-wrap.txt");
        let mut count = 0;
        for line in vectors.lines().filter(|line| !line.starts_with('#')) {
            let fields: Vec<Vec<u8>> = line.split(' ').map(unhex).collect();
            let [key, nonce, plaintext, expected] = fields.as_slice() else {
                panic!("bad vector line {line}")
            };
            let nonce = GcmNonce::from_slice(nonce).expect("nonce");
            match key.len() {
                16 => check::<16>(key, &nonce, plaintext, expected),
                _ => check::<32>(key, &nonce, plaintext, expected),
            }
            count += 1;
        }
        assert_eq!(count, 6);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The streaming GCM equals aws-lc-rs's one-shot AES-GCM wherever both apply (96-bit nonces), for both key sizes,
        /// however the input is split into streaming calls.
        #[test]
        fn streaming_matches_aws_lc_rs(
            key128 in any::<[u8; 16]>(),
            key256 in any::<[u8; 32]>(),
            nonce in any::<[u8; 12]>(),
            plaintext in proptest::collection::vec(any::<u8>(), 0..2100),
            split in any::<prop::sample::Index>(),
        ) {
            let nonce = GcmNonce::from_slice(&nonce).expect("nonce");
            let key128 = Aes128Key::from_slice(&key128).expect("key");
            let key256 = Aes256Key::from_slice(&key256).expect("key");
            prop_assert_eq!(streamed_seal_whole(&key128, &nonce, &plaintext), seal(&key128, &nonce, &plaintext).expect("seal"));
            prop_assert_eq!(streamed_seal_whole(&key256, &nonce, &plaintext), seal(&key256, &nonce, &plaintext).expect("seal"));

            let at = split.index(plaintext.len() + 1);
            let mut encryptor = GcmEncryptor::new(&key128, &nonce).expect("encryptor");
            let mut buffer = plaintext.clone();
            let (first, second) = buffer.split_at_mut(at);
            encryptor.encrypt_in_place(first).expect("encrypt");
            encryptor.encrypt_in_place(second).expect("encrypt");
            buffer.extend_from_slice(encryptor.finish().expect("finish").as_bytes());
            prop_assert_eq!(buffer, seal(&key128, &nonce, &plaintext).expect("seal"));
        }

        /// Streaming with 16-byte nonces equals the block-at-a-time reference however the input is split,
        /// including when J0 is chosen so that the 32-bit counter wraps inside the message.
        #[test]
        fn streaming_matches_the_reference(
            key in any::<[u8; 16]>(),
            nonce in any::<[u8; 16]>(),
            upper in any::<u128>(),
            low_word_below_wrap in 0u32..40,
            plaintext in proptest::collection::vec(any::<u8>(), 0..1200),
            pieces in proptest::collection::vec(1usize..300, 1..4),
        ) {
            let key = Aes128Key::from_slice(&key).expect("key");
            let random_nonce = GcmNonce::from_slice(&nonce).expect("nonce");
            let expected = reference_seal(&key, &random_nonce, &plaintext);
            prop_assert_eq!(streamed_seal(&key, &random_nonce, &plaintext, &pieces), expected);

            let pre_counter = (upper & !0xffff_ffff) | u128::from(u32::MAX - low_word_below_wrap);
            let wrapping_nonce = nonce_for_pre_counter(&key, pre_counter);
            let expected = reference_seal(&key, &wrapping_nonce, &plaintext);
            prop_assert_eq!(streamed_seal(&key, &wrapping_nonce, &plaintext, &pieces), expected.clone());
            prop_assert_eq!(&**open(&key, &wrapping_nonce, &expected).expect("open"), plaintext.as_slice());
        }

        /// seal then open is the identity for 16-byte nonces.
        #[test]
        fn round_trip_with_16_byte_nonce(key in any::<[u8; 16]>(), nonce in any::<[u8; 16]>(),
                                         plaintext in proptest::collection::vec(any::<u8>(), 0..300)) {
            let key = Aes128Key::from_slice(&key).expect("key");
            let nonce = GcmNonce::from_slice(&nonce).expect("nonce");
            let sealed = seal(&key, &nonce, &plaintext).expect("seal");
            prop_assert_eq!(sealed.len(), plaintext.len() + TAG_LEN);
            prop_assert_eq!(&**open(&key, &nonce, &sealed).expect("open"), plaintext.as_slice());
        }
    }
}
