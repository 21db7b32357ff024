-- Version 3: every CA certificate the service has served, each recorded once in the audit log
-- (the ceremony's outcome as the log first sees it). Written at startup, before serving; the
-- primary key makes replicas starting together record it once.
CREATE TABLE ca_certificates (
    certificate_sha256  BYTEA       NOT NULL PRIMARY KEY CHECK (length(certificate_sha256) = 32),
    entry_id            BIGINT      NOT NULL REFERENCES audit_entries (id),
    first_served_at     TIMESTAMPTZ NOT NULL
);
