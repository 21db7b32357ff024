-- Version 2: the transparency log over the audit entries (see transparency/mod.rs).

-- `audit_entries` becomes the outbox: business transactions insert entries without an index, and
-- the sequencer assigns contiguous indices 0, 1, 2, … in batches. NULL = not sequenced yet.
ALTER TABLE audit_entries ADD COLUMN leaf_index INTEGER;
CREATE UNIQUE INDEX audit_entries_by_leaf_index ON audit_entries (leaf_index);
-- The sequencer's "next pending entries" query reads only this (small) partial index.
CREATE INDEX audit_entries_pending ON audit_entries (id) WHERE leaf_index IS NULL;

-- Every perfect subtree hash of the RFC 6962 tree: level 0 holds the leaf hashes, level L the
-- subtree over leaves [index·2^L, (index+1)·2^L). About two rows per entry; written once, never
-- updated. Proofs read about 2·log2(n) rows by primary key.
CREATE TABLE audit_tree_nodes (
    level       INTEGER NOT NULL CHECK (level BETWEEN 0 AND 63),
    node_index  INTEGER NOT NULL CHECK (node_index >= 0),
    hash        BLOB    NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, node_index)
) STRICT, WITHOUT ROWID;

-- The log head, one row: the compare-and-swap target of every sequencing transaction.
CREATE TABLE audit_log_head (
    id    INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    size  INTEGER NOT NULL CHECK (size >= 0),
    root  BLOB    NOT NULL CHECK (length(root) = 32)
) STRICT;
-- The empty tree: size 0, root SHA-256("").
INSERT INTO audit_log_head (id, size, root)
VALUES (1, 0, X'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');

-- Every signed checkpoint (full history; a heartbeat re-signature replaces the note of its size).
CREATE TABLE audit_checkpoints (
    size       INTEGER NOT NULL PRIMARY KEY,
    root       BLOB    NOT NULL CHECK (length(root) = 32),
    note       TEXT    NOT NULL,
    signed_at  INTEGER NOT NULL            -- Unix seconds
) STRICT;
