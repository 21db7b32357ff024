//! File contents: AES-128-GCM with a fresh key and 16-byte nonce per upload, the tag appended (§3), streamed.
//!
//! Both directions run in constant memory, whatever the file size, and read through `BufRead`, so that the
//! cipher works straight out of the reader's buffer (or the caller's slice) with no copy of its own. `encrypt`
//! and `decrypt_to_path` go through one `CHUNK_LEN` output buffer, because a `Write` can only be handed bytes;
//! `encrypt_into`, `decrypt_into` and `decrypt_to_vec` have the cipher write straight into the `Vec`. On a
//! memory-bound machine every extra pass over the data costs about as much as the cipher itself.
//! Decryption cannot check the tag before the last byte has been decrypted, so no public function here
//! hands unauthenticated plaintext to the caller:
//! * `decrypt_to_path` writes into a temporary file (mode 0600) in the destination's directory and renames it
//!   over the destination only after the tag verifies; on any failure the temporary file is deleted and the
//!   destination is untouched;
//! * `decrypt_to_vec` returns the plaintext only on success (it is in memory, so not constant-size).

use std::io::{BufRead, BufWriter, ErrorKind, Write};
use std::path::Path;

use zeroize::Zeroizing;

use crate::crypto::CryptoError;
use crate::crypto::gcm::{Aes128Key, GcmDecryptor, GcmEncryptor, GcmNonce, GcmTag, TAG_LEN};
use crate::format::metadata::FileEntry;

/// Most bytes processed per step, and the size of the output buffer. 16 KiB (fits L1) measured no better on
/// the bench machine; 4 KiB was slower (per-call overhead).
pub(crate) const CHUNK_LEN: usize = 256 * 1024;

/// Why a file could not be encrypted or decrypted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileCryptoError {
    /// The tag did not verify, the blob is shorter than a tag, or its tag differs from the metadata's:
    /// wrong key or nonce, or the blob was altered, truncated or swapped. Nothing was released.
    #[error("the encrypted file does not authenticate (wrong key, or altered, truncated or swapped)")]
    Authentication,
    /// Reading the input or writing the output failed.
    #[error("file I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// A primitive failed (randomness, a file over GCM's 64 GiB limit, backend).
    #[error(transparent)]
    Crypto(CryptoError),
}

impl From<CryptoError> for FileCryptoError {
    fn from(error: CryptoError) -> FileCryptoError {
        match error {
            CryptoError::Authentication => FileCryptoError::Authentication,
            other => FileCryptoError::Crypto(other),
        }
    }
}

/// What the folder metadata must record about an encrypted file (`key`, `nonce`, `authenticationTag`).
#[derive(Debug, Clone)]
pub struct EncryptedFile {
    /// The fresh AES-128 file key.
    pub key: Aes128Key,
    /// The fresh 16-byte nonce.
    pub nonce: GcmNonce,
    /// The tag, also the last 16 bytes of the blob.
    pub tag: GcmTag,
    /// Bytes written: plaintext length + 16.
    pub blob_len: u64,
}

impl EncryptedFile {
    /// The `files{}` entry that lets a folder member decrypt this upload.
    pub fn metadata_entry(&self, filename: &str, mimetype: &str) -> FileEntry {
        FileEntry {
            filename: filename.to_owned(),
            mimetype: mimetype.to_owned(),
            nonce: self.nonce,
            authentication_tag: self.tag,
            key: self.key.clone(),
        }
    }
}

/// Encrypts everything `plaintext` yields into `blob` (ciphertext then tag) under a fresh key and nonce.
pub fn encrypt(plaintext: impl BufRead, blob: impl Write) -> Result<EncryptedFile, FileCryptoError> {
    encrypt_with(Aes128Key::generate()?, GcmNonce::random16()?, plaintext, blob)
}

/// `encrypt` onto the end of an in-memory `blob`: the cipher writes straight into the `Vec`'s spare capacity,
/// sparing the copy that handing bytes to a `Write` costs. `blob` is not cleared first; on error it is
/// truncated back to its length on entry.
pub fn encrypt_into(plaintext: impl BufRead, blob: &mut Vec<u8>) -> Result<EncryptedFile, FileCryptoError> {
    let (key, nonce) = (Aes128Key::generate()?, GcmNonce::random16()?);
    let start = blob.len();
    let result = encrypt_stream(key, nonce, plaintext, &mut VecSink(&mut *blob));
    if result.is_err() {
        blob.truncate(start);
    }
    result
}

/// `encrypt` under a given key and nonce: private, because reusing either breaks GCM.
fn encrypt_with(
    key: Aes128Key,
    nonce: GcmNonce,
    plaintext: impl BufRead,
    blob: impl Write,
) -> Result<EncryptedFile, FileCryptoError> {
    let mut sink = WriteSink {
        writer: blob,
        buffer: Zeroizing::new(vec![0u8; CHUNK_LEN]),
    };
    let encrypted = encrypt_stream(key, nonce, plaintext, &mut sink)?;
    sink.writer.flush()?;
    Ok(encrypted)
}

/// Where `encrypt_stream` puts ciphertext, then the tag.
trait CiphertextSink {
    /// Encrypts `plaintext`, the next bytes of the message, and takes the ciphertext.
    fn encrypt(&mut self, encryptor: &mut GcmEncryptor, plaintext: &[u8]) -> Result<(), FileCryptoError>;

    /// Takes the tag, which ends the blob.
    fn append_tag(&mut self, tag: &GcmTag) -> Result<(), FileCryptoError>;
}

/// Streams `plaintext` through GCM into `sink`, then appends the tag.
fn encrypt_stream(
    key: Aes128Key,
    nonce: GcmNonce,
    mut plaintext: impl BufRead,
    sink: &mut impl CiphertextSink,
) -> Result<EncryptedFile, FileCryptoError> {
    let mut encryptor = GcmEncryptor::new(&key, &nonce)?;
    let mut plaintext_len: u64 = 0;
    loop {
        let available = match plaintext.fill_buf() {
            Ok([]) => break,
            Ok(available) => available,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => return Err(error.into()),
        };
        let len = available.len().min(CHUNK_LEN);
        sink.encrypt(&mut encryptor, &available[..len])?;
        plaintext.consume(len);
        plaintext_len += len as u64;
    }
    let tag = encryptor.finish()?;
    sink.append_tag(&tag)?;
    Ok(EncryptedFile {
        key,
        nonce,
        tag,
        blob_len: plaintext_len + TAG_LEN as u64,
    })
}

/// Decrypts `blob` into a new file at `destination`, which appears (atomically replacing any old file)
/// only if the tag verifies and, when `expected_tag` is given (the metadata's `authenticationTag`), equals it.
/// Returns the plaintext length.
pub fn decrypt_to_path(
    blob: impl BufRead,
    key: &Aes128Key,
    nonce: &GcmNonce,
    expected_tag: Option<&GcmTag>,
    destination: &Path,
) -> Result<u64, FileCryptoError> {
    let directory = match destination.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    // Dropping `partial` on any early return deletes it, so unauthenticated plaintext never stays on disk
    // under a name anyone else uses.
    let mut partial = tempfile::Builder::new()
        .prefix(".e2ee-partial-")
        .tempfile_in(directory)?;
    let plaintext_len = {
        let mut sink = WriteSink {
            writer: BufWriter::new(partial.as_file_mut()),
            buffer: Zeroizing::new(vec![0u8; CHUNK_LEN]),
        };
        let plaintext_len = decrypt_stream(blob, key, nonce, expected_tag, &mut sink)?;
        sink.writer.flush()?;
        plaintext_len
    };
    partial.as_file().sync_all()?;
    partial.persist(destination).map_err(|error| error.error)?;
    Ok(plaintext_len)
}

/// Decrypts `blob` in memory; returns the plaintext only if the tag verifies (and equals `expected_tag`, if given).
pub fn decrypt_to_vec(
    blob: impl BufRead,
    key: &Aes128Key,
    nonce: &GcmNonce,
    expected_tag: Option<&GcmTag>,
) -> Result<Zeroizing<Vec<u8>>, FileCryptoError> {
    let mut plaintext = Zeroizing::new(Vec::new());
    decrypt_into(blob, key, nonce, expected_tag, &mut plaintext)?;
    Ok(plaintext)
}

/// `decrypt_to_vec` into a buffer the caller reuses: `plaintext` is cleared, then holds the plaintext if the tag
/// verifies; on any error it is zeroized and left empty. Returns the plaintext length.
pub fn decrypt_into(
    blob: impl BufRead,
    key: &Aes128Key,
    nonce: &GcmNonce,
    expected_tag: Option<&GcmTag>,
    plaintext: &mut Vec<u8>,
) -> Result<u64, FileCryptoError> {
    plaintext.clear();
    let result = decrypt_stream(blob, key, nonce, expected_tag, &mut VecSink(&mut *plaintext));
    if result.is_err() {
        zeroize::Zeroize::zeroize(plaintext);
    }
    result
}

/// Where `decrypt_stream` puts plaintext, which is unauthenticated until the stream's tag has verified.
trait PlaintextSink {
    /// Decrypts `ciphertext`, the next bytes of the message, and takes the plaintext.
    fn decrypt(&mut self, decryptor: &mut GcmDecryptor, ciphertext: &[u8]) -> Result<(), FileCryptoError>;
}

/// Encrypts or decrypts straight onto the end of a `Vec`: no copy and no zero-filling besides the cipher's own
/// writes.
struct VecSink<'a>(&'a mut Vec<u8>);

impl PlaintextSink for VecSink<'_> {
    fn decrypt(&mut self, decryptor: &mut GcmDecryptor, ciphertext: &[u8]) -> Result<(), FileCryptoError> {
        Ok(decryptor.decrypt_append(ciphertext, self.0)?)
    }
}

/// Encrypts or decrypts through a buffer of at most `CHUNK_LEN` bytes (zeroized on drop) into a `Write`.
struct WriteSink<W: Write> {
    writer: W,
    buffer: Zeroizing<Vec<u8>>,
}

impl CiphertextSink for VecSink<'_> {
    fn encrypt(&mut self, encryptor: &mut GcmEncryptor, plaintext: &[u8]) -> Result<(), FileCryptoError> {
        Ok(encryptor.encrypt_append(plaintext, self.0)?)
    }

    fn append_tag(&mut self, tag: &GcmTag) -> Result<(), FileCryptoError> {
        self.0.extend_from_slice(tag.as_bytes());
        Ok(())
    }
}

impl<W: Write> WriteSink<W> {
    /// Runs `cipher` over `input` in pieces of at most `CHUNK_LEN`, each into the buffer, and writes the
    /// buffer out after each piece.
    fn through_buffer(
        &mut self,
        input: &[u8],
        mut cipher: impl FnMut(&[u8], &mut [u8]) -> Result<(), CryptoError>,
    ) -> Result<(), FileCryptoError> {
        for piece in input.chunks(CHUNK_LEN) {
            let output = &mut self.buffer[..piece.len()];
            cipher(piece, output)?;
            self.writer.write_all(output)?;
        }
        Ok(())
    }
}

impl<W: Write> CiphertextSink for WriteSink<W> {
    fn encrypt(&mut self, encryptor: &mut GcmEncryptor, plaintext: &[u8]) -> Result<(), FileCryptoError> {
        self.through_buffer(plaintext, |piece, ciphertext| encryptor.encrypt(piece, ciphertext))
    }

    fn append_tag(&mut self, tag: &GcmTag) -> Result<(), FileCryptoError> {
        Ok(self.writer.write_all(tag.as_bytes())?)
    }
}

impl<W: Write> PlaintextSink for WriteSink<W> {
    fn decrypt(&mut self, decryptor: &mut GcmDecryptor, ciphertext: &[u8]) -> Result<(), FileCryptoError> {
        self.through_buffer(ciphertext, |piece, plaintext| decryptor.decrypt(piece, plaintext))
    }
}

/// Streams `blob` through GCM into `sink`, holding back the last 16 bytes seen (the tag, if the blob ends
/// there), then verifies. `sink` receives unauthenticated data: callers must discard it on error.
fn decrypt_stream(
    mut blob: impl BufRead,
    key: &Aes128Key,
    nonce: &GcmNonce,
    expected_tag: Option<&GcmTag>,
    sink: &mut impl PlaintextSink,
) -> Result<u64, FileCryptoError> {
    let mut decryptor = GcmDecryptor::new(key, nonce)?;
    // Invariant: `held[..held_len]` are the last bytes read, not yet decrypted, and held_len <= TAG_LEN.
    let mut held = [0u8; TAG_LEN];
    let mut held_len = 0;
    let mut plaintext_len: u64 = 0;
    loop {
        let available = match blob.fill_buf() {
            Ok([]) => break,
            Ok(available) => available,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => return Err(error.into()),
        };
        let piece = &available[..available.len().min(CHUNK_LEN)];
        // Everything but the last TAG_LEN bytes of `held ‖ piece` is followed by a full tag's worth of bytes,
        // so it is ciphertext: the held bytes that leave the window first, then the start of `piece`.
        let total = held_len + piece.len();
        let release = total.saturating_sub(TAG_LEN);
        let from_held = release.min(held_len);
        let from_piece = release - from_held;
        sink.decrypt(&mut decryptor, &held[..from_held])?;
        sink.decrypt(&mut decryptor, &piece[..from_piece])?;
        let mut window = [0u8; TAG_LEN];
        let kept_from_held = held_len - from_held;
        window[..kept_from_held].copy_from_slice(&held[from_held..held_len]);
        window[kept_from_held..total - release].copy_from_slice(&piece[from_piece..]);
        held = window;
        held_len = total - release;
        plaintext_len += release as u64;
        let consumed = piece.len();
        blob.consume(consumed);
    }
    if held_len < TAG_LEN {
        return Err(FileCryptoError::Authentication);
    }
    if expected_tag.is_some_and(|expected| !expected.matches(&held)) {
        return Err(FileCryptoError::Authentication);
    }
    decryptor.verify(&held)?;
    Ok(plaintext_len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::gcm;

    /// Hands out at most `step` bytes per read or `fill_buf`, to exercise the tag hold-back across short reads.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
            let count = self.step.min(buffer.len()).min(self.data.len());
            buffer[..count].copy_from_slice(&self.data[..count]);
            self.data = &self.data[count..];
            Ok(count)
        }
    }

    impl BufRead for Trickle<'_> {
        fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
            Ok(&self.data[..self.step.min(self.data.len())])
        }

        fn consume(&mut self, amount: usize) {
            self.data = &self.data[amount..];
        }
    }

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|index| (index * 31 + index / 251) as u8).collect()
    }

    /// Round trip through every decryption path, and the blob is exactly seal(key, nonce, plaintext).
    fn check_round_trip(plaintext: &[u8]) {
        let mut blob = Vec::new();
        let encrypted = encrypt(plaintext, &mut blob).expect("encrypt");
        assert_eq!(blob.len() as u64, encrypted.blob_len);
        assert_eq!(blob.len(), plaintext.len() + TAG_LEN);
        assert_eq!(encrypted.nonce.as_bytes().len(), 16);
        assert_eq!(&blob[plaintext.len()..], encrypted.tag.as_bytes());
        assert_eq!(
            blob,
            gcm::seal(&encrypted.key, &encrypted.nonce, plaintext).expect("seal")
        );

        let opened =
            decrypt_to_vec(blob.as_slice(), &encrypted.key, &encrypted.nonce, Some(&encrypted.tag)).expect("open");
        assert_eq!(opened.as_slice(), plaintext);
        // Short reads on both sides of the tag hold-back, in both directions and into both kinds of sink.
        let steps: &[usize] = if plaintext.len() < 100_000 {
            &[1, 7, 16, 17, 40]
        } else {
            &[4099]
        };
        for &step in steps {
            let trickled = Trickle { data: &blob, step };
            assert_eq!(
                decrypt_to_vec(trickled, &encrypted.key, &encrypted.nonce, None)
                    .expect("open")
                    .as_slice(),
                plaintext,
                "step {step}"
            );
            let mut written = Vec::new();
            let trickled = Trickle { data: &blob, step };
            decrypt_stream(
                trickled,
                &encrypted.key,
                &encrypted.nonce,
                None,
                &mut WriteSink {
                    writer: &mut written,
                    buffer: Zeroizing::new(vec![0u8; CHUNK_LEN]),
                },
            )
            .expect("open");
            assert_eq!(written, plaintext, "step {step}");
            let mut reencrypted = Vec::new();
            let trickled = Trickle { data: plaintext, step };
            encrypt_with(encrypted.key.clone(), encrypted.nonce, trickled, &mut reencrypted).expect("encrypt");
            assert_eq!(reencrypted, blob, "step {step}");
        }

        // Straight into a `Vec`, after what it already held: the same layout under its own fresh key.
        let mut in_memory = b"already here".to_vec();
        let direct = encrypt_into(plaintext, &mut in_memory).expect("encrypt into");
        assert_eq!(direct.blob_len, encrypted.blob_len);
        assert_eq!(&in_memory[..12], b"already here");
        assert_eq!(
            in_memory[12..],
            gcm::seal(&direct.key, &direct.nonce, plaintext).expect("seal")
        );

        let directory = tempfile::tempdir().expect("tempdir");
        let destination = directory.path().join("plain");
        let written = decrypt_to_path(
            blob.as_slice(),
            &encrypted.key,
            &encrypted.nonce,
            Some(&encrypted.tag),
            &destination,
        )
        .expect("decrypt to path");
        assert_eq!(written, plaintext.len() as u64);
        assert_eq!(std::fs::read(&destination).expect("read"), plaintext);
    }

    #[test]
    fn round_trips_at_block_and_chunk_boundaries() {
        for len in [0, 1, 15, 16, 17, CHUNK_LEN - 1, CHUNK_LEN + TAG_LEN, 1024 * 1024 + 1] {
            check_round_trip(&sample(len));
        }
    }

    #[test]
    fn tampering_releases_nothing() {
        let plaintext = sample(1000);
        let mut blob = Vec::new();
        let encrypted = encrypt(plaintext.as_slice(), &mut blob).expect("encrypt");
        let directory = tempfile::tempdir().expect("tempdir");
        let destination = directory.path().join("plain");

        let mut cases = Vec::new();
        for index in [0, 500, 999, 1000, blob.len() - 1] {
            let mut altered = blob.clone();
            altered[index] ^= 0x01;
            cases.push(altered);
        }
        cases.push(blob[..blob.len() - 1].to_vec());
        cases.push(blob[..15].to_vec());
        cases.push(Vec::new());
        let mut extended = blob.clone();
        extended.push(0);
        cases.push(extended);
        for altered in &cases {
            let result = decrypt_to_path(altered.as_slice(), &encrypted.key, &encrypted.nonce, None, &destination);
            assert!(matches!(result, Err(FileCryptoError::Authentication)), "{result:?}");
            assert!(matches!(
                decrypt_to_vec(altered.as_slice(), &encrypted.key, &encrypted.nonce, None),
                Err(FileCryptoError::Authentication)
            ));
        }
        // Neither the destination nor a temporary file is left behind.
        assert_eq!(std::fs::read_dir(directory.path()).expect("list").count(), 0);

        // A valid blob whose tag is not the metadata's (a swapped file) is refused too.
        let other_tag = GcmTag::from_slice(&[0u8; 16]).expect("tag");
        assert!(matches!(
            decrypt_to_path(
                blob.as_slice(),
                &encrypted.key,
                &encrypted.nonce,
                Some(&other_tag),
                &destination
            ),
            Err(FileCryptoError::Authentication)
        ));
        let wrong_key = Aes128Key::generate().expect("key");
        assert!(matches!(
            decrypt_to_vec(blob.as_slice(), &wrong_key, &encrypted.nonce, None),
            Err(FileCryptoError::Authentication)
        ));
        assert_eq!(std::fs::read_dir(directory.path()).expect("list").count(), 0);
    }

    #[test]
    fn the_metadata_entry_decrypts_the_blob() {
        let mut blob = Vec::new();
        let encrypted = encrypt(&b"hello"[..], &mut blob).expect("encrypt");
        let entry = encrypted.metadata_entry("hello.txt", "text/plain");
        let json = serde_json::to_string(&entry).expect("json");
        let entry: FileEntry = serde_json::from_str(&json).expect("parse");
        let opened = decrypt_to_vec(
            blob.as_slice(),
            &entry.key,
            &entry.nonce,
            Some(&entry.authentication_tag),
        );
        assert_eq!(opened.expect("open").as_slice(), b"hello");
    }

    #[test]
    fn decrypt_into_reuses_the_buffer_and_empties_it_on_failure() {
        let plaintext = sample(70_000);
        let mut blob = Vec::new();
        let encrypted = encrypt(plaintext.as_slice(), &mut blob).expect("encrypt");
        let mut output = b"stale".to_vec();
        let len = decrypt_into(blob.as_slice(), &encrypted.key, &encrypted.nonce, None, &mut output).expect("open");
        assert_eq!((len, output.as_slice()), (70_000, plaintext.as_slice()));
        blob[69_999] ^= 1;
        assert!(matches!(
            decrypt_into(blob.as_slice(), &encrypted.key, &encrypted.nonce, None, &mut output),
            Err(FileCryptoError::Authentication)
        ));
        assert!(output.is_empty());
    }

    #[test]
    fn a_failed_read_leaves_encrypt_into_blob_as_it_was() {
        /// Yields `good` bytes, then fails.
        struct FailingAfter {
            good: Vec<u8>,
        }
        impl std::io::Read for FailingAfter {
            fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
                if self.good.is_empty() {
                    return Err(std::io::Error::other("disk gone"));
                }
                let count = buffer.len().min(self.good.len());
                buffer[..count].copy_from_slice(&self.good[..count]);
                self.good.drain(..count);
                Ok(count)
            }
        }
        let mut blob = b"earlier blob".to_vec();
        let reader = std::io::BufReader::new(FailingAfter { good: sample(100_000) });
        let result = encrypt_into(reader, &mut blob);
        assert!(matches!(result, Err(FileCryptoError::Io(_))), "{result:?}");
        assert_eq!(blob, b"earlier blob");
    }

    #[test]
    fn a_failed_decryption_keeps_the_previous_file() {
        let directory = tempfile::tempdir().expect("tempdir");
        let destination = directory.path().join("plain");
        std::fs::write(&destination, b"previous version").expect("write");
        let mut blob = Vec::new();
        let encrypted = encrypt(&b"new version"[..], &mut blob).expect("encrypt");
        blob[0] ^= 1;
        assert!(decrypt_to_path(blob.as_slice(), &encrypted.key, &encrypted.nonce, None, &destination).is_err());
        assert_eq!(std::fs::read(&destination).expect("read"), b"previous version");
    }

    #[test]
    fn web_client_blobs_with_12_byte_nonces_decrypt() {
        let key = Aes128Key::generate().expect("key");
        let nonce = GcmNonce::random12().expect("nonce");
        let plaintext = sample(70_000);
        let mut blob = Vec::new();
        encrypt_with(key.clone(), nonce, plaintext.as_slice(), &mut blob).expect("encrypt");
        assert_eq!(blob, gcm::seal(&key, &nonce, &plaintext).expect("aws-lc-rs seal"));
        assert_eq!(
            decrypt_to_vec(blob.as_slice(), &key, &nonce, None)
                .expect("open")
                .as_slice(),
            plaintext
        );
    }

    #[test]
    fn openssl_16_byte_nonce_vectors_decrypt_as_files() {
        let vectors = include_str!("../../testdata/gcm-16-byte-nonce.txt");
        for line in vectors.lines().filter(|line| !line.starts_with('#')) {
            let fields: Vec<&str> = line.split(' ').collect();
            if fields[0].len() != 32 {
                continue; // AES-256 lines: files are AES-128 only.
            }
            let key = Aes128Key::from_slice(&hex::decode(fields[0]).expect("hex")).expect("key");
            let nonce = GcmNonce::from_slice(&hex::decode(fields[1]).expect("hex")).expect("nonce");
            let plaintext = if fields[2] == "-" {
                Vec::new()
            } else {
                hex::decode(fields[2]).expect("hex")
            };
            let blob = hex::decode(fields[3]).expect("hex");
            let trickled = Trickle { data: &blob, step: 5 };
            assert_eq!(
                decrypt_to_vec(trickled, &key, &nonce, None).expect("open").as_slice(),
                plaintext
            );
        }
    }
}
