//! The offline verifier's check of the stored certificates (`certificates.bin`) against the log entries that record them.
//!
//! Every `issuance`, `renewal` and `identity-reset` entry records one certificate: its subject, `serial`,
//! `key-sha256` and `certificate-sha256`. The table of stored certificates is read first, keyed by
//! serial (about 100 bytes per certificate: the DER is hashed and dropped); then each such entry,
//! in index order, must find its certificate with the same user, key and DER hash, linked by the
//! store to that entry. Afterwards every stored certificate must have been recorded, unless the
//! store links it to an entry beyond the exported checkpoint (committed after it was signed, or not
//! sequenced yet): those cannot be checked against this export and are counted instead.
//!
//! An entry whose certificate the store does not hold fails: certificates are written in the
//! entry's transaction and never deleted, and the export reads them after the entries, so an honest
//! store always holds it.

use std::fs;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::verify::{VerifyFailure, fill};
use super::{CERTIFICATES_FILE, CERTIFICATES_MAGIC, EntryLink};
use crate::audit::{AuditKind, ParsedEntry};

/// Why the stored certificates do not match the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateFailure {
    /// A stored certificate differs from the entry that records it.
    #[error("stored certificate {serial} does not match entry {index}, which records it: {what}")]
    Differs {
        /// The serial, hex.
        serial: String,
        /// The entry's index.
        index: u64,
        /// What differs.
        what: String,
    },
    /// An entry records a certificate the store does not hold.
    #[error("entry {index} records certificate {serial} of {user}, which the store does not hold: missing certificate")]
    Missing {
        /// The entry's index.
        index: u64,
        /// The serial, hex, as the entry names it.
        serial: String,
        /// The entry's subject.
        user: String,
    },
    /// A certificate entry names no serial.
    #[error("entry {index}: the {kind} entry names no serial")]
    NoSerial {
        /// The entry's index.
        index: u64,
        /// Its kind.
        kind: String,
    },
    /// Two entries record the same serial.
    #[error("certificate {serial} is recorded twice, by entries {first} and {second}")]
    RecordedTwice {
        /// The serial, hex.
        serial: String,
        /// The first entry.
        first: u64,
        /// The second.
        second: u64,
    },
    /// The store links a certificate to another entry than the one recording it.
    #[error("stored certificate {serial} is recorded by entry {index}, but the store links it to {link}")]
    LinkDiffers {
        /// The serial, hex.
        serial: String,
        /// The entry recording it.
        index: u64,
        /// What the store links it to.
        link: EntryLink,
    },
    /// A stored certificate no entry of the exported log records.
    #[error(
        "stored certificate {serial} of {user} is recorded by no entry of the exported log (the store links it to {link})"
    )]
    Unrecorded {
        /// The serial, hex.
        serial: String,
        /// Its user, as stored.
        user: String,
        /// What the store links it to.
        link: EntryLink,
    },
    /// `certificates.bin` holds a serial twice.
    #[error("{CERTIFICATES_FILE} holds certificate {serial} twice")]
    DuplicateRecord {
        /// The serial, hex.
        serial: String,
    },
}

/// What the certificate check saw, for the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CertificateCounts {
    /// Stored certificates that match the entry recording them.
    pub checked: u64,
    /// Stored certificates whose entry lies beyond the exported checkpoint: not checked.
    pub beyond_checkpoint: u64,
}

/// One stored certificate, without its DER.
#[derive(Debug)]
struct Record {
    serial: Box<[u8]>,
    user: Box<str>,
    key: [u8; 32],
    der_sha256: [u8; 32],
    link: EntryLink,
    /// The entry that recorded it, once seen.
    recorded_by: Option<u64>,
}

/// The stored certificates of an export, sorted by serial.
#[derive(Debug)]
pub struct CertificateTable {
    records: Vec<Record>,
}

/// A malformed `certificates.bin`.
fn malformed(position: u64, what: &'static str) -> VerifyFailure {
    VerifyFailure::CertificatesMalformed { position, what }
}

impl CertificateTable {
    /// Reads `certificates.bin` from `dir`; `None` when the export has none (an older export, or
    /// one written over the `Transparency` API).
    pub fn read(dir: &Path) -> Result<Option<CertificateTable>, VerifyFailure> {
        let path = dir.join(CERTIFICATES_FILE);
        let file = match fs::File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(VerifyFailure::Io { path, source }),
        };
        let mut reader = BufReader::new(file);
        let mut magic = vec![0u8; CERTIFICATES_MAGIC.len()];
        if fill(&mut reader, &mut magic, &path)? != magic.len() || magic != CERTIFICATES_MAGIC {
            return Err(VerifyFailure::CertificatesBadMagic);
        }
        let mut records = Vec::new();
        while let Some(record) = read_record(&mut reader, &path, records.len() as u64)? {
            records.push(record);
        }
        records.sort_unstable_by(|left, right| left.serial.cmp(&right.serial));
        if let Some(pair) = records.windows(2).find(|pair| pair[0].serial == pair[1].serial) {
            return Err(CertificateFailure::DuplicateRecord {
                serial: hex::encode(&pair[0].serial),
            }
            .into());
        }
        Ok(Some(CertificateTable { records }))
    }

    /// Checks the certificate `entry` (at `index`) records, if it records one.
    pub fn check_entry(&mut self, index: u64, entry: &ParsedEntry) -> Result<(), CertificateFailure> {
        let certifies = [AuditKind::Issuance, AuditKind::Renewal, AuditKind::IdentityReset]
            .iter()
            .any(|kind| kind.name() == entry.kind);
        if !certifies {
            return Ok(());
        }
        let serial_hex = entry.detail("serial").ok_or_else(|| CertificateFailure::NoSerial {
            index,
            kind: entry.kind.clone(),
        })?;
        let missing = || CertificateFailure::Missing {
            index,
            serial: serial_hex.to_owned(),
            user: entry.subject.clone(),
        };
        let serial = hex::decode(serial_hex).map_err(|_| missing())?;
        let position = self
            .records
            .binary_search_by(|record| record.serial.as_ref().cmp(serial.as_slice()))
            .map_err(|_| missing())?;
        let record = &mut self.records[position];
        if let Some(first) = record.recorded_by {
            return Err(CertificateFailure::RecordedTwice {
                serial: serial_hex.to_owned(),
                first,
                second: index,
            });
        }
        record.recorded_by = Some(index);
        let differs = |what: String| CertificateFailure::Differs {
            serial: serial_hex.to_owned(),
            index,
            what,
        };
        let stored_der = hex::encode(record.der_sha256);
        let logged_der = entry.detail("certificate-sha256").unwrap_or("(none)");
        if logged_der != stored_der {
            return Err(differs(format!(
                "the SHA-256 of its DER is {stored_der}, the entry's certificate-sha256 is {logged_der}"
            )));
        }
        if *record.user != entry.subject {
            return Err(differs(format!(
                "it is stored for user {}, the entry's subject is {}",
                record.user, entry.subject
            )));
        }
        let stored_key = hex::encode(record.key);
        let logged_key = entry.detail("key-sha256").unwrap_or("(none)");
        if logged_key != stored_key {
            return Err(differs(format!(
                "its stored key fingerprint is {stored_key}, the entry's key-sha256 is {logged_key}"
            )));
        }
        if record.link != EntryLink::Logged(index) {
            return Err(CertificateFailure::LinkDiffers {
                serial: serial_hex.to_owned(),
                index,
                link: record.link,
            });
        }
        Ok(())
    }

    /// After the last entry of a log of `size` entries: every stored certificate not recorded must
    /// be linked beyond it.
    pub fn finish(self, size: u64) -> Result<CertificateCounts, CertificateFailure> {
        let mut counts = CertificateCounts::default();
        for record in self.records {
            if record.recorded_by.is_some() {
                counts.checked += 1;
            } else if record.link.beyond(size) {
                counts.beyond_checkpoint += 1;
            } else {
                return Err(CertificateFailure::Unrecorded {
                    serial: hex::encode(&record.serial),
                    user: record.user.into_string(),
                    link: record.link,
                });
            }
        }
        Ok(counts)
    }
}

/// Reads `N` bytes of the record at `position`.
fn read_array<const N: usize>(reader: &mut impl Read, path: &Path, position: u64) -> Result<[u8; N], VerifyFailure> {
    let mut bytes = [0u8; N];
    if fill(reader, &mut bytes, path)? != N {
        return Err(malformed(position, "the file ends inside the record"));
    }
    Ok(bytes)
}

/// Reads a big-endian length of `N` bytes (2 or 4) of the record at `position`.
fn read_length<const N: usize>(reader: &mut impl Read, path: &Path, position: u64) -> Result<usize, VerifyFailure> {
    let bytes = read_array::<N>(reader, path, position)?;
    let mut wide = [0u8; 8];
    wide[8 - N..].copy_from_slice(&bytes);
    usize::try_from(u64::from_be_bytes(wide)).map_err(|_| malformed(position, "a length does not fit in memory"))
}

/// Reads `length` bytes of the record at `position`.
fn read_bytes(reader: &mut impl Read, length: usize, path: &Path, position: u64) -> Result<Vec<u8>, VerifyFailure> {
    let mut bytes = Vec::new();
    reader
        .take(length as u64)
        .read_to_end(&mut bytes)
        .map_err(|source| VerifyFailure::Io {
            path: PathBuf::from(path),
            source,
        })?;
    if bytes.len() != length {
        return Err(malformed(position, "the file ends inside the record"));
    }
    Ok(bytes)
}

/// Reads the record at `position`; `None` at the end of the file.
fn read_record(reader: &mut impl Read, path: &Path, position: u64) -> Result<Option<Record>, VerifyFailure> {
    let mut state = [0u8; 1];
    if fill(reader, &mut state, path)? == 0 {
        return Ok(None);
    }
    let index = u64::from_be_bytes(read_array::<8>(reader, path, position)?);
    let link = match state[0] {
        0 => EntryLink::Missing,
        1 => EntryLink::Pending,
        2 => EntryLink::Logged(index),
        _ => return Err(malformed(position, "its entry state is not 0, 1 or 2")),
    };
    let length = read_length::<2>(reader, path, position)?;
    let serial = read_bytes(reader, length, path, position)?.into_boxed_slice();
    let length = read_length::<2>(reader, path, position)?;
    let user = String::from_utf8(read_bytes(reader, length, path, position)?)
        .map_err(|_| malformed(position, "its user id is not UTF-8"))?
        .into_boxed_str();
    let key = read_array::<32>(reader, path, position)?;
    let length = read_length::<4>(reader, path, position)?;
    let der_sha256 = Sha256::digest(read_bytes(reader, length, path, position)?).into();
    Ok(Some(Record {
        serial,
        user,
        key,
        der_sha256,
        link,
        recorded_by: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::{ExportedCertificate, encode_certificate};
    use super::*;
    use crate::audit::AuditEvent;
    use crate::identity::{KeyFingerprint, SerialNumber, UserId};

    fn stored(serial: u8, user: &str, der: &[u8], entry: EntryLink) -> ExportedCertificate {
        ExportedCertificate {
            serial: SerialNumber::from_bytes(vec![serial; 16]),
            user_id: UserId::parse(user).expect("user"),
            key_fingerprint: KeyFingerprint::from_bytes(&[serial; 32]).expect("key"),
            certificate_der: der.to_vec(),
            entry,
        }
    }

    /// The entry that records `certificate` as the issuer writes it.
    fn recording(kind: AuditKind, certificate: &ExportedCertificate) -> ParsedEntry {
        let event = AuditEvent {
            kind,
            actor: "sync-server".to_owned(),
            subject: certificate.user_id.to_string(),
            details: vec![
                ("key-sha256", certificate.key_fingerprint.to_hex()),
                ("serial", certificate.serial.to_hex()),
                (
                    "certificate-sha256",
                    hex::encode(Sha256::digest(&certificate.certificate_der)),
                ),
            ],
        };
        ParsedEntry::parse(&event.encode().bytes).expect("parses")
    }

    fn table(certificates: &[ExportedCertificate]) -> (tempfile::TempDir, CertificateTable) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut data = CERTIFICATES_MAGIC.to_vec();
        for certificate in certificates {
            data.extend(encode_certificate(certificate).expect("encodes"));
        }
        fs::write(dir.path().join(CERTIFICATES_FILE), data).expect("write");
        let table = CertificateTable::read(dir.path()).expect("reads").expect("present");
        (dir, table)
    }

    #[test]
    fn stored_certificates_match_their_entries_and_later_ones_are_counted() {
        let alice = stored(1, "alice", b"alice's", EntryLink::Logged(0));
        let renewed = stored(2, "alice", b"alice's second", EntryLink::Logged(1));
        let late = stored(3, "bob", b"bob's", EntryLink::Logged(2));
        let pending = stored(4, "carol", b"carol's", EntryLink::Pending);
        let (_dir, mut table) = table(&[late.clone(), alice.clone(), pending, renewed.clone()]);
        table
            .check_entry(0, &recording(AuditKind::Issuance, &alice))
            .expect("matches");
        table
            .check_entry(1, &recording(AuditKind::Renewal, &renewed))
            .expect("matches");
        assert_eq!(
            table.finish(2),
            Ok(CertificateCounts {
                checked: 2,
                beyond_checkpoint: 2
            })
        );
        assert!(
            CertificateTable::read(_dir.path().join("absent").as_path())
                .expect("no file")
                .is_none()
        );
    }

    #[test]
    fn a_changed_missing_unrecorded_or_relinked_certificate_fails() {
        let alice = stored(1, "alice", b"alice's", EntryLink::Logged(0));
        let mut changed = alice.clone();
        changed.certificate_der[2] ^= 1;
        let (_dir, mut tampered) = table(&[changed]);
        let failure = tampered
            .check_entry(0, &recording(AuditKind::Issuance, &alice))
            .expect_err("bytes differ");
        assert!(
            failure.to_string().starts_with(&format!(
                "stored certificate {} does not match entry 0",
                alice.serial.to_hex()
            )),
            "{failure}"
        );

        let (_dir, mut empty) = table(&[]);
        let failure = empty
            .check_entry(4, &recording(AuditKind::IdentityReset, &alice))
            .expect_err("missing");
        assert!(failure.to_string().contains("missing certificate"), "{failure}");

        let mut other_user = alice.clone();
        other_user.user_id = UserId::parse("mallory").expect("user");
        let (_dir, mut moved) = table(&[other_user]);
        let failure = moved
            .check_entry(0, &recording(AuditKind::Issuance, &alice))
            .expect_err("user differs");
        assert!(failure.to_string().contains("stored for user mallory"), "{failure}");

        let (_dir, mut relinked) = table(&[stored(1, "alice", b"alice's", EntryLink::Logged(7))]);
        assert!(matches!(
            relinked.check_entry(0, &recording(AuditKind::Issuance, &alice)),
            Err(CertificateFailure::LinkDiffers { index: 0, .. })
        ));

        let (_dir, mut twice) = table(std::slice::from_ref(&alice));
        twice
            .check_entry(0, &recording(AuditKind::Issuance, &alice))
            .expect("matches");
        assert!(matches!(
            twice.check_entry(3, &recording(AuditKind::Renewal, &alice)),
            Err(CertificateFailure::RecordedTwice {
                first: 0,
                second: 3,
                ..
            })
        ));

        for link in [EntryLink::Missing, EntryLink::Logged(1)] {
            let (_dir, forged) = table(&[stored(5, "alice", b"forged", link)]);
            assert!(matches!(
                forged.finish(2),
                Err(CertificateFailure::Unrecorded { link: found, .. }) if found == link
            ));
        }

        let dir = tempfile::tempdir().expect("tempdir");
        let mut data = CERTIFICATES_MAGIC.to_vec();
        data.extend(encode_certificate(&alice).expect("encodes"));
        data.extend(encode_certificate(&alice).expect("encodes"));
        fs::write(dir.path().join(CERTIFICATES_FILE), &data).expect("write");
        assert!(matches!(
            CertificateTable::read(dir.path()),
            Err(VerifyFailure::Certificate(CertificateFailure::DuplicateRecord { .. }))
        ));
        fs::write(dir.path().join(CERTIFICATES_FILE), &data[..data.len() - 1]).expect("write");
        assert!(matches!(
            CertificateTable::read(dir.path()),
            Err(VerifyFailure::CertificatesMalformed { position: 1, .. })
        ));
    }
}
