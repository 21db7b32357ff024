//! One AES-GCM message encrypted or decrypted incrementally in a single stitched pass, with the 96- or 128-bit
//! nonces Nextcloud clients write, on aws-lc's EVP cipher API.
//!
//! aws-lc-rs offers AES-GCM only one-shot and only with 96-bit nonces, but Nextcloud's desktop, Android and
//! iOS clients encrypt files with 128-bit nonces, and files must stream. aws-lc's `EVP_aes_*_gcm` cipher does
//! both: the nonce length is set with `EVP_CTRL_GCM_SET_IVLEN`, and each `EVP_*Update` runs the same
//! stitched AES-CTR + GHASH assembly (AES-NI/PCLMULQDQ, or VAES/VPCLMULQDQ with AVX-512) that aws-lc-rs's
//! AEAD uses, so the data is read once. Its counter is GCM's `inc32` (only the low 32 bits count and wrap),
//! which matters because with a random 128-bit nonce the wrap can fall inside any large file.
//!
//! This crate is the only `unsafe` code on the client side: every FFI call is in this file, each with a
//! SAFETY comment, behind [`Encryptor`] and [`Decryptor`]. It links the `aws-lc-sys` that aws-lc-rs
//! already builds, so nothing is compiled twice.
//!
//! Decryption necessarily produces plaintext before the tag can be checked: whatever
//! [`Decryptor::update`] writes is unauthenticated until [`Decryptor::finish`] returns `Ok`.
//! Callers must withhold it until then.

#![deny(unsafe_op_in_unsafe_fn)]

use std::os::raw::c_int;
use std::ptr::{self, NonNull};

use aws_lc_sys as ffi;

/// Length of the GCM authentication tag (128 bits, the only size produced or accepted here).
pub const TAG_LEN: usize = 16;

/// GCM limits one message to 2^39 - 256 bits.
const MAX_MESSAGE_LEN: u64 = (1 << 36) - 32;

/// Most bytes handed to one `EVP_*Update` call: its lengths are C `int`s. A multiple of 16, so that only the
/// caller's own piece boundaries can split a block.
const MAX_CALL_LEN: usize = 1 << 30;

/// Why a GCM operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GcmError {
    /// The key is neither 16 (AES-128) nor 32 (AES-256) bytes.
    #[error("invalid AES key length: {0} bytes")]
    KeyLength(usize),
    /// The nonce is neither 12 nor 16 bytes.
    #[error("invalid GCM nonce length: {0} bytes")]
    NonceLength(usize),
    /// `update` was given an output buffer of another length than its input.
    #[error("output buffer of {output} bytes for {input} bytes of input")]
    OutputLength {
        /// Bytes of input.
        input: usize,
        /// Bytes of output room.
        output: usize,
    },
    /// More data than one GCM message may hold (about 64 GiB).
    #[error("message too long for AES-GCM")]
    MessageTooLong,
    /// The tag did not verify: wrong key or nonce, or the data was altered or truncated.
    #[error("authentication failed")]
    Authentication,
    /// aws-lc refused a call that should not fail.
    #[error("aws-lc failed in {0}")]
    Backend(&'static str),
}

/// Streaming GCM encryption of one message: feed it with `update`, then `finish` for the tag.
pub struct Encryptor {
    context: CipherContext,
}

impl Encryptor {
    /// Starts a message under `key` (16 or 32 bytes) and `nonce` (12 or 16 bytes), with no associated data.
    pub fn new<const N: usize>(key: &[u8; N], nonce: &[u8]) -> Result<Encryptor, GcmError> {
        Ok(Encryptor {
            context: CipherContext::new(Direction::Encrypt, key, nonce)?,
        })
    }

    /// Encrypts `plaintext` into `ciphertext`, which must be exactly as long.
    pub fn update(&mut self, plaintext: &[u8], ciphertext: &mut [u8]) -> Result<(), GcmError> {
        self.context.update(plaintext, ciphertext)
    }

    /// Encrypts `data` in place.
    pub fn update_in_place(&mut self, data: &mut [u8]) -> Result<(), GcmError> {
        self.context.update_in_place(data)
    }

    /// Encrypts `plaintext` onto the end of `ciphertext`, writing its spare capacity without zeroing it first.
    pub fn update_append(&mut self, plaintext: &[u8], ciphertext: &mut Vec<u8>) -> Result<(), GcmError> {
        self.context.update_append(plaintext, ciphertext)
    }

    /// Ends the message; returns the tag over everything encrypted.
    pub fn finish(mut self) -> Result<[u8; TAG_LEN], GcmError> {
        self.context.finalize()?;
        let mut tag = [0u8; TAG_LEN];
        // SAFETY: the context is live and finalized for encryption; GET_TAG copies `TAG_LEN` bytes into `tag`,
        // which has exactly that room.
        let status = unsafe {
            ffi::EVP_CIPHER_CTX_ctrl(
                self.context.as_ptr(),
                ffi::EVP_CTRL_GCM_GET_TAG,
                TAG_LEN as c_int,
                tag.as_mut_ptr().cast(),
            )
        };
        check(status, "EVP_CTRL_GCM_GET_TAG")?;
        Ok(tag)
    }
}

/// Streaming GCM decryption of one message: feed it with `update`, then `finish` with the received tag.
///
/// Everything `update` writes is unauthenticated until `finish` returns `Ok`.
pub struct Decryptor {
    context: CipherContext,
}

impl Decryptor {
    /// Starts a message under `key` (16 or 32 bytes) and `nonce` (12 or 16 bytes), with no associated data.
    pub fn new<const N: usize>(key: &[u8; N], nonce: &[u8]) -> Result<Decryptor, GcmError> {
        Ok(Decryptor {
            context: CipherContext::new(Direction::Decrypt, key, nonce)?,
        })
    }

    /// Decrypts `ciphertext` into `plaintext`, which must be exactly as long. The output is unauthenticated.
    pub fn update(&mut self, ciphertext: &[u8], plaintext: &mut [u8]) -> Result<(), GcmError> {
        self.context.update(ciphertext, plaintext)
    }

    /// Decrypts `data` in place. The output is unauthenticated.
    pub fn update_in_place(&mut self, data: &mut [u8]) -> Result<(), GcmError> {
        self.context.update_in_place(data)
    }

    /// Decrypts `ciphertext` onto the end of `plaintext`, writing its spare capacity without zeroing it first.
    /// The output is unauthenticated.
    pub fn update_append(&mut self, ciphertext: &[u8], plaintext: &mut Vec<u8>) -> Result<(), GcmError> {
        self.context.update_append(ciphertext, plaintext)
    }

    /// Ends the message: `Ok` only if `received_tag` is the tag over everything decrypted
    /// (compared in constant time by aws-lc).
    pub fn finish(mut self, received_tag: &[u8; TAG_LEN]) -> Result<(), GcmError> {
        let mut tag = *received_tag;
        // SAFETY: the context is live and set up for decryption; SET_TAG copies `TAG_LEN` bytes from `tag`
        // (the pointer is `*mut` only because the C signature is shared with GET_TAG).
        let status = unsafe {
            ffi::EVP_CIPHER_CTX_ctrl(
                self.context.as_ptr(),
                ffi::EVP_CTRL_GCM_SET_TAG,
                TAG_LEN as c_int,
                tag.as_mut_ptr().cast(),
            )
        };
        check(status, "EVP_CTRL_GCM_SET_TAG")?;
        // For decryption, Final fails exactly when the tag does not match.
        self.context.finalize().map_err(|_| GcmError::Authentication)
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Encrypt,
    Decrypt,
}

/// An owned `EVP_CIPHER_CTX` set up for AES-GCM with a key and nonce, and the bytes it has processed.
struct CipherContext {
    /// Never null; owned: freed (and the key schedule wiped) on drop.
    context: NonNull<ffi::EVP_CIPHER_CTX>,
    /// Bytes processed so far, checked against GCM's limit before aws-lc sees them.
    length: u64,
}

// SAFETY: the context is owned by this value alone and reached only through `&mut self` or `Drop`;
// an aws-lc cipher context has no thread affinity, so it may move to another thread.
unsafe impl Send for CipherContext {}

impl CipherContext {
    fn new<const N: usize>(direction: Direction, key: &[u8; N], nonce: &[u8]) -> Result<CipherContext, GcmError> {
        let cipher = match N {
            // SAFETY: takes no arguments; returns a pointer to a static cipher table.
            16 => unsafe { ffi::EVP_aes_128_gcm() },
            // SAFETY: as above.
            32 => unsafe { ffi::EVP_aes_256_gcm() },
            _ => return Err(GcmError::KeyLength(N)),
        };
        if nonce.len() != 12 && nonce.len() != 16 {
            return Err(GcmError::NonceLength(nonce.len()));
        }
        let encrypt: c_int = match direction {
            Direction::Encrypt => 1,
            Direction::Decrypt => 0,
        };
        ffi::init();
        // SAFETY: takes no arguments; returns a fresh context, or null if allocation failed.
        let context =
            NonNull::new(unsafe { ffi::EVP_CIPHER_CTX_new() }).ok_or(GcmError::Backend("EVP_CIPHER_CTX_new"))?;
        // From here on, dropping `cipher_context` frees the context on every early return.
        let cipher_context = CipherContext { context, length: 0 };
        // SAFETY: live context; `cipher` is a static table; a null engine is the only one supported, and a null
        // key and nonce mean "choose the cipher only", so that the nonce length can be set before the nonce.
        let status = unsafe {
            ffi::EVP_CipherInit_ex(
                cipher_context.as_ptr(),
                cipher,
                ptr::null_mut(),
                ptr::null(),
                ptr::null(),
                encrypt,
            )
        };
        check(status, "EVP_CipherInit_ex (cipher)")?;
        // SAFETY: live context with a GCM cipher; SET_IVLEN reads only `arg` (12 or 16), not the null pointer.
        let status = unsafe {
            ffi::EVP_CIPHER_CTX_ctrl(
                cipher_context.as_ptr(),
                ffi::EVP_CTRL_GCM_SET_IVLEN,
                nonce.len() as c_int,
                ptr::null_mut(),
            )
        };
        check(status, "EVP_CTRL_GCM_SET_IVLEN")?;
        // SAFETY: live context; a null cipher keeps the one chosen above, whose key length is `N` (chosen from
        // `N`), so aws-lc reads exactly the `N` bytes of `key`; it reads `nonce.len()` bytes of `nonce`, the length
        // just set. Both are copied (the key expanded into the context), not retained.
        let status = unsafe {
            ffi::EVP_CipherInit_ex(
                cipher_context.as_ptr(),
                ptr::null(),
                ptr::null_mut(),
                key.as_ptr(),
                nonce.as_ptr(),
                encrypt,
            )
        };
        check(status, "EVP_CipherInit_ex (key)")?;
        Ok(cipher_context)
    }

    fn as_ptr(&self) -> *mut ffi::EVP_CIPHER_CTX {
        self.context.as_ptr()
    }

    fn update(&mut self, input: &[u8], output: &mut [u8]) -> Result<(), GcmError> {
        if output.len() != input.len() {
            return Err(GcmError::OutputLength {
                input: input.len(),
                output: output.len(),
            });
        }
        self.count(input.len())?;
        for (input_piece, output_piece) in input.chunks(MAX_CALL_LEN).zip(output.chunks_mut(MAX_CALL_LEN)) {
            // SAFETY: both pieces are `input_piece.len()` bytes long and valid for that access; they cannot
            // overlap, since one is borrowed shared and the other exclusively.
            unsafe { self.cipher_update(input_piece.as_ptr(), output_piece.as_mut_ptr(), input_piece.len())? };
        }
        Ok(())
    }

    fn update_in_place(&mut self, data: &mut [u8]) -> Result<(), GcmError> {
        self.count(data.len())?;
        for piece in data.chunks_mut(MAX_CALL_LEN) {
            let pointer = piece.as_mut_ptr();
            // SAFETY: `piece` is valid for reads and writes of its length; input and output are the same
            // buffer, which aws-lc's GCM supports (exact aliasing, not partial overlap).
            unsafe { self.cipher_update(pointer, pointer, piece.len())? };
        }
        Ok(())
    }

    fn update_append(&mut self, input: &[u8], output: &mut Vec<u8>) -> Result<(), GcmError> {
        self.count(input.len())?;
        output.reserve(input.len());
        for piece in input.chunks(MAX_CALL_LEN) {
            let start = output.len();
            let spare = output.spare_capacity_mut();
            debug_assert!(spare.len() >= piece.len());
            // SAFETY: `reserve` left at least `input.len()` bytes of spare capacity, so `spare` is valid for writes
            // of `piece.len()` bytes (writing uninitialized memory through a raw pointer is fine); `piece` is
            // valid for reads of its length, and cannot overlap `output`, which is borrowed exclusively.
            unsafe { self.cipher_update(piece.as_ptr(), spare.as_mut_ptr().cast(), piece.len())? };
            // SAFETY: `cipher_update` succeeded, so aws-lc wrote exactly `piece.len()` bytes after `start`,
            // within the capacity: they are initialized now.
            unsafe { output.set_len(start + piece.len()) };
        }
        Ok(())
    }

    /// One `EVP_CipherUpdate` over `len` bytes.
    ///
    /// # Safety
    /// `input` must be valid for reads and `output` for writes of `len` bytes, and they must be either the
    /// same pointer or non-overlapping; `len` must be at most `MAX_CALL_LEN`.
    unsafe fn cipher_update(&mut self, input: *const u8, output: *mut u8, len: usize) -> Result<(), GcmError> {
        debug_assert!(len <= MAX_CALL_LEN);
        if len == 0 {
            // An empty slice's pointer may dangle, and GCM has nothing to do.
            return Ok(());
        }
        let mut written: c_int = 0;
        // SAFETY: live context set up with key and nonce; the caller guarantees the buffers (`len` fits in a
        // C int since it is at most MAX_CALL_LEN). GCM is a stream mode: aws-lc writes exactly `len` bytes.
        let status = unsafe { ffi::EVP_CipherUpdate(self.as_ptr(), output, &mut written, input, len as c_int) };
        check(status, "EVP_CipherUpdate")?;
        if written as usize != len {
            return Err(GcmError::Backend("EVP_CipherUpdate length"));
        }
        Ok(())
    }

    /// `EVP_CipherFinal_ex`: computes the tag (encryption) or checks the tag set beforehand (decryption).
    fn finalize(&mut self) -> Result<(), GcmError> {
        // GCM's Final writes no bytes; the scratch block is there in case a cipher ever did (block size 1 here).
        let mut scratch = [0u8; 16];
        let mut written: c_int = 0;
        // SAFETY: live context; `scratch` has room for a whole block, more than GCM ever writes at Final.
        let status = unsafe { ffi::EVP_CipherFinal_ex(self.as_ptr(), scratch.as_mut_ptr(), &mut written) };
        check(status, "EVP_CipherFinal_ex")
    }

    fn count(&mut self, len: usize) -> Result<(), GcmError> {
        self.length = self
            .length
            .checked_add(len as u64)
            .filter(|total| *total <= MAX_MESSAGE_LEN)
            .ok_or(GcmError::MessageTooLong)?;
        Ok(())
    }
}

impl Drop for CipherContext {
    fn drop(&mut self) {
        // SAFETY: the context was allocated by EVP_CIPHER_CTX_new and is freed only here. Cleanup wipes the GCM
        // state and the context, and aws-lc's OPENSSL_free zeroes the freed cipher data (the key schedule).
        unsafe { ffi::EVP_CIPHER_CTX_free(self.context.as_ptr()) }
    }
}

/// Maps an EVP status (1 = success) to a result, clearing aws-lc's thread-local error queue on failure so that
/// no stale error is reported by a later, unrelated call.
fn check(status: c_int, what: &'static str) -> Result<(), GcmError> {
    if status == 1 {
        Ok(())
    } else {
        // SAFETY: takes no arguments and touches only this thread's error queue.
        unsafe { ffi::ERR_clear_error() };
        Err(GcmError::Backend(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    use proptest::prelude::*;

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|index| u8::from_str_radix(&text[index..index + 2], 16).expect("hex"))
            .collect()
    }

    /// aws-lc-rs's one-shot AEAD: the oracle for 12-byte nonces.
    fn one_shot_seal(key: &[u8], nonce: [u8; 12], plaintext: &[u8]) -> Vec<u8> {
        let algorithm = if key.len() == 16 { &AES_128_GCM } else { &AES_256_GCM };
        let key = LessSafeKey::new(UnboundKey::new(algorithm, key).expect("key"));
        let mut sealed = plaintext.to_vec();
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut sealed)
            .expect("seal");
        sealed
    }

    /// Encrypts in pieces of the given lengths (cycled), taking turns with the three kinds of update;
    /// returns ciphertext ‖ tag.
    fn streamed_seal<const N: usize>(key: &[u8; N], nonce: &[u8], plaintext: &[u8], pieces: &[usize]) -> Vec<u8> {
        let mut encryptor = Encryptor::new(key, nonce).expect("encryptor");
        let mut sealed = plaintext.to_vec();
        let mut offset = 0;
        for (index, piece) in pieces.iter().cycle().enumerate() {
            if offset == plaintext.len() {
                break;
            }
            let end = (offset + piece).min(plaintext.len());
            match index % 3 {
                0 => encryptor
                    .update(&plaintext[offset..end], &mut sealed[offset..end])
                    .expect("update"),
                1 => encryptor.update_in_place(&mut sealed[offset..end]).expect("update"),
                _ => {
                    let mut appended = sealed[..offset].to_vec();
                    encryptor
                        .update_append(&plaintext[offset..end], &mut appended)
                        .expect("update");
                    sealed[offset..end].copy_from_slice(&appended[offset..]);
                }
            }
            offset = end;
        }
        sealed.extend_from_slice(&encryptor.finish().expect("finish"));
        sealed
    }

    /// Decrypts ciphertext ‖ tag in pieces; the plaintext only if the tag verifies.
    fn streamed_open<const N: usize>(
        key: &[u8; N],
        nonce: &[u8],
        sealed: &[u8],
        pieces: &[usize],
    ) -> Result<Vec<u8>, GcmError> {
        let (ciphertext, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        let mut decryptor = Decryptor::new(key, nonce)?;
        let mut plaintext = Vec::new();
        let mut offset = 0;
        for (index, piece) in pieces.iter().cycle().enumerate() {
            if offset == ciphertext.len() {
                break;
            }
            let end = (offset + piece).min(ciphertext.len());
            match index % 3 {
                0 => decryptor.update_append(&ciphertext[offset..end], &mut plaintext)?,
                1 => {
                    plaintext.resize(end, 0);
                    decryptor.update(&ciphertext[offset..end], &mut plaintext[offset..end])?;
                }
                _ => {
                    plaintext.extend_from_slice(&ciphertext[offset..end]);
                    decryptor.update_in_place(&mut plaintext[offset..end])?;
                }
            }
            offset = end;
        }
        decryptor.finish(tag.try_into().expect("16-byte tag"))?;
        Ok(plaintext)
    }

    /// OpenSSL-made vectors with 16-byte nonces whose 32-bit counter wraps inside the message
    /// (client/testdata/README.md): the property the EVP cipher must share with GCM's inc32.
    #[test]
    fn counter_wrap_vectors_match_openssl() {
        fn check<const N: usize>(key: &[u8], nonce: &[u8], plaintext: &[u8], expected: &[u8]) {
            let key: &[u8; N] = key.try_into().expect("key length");
            for pieces in [&[usize::MAX][..], &[1], &[7], &[16], &[33, 5], &[240, 1]] {
                assert_eq!(
                    streamed_seal(key, nonce, plaintext, pieces),
                    expected,
                    "pieces {pieces:?}"
                );
                assert_eq!(
                    streamed_open(key, nonce, expected, pieces).expect("open"),
                    plaintext,
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
            match key.len() {
                16 => check::<16>(key, nonce, plaintext, expected),
                _ => check::<32>(key, nonce, plaintext, expected),
            }
            count += 1;
        }
        assert_eq!(count, 6);
    }

    #[test]
    fn a_wrong_tag_or_altered_ciphertext_fails() {
        let key = [5u8; 16];
        let nonce = [6u8; 16];
        let sealed = streamed_seal(&key, &nonce, b"seventeen bytes!!", &[usize::MAX]);
        for index in 0..sealed.len() {
            let mut altered = sealed.clone();
            altered[index] ^= 0x80;
            assert!(matches!(
                streamed_open(&key, &nonce, &altered, &[5]),
                Err(GcmError::Authentication)
            ));
        }
        assert!(matches!(
            streamed_open(&[7u8; 16], &nonce, &sealed, &[5]),
            Err(GcmError::Authentication)
        ));
        assert!(matches!(
            streamed_open(&key, &[6u8; 12], &sealed, &[5]),
            Err(GcmError::Authentication)
        ));
    }

    #[test]
    fn lengths_are_checked() {
        assert!(matches!(
            Encryptor::new(&[0u8; 24], &[0u8; 12]),
            Err(GcmError::KeyLength(24))
        ));
        assert!(matches!(
            Decryptor::new(&[0u8; 16], &[0u8; 13]),
            Err(GcmError::NonceLength(13))
        ));
        let mut encryptor = Encryptor::new(&[0u8; 16], &[0u8; 16]).expect("encryptor");
        assert!(matches!(
            encryptor.update(&[0u8; 4], &mut [0u8; 5]),
            Err(GcmError::OutputLength { input: 4, output: 5 })
        ));
        encryptor.context.length = MAX_MESSAGE_LEN - 3;
        assert!(matches!(
            encryptor.update_in_place(&mut [0u8; 4]),
            Err(GcmError::MessageTooLong)
        ));
        encryptor.update_in_place(&mut [0u8; 3]).expect("exactly at the limit");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// With 12-byte nonces the stream equals aws-lc-rs's one-shot AEAD, for both key sizes, however the
        /// input is split; and it decrypts back.
        #[test]
        fn matches_aws_lc_rs_one_shot(
            key128 in any::<[u8; 16]>(),
            key256 in any::<[u8; 32]>(),
            nonce in any::<[u8; 12]>(),
            plaintext in proptest::collection::vec(any::<u8>(), 0..2100),
            pieces in proptest::collection::vec(1usize..700, 1..4),
        ) {
            let expected = one_shot_seal(&key128, nonce, &plaintext);
            prop_assert_eq!(streamed_seal(&key128, &nonce, &plaintext, &pieces), expected.clone());
            prop_assert_eq!(streamed_open(&key128, &nonce, &expected, &pieces).expect("open"), plaintext.clone());
            let expected = one_shot_seal(&key256, nonce, &plaintext);
            prop_assert_eq!(streamed_seal(&key256, &nonce, &plaintext, &pieces), expected.clone());
            prop_assert_eq!(streamed_open(&key256, &nonce, &expected, &pieces).expect("open"), plaintext);
        }

        /// With 16-byte nonces, how the input is split changes nothing.
        #[test]
        fn splitting_changes_nothing(
            key in any::<[u8; 16]>(),
            nonce in any::<[u8; 16]>(),
            plaintext in proptest::collection::vec(any::<u8>(), 0..1200),
            pieces in proptest::collection::vec(1usize..300, 1..4),
        ) {
            let whole = streamed_seal(&key, &nonce, &plaintext, &[usize::MAX]);
            prop_assert_eq!(streamed_seal(&key, &nonce, &plaintext, &pieces), whole.clone());
            prop_assert_eq!(streamed_open(&key, &nonce, &whole, &pieces).expect("open"), plaintext);
        }
    }
}
