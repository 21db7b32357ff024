//! The embedded store's side of `audit export`: the stored certificates in serial order, a page at a time, each with the log index of the entry it references.

use rusqlite::{Row, params};

use super::{SqliteStore, store_error};
use crate::identity::SerialNumber;
use crate::storage::StoreError;
use crate::transparency::export::{CertificateExport, ExportedCertificate};

/// A page after a serial: a range scan of the primary key, and a probe of the entry it references.
const PAGE_AFTER: &str =
    "SELECT certificates.serial, certificates.user_id, certificates.key_sha256, certificates.certificate_der,
                                 audit_entries.id IS NOT NULL, audit_entries.leaf_index
                          FROM certificates LEFT JOIN audit_entries ON audit_entries.id = certificates.entry_id
                          WHERE certificates.serial > ?1 ORDER BY certificates.serial LIMIT ?2";

/// The first page, with no lower bound (`serial > x''` would skip an empty serial).
const FIRST_PAGE: &str =
    "SELECT certificates.serial, certificates.user_id, certificates.key_sha256, certificates.certificate_der,
                                 audit_entries.id IS NOT NULL, audit_entries.leaf_index
                          FROM certificates LEFT JOIN audit_entries ON audit_entries.id = certificates.entry_id
                          ORDER BY certificates.serial LIMIT ?1";

/// The columns of one row, as stored.
type Columns = (Vec<u8>, String, Vec<u8>, Vec<u8>, bool, Option<i64>);

fn columns(row: &Row<'_>) -> rusqlite::Result<Columns> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

impl CertificateExport for SqliteStore {
    async fn certificates_after(
        &self,
        after: Option<SerialNumber>,
        limit: usize,
    ) -> Result<Vec<ExportedCertificate>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_reader(move |connection| {
            let rows: Vec<Columns> = match &after {
                Some(after) => connection.prepare_cached(PAGE_AFTER).and_then(|mut statement| {
                    statement
                        .query_map(params![after.as_bytes(), limit], columns)?
                        .collect()
                }),
                None => connection
                    .prepare_cached(FIRST_PAGE)
                    .and_then(|mut statement| statement.query_map(params![limit], columns)?.collect()),
            }
            .map_err(store_error)?;
            rows.into_iter()
                .map(|(serial, user, key, der, entry_stored, leaf_index)| {
                    ExportedCertificate::from_columns(serial, &user, &key, der, entry_stored.then_some(leaf_index))
                })
                .collect()
        })
        .await
    }
}
