//! A file of more than 2 GiB streams through encryption and decryption in constant memory (`protocol::file`).
//!
//! Its own test binary, so that the process's peak resident set (`VmHWM`) is this test's alone. The plaintext is
//! generated while it is read and hashed on the way in; the ciphertext and the decrypted file go to a temporary
//! directory on disk (page cache, not resident memory), and the decrypted file is hashed when read back.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a test failure")]

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read};
use std::path::Path;
use std::time::Instant;

use aws_lc_rs::cipher::{AES_128, EncryptingKey, EncryptionContext, UnboundCipherKey};
use aws_lc_rs::digest::{self, SHA256};
use aws_lc_rs::iv::FixedLength;
use e2ee_client::protocol::file;

/// The large file: 2 GiB and 7 bytes, so that the last block is partial.
const LARGE_LEN: u64 = (2 << 30) + 7;
/// The small file the peak is compared with.
const SMALL_LEN: u64 = 1 << 20;
/// How much the peak resident set may grow between the small and the large file.
const ALLOWED_GROWTH_KIB: u64 = 32 * 1024;
/// Most bytes generated per read.
const MAX_READ: usize = 64 * 1024;

/// A reproducible pseudo-random plaintext, made as it is read: the AES-128-CTR keystream under a fixed seed key
/// (fast even in a debug build, since aws-lc-rs is always optimised). Hashes what it hands out.
struct SeededPlaintext {
    keystream: EncryptingKey,
    position: u64,
    len: u64,
    scratch: Vec<u8>,
    digest: digest::Context,
}

impl SeededPlaintext {
    fn new(seed: [u8; 16], len: u64) -> SeededPlaintext {
        let key = UnboundCipherKey::new(&AES_128, &seed).expect("seed key");
        SeededPlaintext {
            keystream: EncryptingKey::ctr(key).expect("ctr"),
            position: 0,
            len,
            scratch: vec![0u8; MAX_READ + 16],
            digest: digest::Context::new(&SHA256),
        }
    }
}

impl Read for SeededPlaintext {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let count = (self.len - self.position).min(buffer.len() as u64).min(MAX_READ as u64) as usize;
        if count == 0 {
            return Ok(0);
        }
        // Keystream for the blocks covering [position, position + count), from the block holding `position`.
        let offset = (self.position % 16) as usize;
        let span = (offset + count).div_ceil(16) * 16;
        let scratch = &mut self.scratch[..span];
        scratch.fill(0);
        let counter = u128::from(self.position / 16).to_be_bytes();
        self.keystream
            .less_safe_encrypt(scratch, EncryptionContext::Iv128(FixedLength::from(counter)))
            .map_err(|_| io::Error::other("keystream"))?;
        buffer[..count].copy_from_slice(&scratch[offset..offset + count]);
        self.digest.update(&buffer[..count]);
        self.position += count as u64;
        Ok(count)
    }
}

/// The process's peak resident set so far, in KiB.
fn peak_resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .expect("VmHWM line");
    line.split_whitespace()
        .nth(1)
        .and_then(|kib| kib.parse().ok())
        .expect("VmHWM value")
}

fn sha256_of_file(path: &Path) -> Vec<u8> {
    let mut reader = File::open(path).expect("open");
    let mut digest = digest::Context::new(&SHA256);
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = reader.read(&mut buffer).expect("read");
        if read == 0 {
            return digest.finish().as_ref().to_vec();
        }
        digest.update(&buffer[..read]);
    }
}

/// Encrypts `len` seeded bytes to a file, decrypts that file to another, and checks both lengths and hashes.
fn check_round_trip(directory: &Path, len: u64) {
    let blob_path = directory.join("blob");
    let plain_path = directory.join("plain");
    let mut plaintext = SeededPlaintext::new([len as u8; 16], len);
    let encrypted = file::encrypt(
        BufReader::with_capacity(MAX_READ, &mut plaintext),
        BufWriter::new(File::create(&blob_path).expect("create")),
    )
    .expect("encrypt");
    assert_eq!(plaintext.position, len);
    assert_eq!(encrypted.blob_len, len + 16);
    assert_eq!(std::fs::metadata(&blob_path).expect("stat").len(), len + 16);
    let plaintext_hash = plaintext.digest.finish();

    let decrypted_len = file::decrypt_to_path(
        BufReader::new(File::open(&blob_path).expect("open")),
        &encrypted.key,
        &encrypted.nonce,
        Some(&encrypted.tag),
        &plain_path,
    )
    .expect("decrypt");
    assert_eq!(decrypted_len, len);
    assert_eq!(sha256_of_file(&plain_path), plaintext_hash.as_ref());
    std::fs::remove_file(&blob_path).expect("remove");
    std::fs::remove_file(&plain_path).expect("remove");
}

#[test]
fn a_2_gib_file_round_trips_in_constant_memory() {
    let directory = tempfile::tempdir().expect("tempdir");
    check_round_trip(directory.path(), SMALL_LEN);
    let peak_after_small = peak_resident_kib();

    let start = Instant::now();
    check_round_trip(directory.path(), LARGE_LEN);
    let elapsed = start.elapsed();
    let peak_after_large = peak_resident_kib();
    eprintln!(
        "{} MiB round trip in {:.1} s; peak resident set {peak_after_small} KiB after 1 MiB, {peak_after_large} KiB after it",
        LARGE_LEN >> 20,
        elapsed.as_secs_f64()
    );
    assert!(
        peak_after_large <= peak_after_small + ALLOWED_GROWTH_KIB,
        "peak resident set grew from {peak_after_small} KiB to {peak_after_large} KiB"
    );
}
