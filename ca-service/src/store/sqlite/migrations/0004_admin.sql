-- Version 4: the Admin service: revocations, dual-control requests, CRLs, and the subject of each
-- audit entry (so that an identity's history is an index probe, not a scan of the log).

-- One row per revoked certificate; a certificate is revoked once.
CREATE TABLE revocations (
    serial      BLOB    NOT NULL PRIMARY KEY REFERENCES certificates (serial),
    reason      INTEGER NOT NULL,                   -- RFC 5280 CRLReason code
    revoked_at  INTEGER NOT NULL,                   -- Unix seconds
    entry_id    INTEGER NOT NULL REFERENCES audit_entries (id)
) STRICT;

-- Dual-control requests (approvals.rs). A request is approved once, by another principal than its
-- requester, and consumed once; the CHECKs hold that even against a buggy writer.
CREATE TABLE approval_requests (
    id                 TEXT    NOT NULL PRIMARY KEY CHECK (length(id) = 32),
    kind               TEXT    NOT NULL,
    subject            TEXT    NOT NULL,
    reason             TEXT    NOT NULL,
    revocation_reason  INTEGER NOT NULL,
    key_sha256         BLOB    CHECK (key_sha256 IS NULL OR length(key_sha256) = 32),
    requested_by       TEXT    NOT NULL,
    requested_at       INTEGER NOT NULL,            -- Unix seconds
    expires_at         INTEGER NOT NULL,            -- Unix seconds
    approved_by        TEXT,
    approved_at        INTEGER,
    consumed_at        INTEGER,
    CHECK (approved_by IS NULL OR approved_by <> requested_by),
    CHECK ((approved_by IS NULL) = (approved_at IS NULL)),
    CHECK (consumed_at IS NULL OR approved_at IS NOT NULL)
) STRICT;
-- Open requests of a user, and all open requests in age order.
CREATE INDEX approval_requests_by_subject ON approval_requests (subject, kind) WHERE consumed_at IS NULL;
CREATE INDEX approval_requests_open ON approval_requests (requested_at) WHERE consumed_at IS NULL;

-- Every CRL published; numbers only grow (the primary key decides between replicas).
CREATE TABLE crls (
    number         INTEGER NOT NULL PRIMARY KEY CHECK (number > 0),
    this_update    INTEGER NOT NULL,                -- Unix seconds
    next_update    INTEGER NOT NULL,                -- Unix seconds
    revoked_count  INTEGER NOT NULL,
    der            BLOB    NOT NULL
) STRICT;

-- Entries written from this version on name their subject here as well as in their text.
ALTER TABLE audit_entries ADD COLUMN subject TEXT;
CREATE INDEX audit_entries_by_subject ON audit_entries (subject, id) WHERE subject IS NOT NULL;
