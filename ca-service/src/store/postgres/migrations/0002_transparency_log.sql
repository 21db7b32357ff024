-- Version 2: the transparency log over the audit entries (PostgreSQL; see transparency/mod.rs).

-- `audit_entries` becomes the outbox: business transactions insert entries without an index (on
-- any replica), and the one sequencer assigns contiguous indices 0, 1, 2, … in batches. Identity
-- ids may have gaps and commit out of order; log indices never do. NULL = not sequenced yet.
ALTER TABLE audit_entries ADD COLUMN leaf_index BIGINT UNIQUE CHECK (leaf_index >= 0);
-- The sequencer's "next pending entries" query reads only this (small) partial index.
CREATE INDEX audit_entries_pending ON audit_entries (id) WHERE leaf_index IS NULL;

-- Every perfect subtree hash of the RFC 6962 tree: level 0 holds the leaf hashes, level L the
-- subtree over leaves [index·2^L, (index+1)·2^L). About two rows per entry; written once, never
-- updated. Proofs read about 2·log2(n) rows by primary key in one query.
CREATE TABLE audit_tree_nodes (
    level       SMALLINT NOT NULL CHECK (level BETWEEN 0 AND 63),
    node_index  BIGINT   NOT NULL CHECK (node_index >= 0),
    hash        BYTEA    NOT NULL CHECK (octet_length(hash) = 32),
    PRIMARY KEY (level, node_index)
);

-- The log head, one row: the compare-and-swap target of every sequencing transaction
-- (SELECT … FOR UPDATE, then UPDATE … WHERE size = old AND root = old).
CREATE TABLE audit_log_head (
    id    SMALLINT NOT NULL PRIMARY KEY CHECK (id = 1),
    size  BIGINT   NOT NULL CHECK (size >= 0),
    root  BYTEA    NOT NULL CHECK (octet_length(root) = 32)
);
-- The empty tree: size 0, root SHA-256("").
INSERT INTO audit_log_head (id, size, root)
VALUES (1, 0, decode('e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', 'hex'));

-- Every signed checkpoint (full history; a heartbeat re-signature replaces the note of its size).
CREATE TABLE audit_checkpoints (
    size       BIGINT      NOT NULL PRIMARY KEY,
    root       BYTEA       NOT NULL CHECK (octet_length(root) = 32),
    note       TEXT        NOT NULL,
    signed_at  TIMESTAMPTZ NOT NULL
);
