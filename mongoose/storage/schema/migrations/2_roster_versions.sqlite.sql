-- Schema version 2 for SQLite: what XEP-0237 roster versioning needs to send a client
-- only the changes since the version it holds, and RFC 6121 §3.4 subscription
-- pre-approval. Applied in one transaction with its record (SQLite's DDL is
-- transactional), so ADD COLUMN, which has no IF NOT EXISTS here, runs once.

-- table: roster_item_version ----------------------------------------------------------
-- The roster version at which each contact last changed; a removed contact keeps its
-- row (removed = 1) until pruned (mongoose/storage/backends/roster.py).
CREATE TABLE IF NOT EXISTS roster_item_version (
    server TEXT NOT NULL,
    username TEXT NOT NULL,
    jid TEXT NOT NULL,
    version TEXT NOT NULL,
    removed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (server, username, jid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS i_roster_item_version
    ON roster_item_version (server, username, version);
-- end: roster_item_version

-- approved: the user pre-approved the contact's subscription request (RFC 6121 §3.4).
ALTER TABLE rosterusers ADD COLUMN approved INTEGER NOT NULL DEFAULT 0;
-- oldest: the oldest version changes can be computed from (removed contacts older than
-- it were pruned); NULL: every version this table's rows cover.
ALTER TABLE roster_version ADD COLUMN oldest TEXT;
