-- Version 5: pins and certificates reference the audit entries that record them, so that the
-- issuer checks a pin against its log entry before signing a renewal, and a lookup checks a stored
-- certificate against its entry's certificate hash.

-- The entry that pinned the user's current key: its `issuance`, or the `identity-reset` that
-- replaced the previous key. NULL only where the backfill below found no such entry, which the
-- issuer refuses to renew (fail closed). Neither column is a foreign key: the check against the log
-- guards them (a reference pointed elsewhere or at nothing is refused there), not the schema.
ALTER TABLE identities ADD COLUMN pin_entry_id BIGINT;
-- The entry that records the certificate (issuance, renewal or identity-reset).
ALTER TABLE certificates ADD COLUMN entry_id BIGINT;

-- Backfill from the entries' text (lines are `name value`, each after a newline). Entries written
-- before version 4 have no subject column, so the text is searched: a scan per row, run once.
UPDATE identities SET pin_entry_id = (
    SELECT max(id) FROM audit_entries
    WHERE position(convert_to(E'\nsubject ' || identities.user_id || E'\n', 'UTF8') IN entry) > 0
      AND position(convert_to(E'\nkey-sha256 ' || encode(identities.key_sha256, 'hex') || E'\n', 'UTF8') IN entry) > 0
      AND (position(convert_to(E'\nkind issuance\n', 'UTF8') IN entry) > 0
           OR position(convert_to(E'\nkind identity-reset\n', 'UTF8') IN entry) > 0)
);
UPDATE certificates SET entry_id = (
    SELECT min(id) FROM audit_entries
    WHERE position(convert_to(E'\nsubject ' || certificates.user_id || E'\n', 'UTF8') IN entry) > 0
      AND position(convert_to(E'\nserial ' || encode(certificates.serial, 'hex') || E'\n', 'UTF8') IN entry) > 0
);
