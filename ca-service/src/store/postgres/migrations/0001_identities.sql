-- Version 1: pins, certificates and the audit entries that record them (PostgreSQL).
-- The same constraints as the embedded store; every hot path is an index lookup (see store/postgres.rs).

-- One row per user with a pinned key. The primary key makes "one key per user" and the UNIQUE
-- constraint makes "one user per key" hold whatever the interleaving of concurrent requests and
-- replicas. Both are B-tree indexes: pin lookup by user and by key are single index probes.
CREATE TABLE identities (
    user_id     TEXT        NOT NULL PRIMARY KEY,
    key_sha256  BYTEA       NOT NULL UNIQUE CHECK (octet_length(key_sha256) = 32),
    spki_der    BYTEA       NOT NULL,
    pinned_at   TIMESTAMPTZ NOT NULL
);

-- Every certificate ever issued. Serials are unique across the CA's life (primary key).
-- `id` orders certificates of one user issued within the same microsecond.
CREATE TABLE certificates (
    id               BIGINT      GENERATED ALWAYS AS IDENTITY,
    serial           BYTEA       NOT NULL PRIMARY KEY,
    user_id          TEXT        NOT NULL REFERENCES identities (user_id),
    key_sha256       BYTEA       NOT NULL,
    certificate_der  BYTEA       NOT NULL,
    not_before       TIMESTAMPTZ NOT NULL,
    not_after        TIMESTAMPTZ NOT NULL,
    issued_at        TIMESTAMPTZ NOT NULL
);

-- "Newest certificate of a user" (a backward scan, LIMIT 1) and "certificates of a user in the
-- last day" (a range scan, index-only) use this index; it also serves the foreign key.
CREATE INDEX certificates_by_user ON certificates (user_id, issued_at, id);

-- The audit log: canonical entry bytes, stored and hashed as written. Index = id - 1 for now
-- (a later version replaces it with a gap-free sequencer).
CREATE TABLE audit_entries (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entry       BYTEA  NOT NULL,
    entry_hash  BYTEA  NOT NULL CHECK (octet_length(entry_hash) = 32)
);
