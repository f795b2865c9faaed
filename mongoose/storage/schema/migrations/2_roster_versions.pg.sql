-- Schema version 2 for PostgreSQL (driver "pgsql"): what XEP-0237 roster versioning
-- needs to send a client only the changes since the version it holds, and RFC 6121
-- §3.4 subscription pre-approval. Every statement is idempotent.

-- table: roster_item_version ----------------------------------------------------------
-- The roster version at which each contact last changed; a removed contact keeps its
-- row (removed = true) until pruned (mongoose/storage/backends/roster.py).
CREATE TABLE IF NOT EXISTS roster_item_version (
    server TEXT NOT NULL,
    username TEXT NOT NULL,
    jid TEXT NOT NULL,
    version TEXT NOT NULL,
    removed BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (server, username, jid)
);
CREATE INDEX IF NOT EXISTS i_roster_item_version
    ON roster_item_version (server, username, version);
-- end: roster_item_version

-- approved: the user pre-approved the contact's subscription request (RFC 6121 §3.4).
ALTER TABLE rosterusers ADD COLUMN IF NOT EXISTS approved BOOLEAN NOT NULL DEFAULT FALSE;
-- oldest: the oldest version changes can be computed from (removed contacts older than
-- it were pruned); NULL: every version this table's rows cover.
ALTER TABLE roster_version ADD COLUMN IF NOT EXISTS oldest TEXT;
