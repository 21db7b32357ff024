-- Version 6: key backup (KeyBackup service), proofs of possession, the offline recovery key and
-- escrow deposits (key_backup.rs, recovery.rs).

-- One mnemonic-wrapped private key per user, opaque to the CA; deleted by an identity reset.
CREATE TABLE key_backups (
    user_id      TEXT        NOT NULL PRIMARY KEY REFERENCES identities (user_id),
    wrapped_key  TEXT        NOT NULL CHECK (octet_length(wrapped_key) BETWEEN 1 AND 16384),
    key_sha256   BYTEA       NOT NULL CHECK (octet_length(key_sha256) = 32), -- the pin the proof verified against
    stored_at    TIMESTAMPTZ NOT NULL,
    entry_id     BIGINT      NOT NULL                                        -- the key-backup-stored entry
);

-- Single-use nonces for proofs of possession; a write consumes its nonce (used_at) once.
CREATE TABLE backup_nonces (
    nonce       BYTEA       NOT NULL PRIMARY KEY CHECK (octet_length(nonce) = 32),
    user_id     TEXT        NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    used_at     TIMESTAMPTZ
);
CREATE INDEX backup_nonces_by_user ON backup_nonces (user_id, expires_at);

-- Every recovery key ever enabled; at most one has disabled_at NULL (the enabled one).
CREATE TABLE recovery_keys (
    key_sha256          BYTEA       NOT NULL PRIMARY KEY CHECK (octet_length(key_sha256) = 32),
    spki_der            BYTEA       NOT NULL,
    certificate_der     BYTEA       NOT NULL,
    ceremony_reference  TEXT        NOT NULL,
    request_id          TEXT        NOT NULL,
    enabled_at          TIMESTAMPTZ NOT NULL,
    disabled_at         TIMESTAMPTZ
);
CREATE UNIQUE INDEX recovery_keys_enabled ON recovery_keys ((true)) WHERE disabled_at IS NULL;

-- One escrow deposit per user, sealed to the recovery key named; the CA cannot open it.
CREATE TABLE escrows (
    user_id              TEXT        NOT NULL PRIMARY KEY REFERENCES identities (user_id),
    recovery_key_sha256  BYTEA       NOT NULL CHECK (octet_length(recovery_key_sha256) = 32),
    blob                 BYTEA       NOT NULL CHECK (octet_length(blob) BETWEEN 1 AND 16384),
    key_sha256           BYTEA       NOT NULL CHECK (octet_length(key_sha256) = 32),
    deposited_at         TIMESTAMPTZ NOT NULL,
    entry_id             BIGINT      NOT NULL                                -- the escrow-deposited entry
);

-- A recovery-key registration carries its proposed key until approved.
ALTER TABLE approval_requests ADD COLUMN recovery_spki_der BYTEA;
ALTER TABLE approval_requests ADD COLUMN ceremony_reference TEXT;
