-- Version 3: every CA certificate the service has served, each recorded once in the audit log
-- (the ceremony's outcome as the log first sees it). Written at startup, before serving.
CREATE TABLE ca_certificates (
    certificate_sha256  BLOB    NOT NULL PRIMARY KEY CHECK (length(certificate_sha256) = 32),
    entry_id            INTEGER NOT NULL REFERENCES audit_entries (id),
    first_served_at     INTEGER NOT NULL            -- Unix seconds
) STRICT;
