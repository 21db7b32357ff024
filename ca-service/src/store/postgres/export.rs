//! The PostgreSQL store's side of `audit export`: the stored certificates in serial order, a page at a time (each page one bounded operation), each with the log index of the entry it references.

use super::{PostgresStore, store_error};
use crate::identity::SerialNumber;
use crate::storage::StoreError;
use crate::transparency::export::{CertificateExport, ExportedCertificate};

/// A page after a serial: a range scan of the primary key, and a probe of the entry it references.
const PAGE_AFTER: &str =
    "SELECT certificates.serial, certificates.user_id, certificates.key_sha256, certificates.certificate_der,
                                 audit_entries.id IS NOT NULL, audit_entries.leaf_index
                          FROM certificates LEFT JOIN audit_entries ON audit_entries.id = certificates.entry_id
                          WHERE certificates.serial > $1 ORDER BY certificates.serial LIMIT $2";

/// The first page, with no lower bound (`serial > ''` would skip an empty serial).
const FIRST_PAGE: &str =
    "SELECT certificates.serial, certificates.user_id, certificates.key_sha256, certificates.certificate_der,
                                 audit_entries.id IS NOT NULL, audit_entries.leaf_index
                          FROM certificates LEFT JOIN audit_entries ON audit_entries.id = certificates.entry_id
                          ORDER BY certificates.serial LIMIT $1";

impl CertificateExport for PostgresStore {
    async fn certificates_after(
        &self,
        after: Option<SerialNumber>,
        limit: usize,
    ) -> Result<Vec<ExportedCertificate>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.bounded(async |client| {
            let rows = match &after {
                Some(after) => client.query(PAGE_AFTER, &[&after.as_bytes(), &limit]).await,
                None => client.query(FIRST_PAGE, &[&limit]).await,
            }
            .map_err(store_error)?;
            rows.iter()
                .map(|row| {
                    let entry_stored: bool = row.get(4);
                    ExportedCertificate::from_columns(
                        row.get(0),
                        row.get(1),
                        row.get(2),
                        row.get(3),
                        entry_stored.then(|| row.get(5)),
                    )
                })
                .collect()
        })
        .await
    }
}
