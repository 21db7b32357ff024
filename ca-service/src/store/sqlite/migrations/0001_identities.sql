-- Version 1: pins, certificates and the audit entries that record them.

-- One row per user with a pinned key. The primary key makes "one key per user" and the UNIQUE
-- constraint makes "one user per key" hold whatever the interleaving of concurrent requests.
CREATE TABLE identities (
    user_id        TEXT    NOT NULL PRIMARY KEY,
    key_sha256     BLOB    NOT NULL UNIQUE CHECK (length(key_sha256) = 32),
    spki_der       BLOB    NOT NULL,
    pinned_at      INTEGER NOT NULL            -- Unix seconds
) STRICT;

-- Every certificate ever issued. Serials are unique across the CA's life.
CREATE TABLE certificates (
    serial           BLOB    NOT NULL PRIMARY KEY,
    user_id          TEXT    NOT NULL REFERENCES identities (user_id),
    key_sha256       BLOB    NOT NULL,
    certificate_der  BLOB    NOT NULL,
    not_before       INTEGER NOT NULL,         -- Unix seconds
    not_after        INTEGER NOT NULL,         -- Unix seconds
    issued_at        INTEGER NOT NULL          -- Unix seconds
) STRICT;

-- "Newest certificate of a user" and "certificates of a user in the last day" use this index.
CREATE INDEX certificates_by_user ON certificates (user_id, issued_at);

-- The audit log: canonical entry bytes, stored and hashed as written. Index = id - 1.
CREATE TABLE audit_entries (
    id          INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    entry       BLOB    NOT NULL,
    entry_hash  BLOB    NOT NULL CHECK (length(entry_hash) = 32)
) STRICT;
