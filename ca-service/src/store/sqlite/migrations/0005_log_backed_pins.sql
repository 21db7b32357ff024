-- Version 5: pins and certificates reference the audit entries that record them, so that the
-- issuer checks a pin against its log entry before signing a renewal, and a lookup checks a stored
-- certificate against its entry's certificate hash.

-- The entry that pinned the user's current key: its `issuance`, or the `identity-reset` that
-- replaced the previous key. NULL only where the backfill below found no such entry, which the
-- issuer refuses to renew (fail closed). Neither column is a foreign key: the check against the log
-- guards them (a reference pointed elsewhere or at nothing is refused there), not the schema.
ALTER TABLE identities ADD COLUMN pin_entry_id INTEGER;
-- The entry that records the certificate (issuance, renewal or identity-reset).
ALTER TABLE certificates ADD COLUMN entry_id INTEGER;

-- Backfill from the entries' text (lines are `name value`, each after a newline). Entries written
-- before version 4 have no subject column, so the text is searched: a scan per row, run once.
UPDATE identities SET pin_entry_id = (
    SELECT max(id) FROM audit_entries
    WHERE instr(entry, CAST(char(10) || 'subject ' || identities.user_id || char(10) AS BLOB)) > 0
      AND instr(entry, CAST(char(10) || 'key-sha256 ' || lower(hex(identities.key_sha256)) || char(10) AS BLOB)) > 0
      AND (instr(entry, CAST(char(10) || 'kind issuance' || char(10) AS BLOB)) > 0
           OR instr(entry, CAST(char(10) || 'kind identity-reset' || char(10) AS BLOB)) > 0)
);
UPDATE certificates SET entry_id = (
    SELECT min(id) FROM audit_entries
    WHERE instr(entry, CAST(char(10) || 'subject ' || certificates.user_id || char(10) AS BLOB)) > 0
      AND instr(entry, CAST(char(10) || 'serial ' || lower(hex(certificates.serial)) || char(10) AS BLOB)) > 0
);
