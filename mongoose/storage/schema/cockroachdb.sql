-- Schema version 1 for CockroachDB (driver "cockroachdb"). Applied by `mongoose db init`
-- (mongoose/storage/migrate.py) one statement at a time, outside an explicit
-- transaction (CockroachDB's schema changes inside transactions have limits); every
-- statement is idempotent (IF NOT EXISTS), so a half-applied file can be applied again.
--
-- The same tables as pg.sql, which follows MongooseIM's priv/pg.sql (see the notes
-- there). As in MongooseIM's priv/cockroachdb.sql, generated ids come from explicit
-- sequences (DEFAULT nextval(...)) rather than SERIAL, which CockroachDB maps to
-- unique_rowid() (unordered, not what the offline and privacy ids need). The file runs
-- on PostgreSQL too (it uses nothing CockroachDB-only): the tests apply it to
-- PostgreSQL, as no CockroachDB server can be installed where they run.
--
-- One block per table, between its "-- table:" and "-- end:" lines; pg.sql and
-- sqlite.sql have the same blocks in the same order.

-- table: schema_version ---------------------------------------------------------------
-- Which migrations (mongoose/storage/migrate.py) this database has had.
CREATE TABLE IF NOT EXISTS schema_version (
    version INT NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at BIGINT NOT NULL
);
-- end: schema_version

-- table: users -----------------------------------------------------------------------
-- Accounts. Only SCRAM secrets are kept, in pass_details; "password" stays empty.
CREATE TABLE IF NOT EXISTS users (
    username TEXT NOT NULL,
    server TEXT NOT NULL,
    "password" TEXT NOT NULL DEFAULT '',
    pass_details TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT now(),
    PRIMARY KEY (server, username)
);
-- end: users

-- table: rosterusers -----------------------------------------------------------------
-- Roster items. subscription: B both, T to, F from, N none.
-- ask: S subscribe, U unsubscribe, B both, O out, I in, N none.
CREATE TABLE IF NOT EXISTS rosterusers (
    server TEXT NOT NULL,
    username TEXT NOT NULL,
    jid TEXT NOT NULL,
    nick TEXT NOT NULL DEFAULT '',
    subscription CHAR(1) NOT NULL CHECK (subscription IN ('B', 'T', 'F', 'N')),
    ask CHAR(1) NOT NULL CHECK (ask IN ('S', 'U', 'B', 'O', 'I', 'N')),
    askmessage TEXT NOT NULL DEFAULT '',
    created_at TIMESTAMP NOT NULL DEFAULT now(),
    PRIMARY KEY (server, username, jid)
);
-- end: rosterusers

-- table: rostergroups ----------------------------------------------------------------
CREATE TABLE IF NOT EXISTS rostergroups (
    server TEXT NOT NULL,
    username TEXT NOT NULL,
    jid TEXT NOT NULL,
    grp TEXT NOT NULL,
    PRIMARY KEY (server, username, jid, grp)
);
-- end: rostergroups

-- table: roster_version --------------------------------------------------------------
-- XEP-0237 roster versioning: the current version string of each roster.
CREATE TABLE IF NOT EXISTS roster_version (
    server TEXT NOT NULL,
    username TEXT NOT NULL,
    version TEXT NOT NULL,
    PRIMARY KEY (server, username)
);
-- end: roster_version

-- table: offline_message -------------------------------------------------------------
-- Messages for users who were offline; expire NULL: never.
CREATE SEQUENCE IF NOT EXISTS offline_message_id;
CREATE TABLE IF NOT EXISTS offline_message (
    id BIGINT NOT NULL DEFAULT nextval('offline_message_id') PRIMARY KEY,
    timestamp BIGINT NOT NULL,
    expire BIGINT,
    server TEXT NOT NULL,
    username TEXT NOT NULL,
    from_jid TEXT NOT NULL,
    packet TEXT NOT NULL,
    permanent_fields BYTEA
);
CREATE INDEX IF NOT EXISTS i_offline_message ON offline_message (server, username, id);
-- end: offline_message

-- table: mam_server_user -------------------------------------------------------------
-- Archive owners: (server, user_name) -> the user_id of mam_message and mam_config.
CREATE SEQUENCE IF NOT EXISTS mam_server_user_id;
CREATE TABLE IF NOT EXISTS mam_server_user (
    id BIGINT NOT NULL DEFAULT nextval('mam_server_user_id') PRIMARY KEY,
    server TEXT NOT NULL,
    user_name TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS i_mam_server_user_name
    ON mam_server_user (server, user_name);
-- end: mam_server_user

-- table: mam_message -----------------------------------------------------------------
-- The archive (XEP-0313). id: the server-assigned 64-bit message id, unique within an
-- archive. direction: I incoming (remote = from), O outgoing (remote = to).
CREATE TABLE IF NOT EXISTS mam_message (
    id BIGINT NOT NULL,
    user_id BIGINT NOT NULL,
    from_jid TEXT NOT NULL,
    remote_bare_jid TEXT NOT NULL,
    remote_resource TEXT NOT NULL,
    direction CHAR(1) NOT NULL CHECK (direction IN ('I', 'O')),
    message BYTEA NOT NULL,
    search_body TEXT,
    origin_id TEXT,
    is_groupchat BOOLEAN NOT NULL,
    PRIMARY KEY (user_id, id)
);
CREATE INDEX IF NOT EXISTS i_mam_message_username_jid_id
    ON mam_message (user_id, remote_bare_jid, id);
CREATE INDEX IF NOT EXISTS i_mam_message_username_jid_origin_id
    ON mam_message (user_id, remote_bare_jid, origin_id);
-- end: mam_message

-- table: mam_config ------------------------------------------------------------------
-- Archiving preferences (XEP-0441). remote_jid '' is the default; behaviour: A always,
-- N never, R roster (only for the default).
CREATE TABLE IF NOT EXISTS mam_config (
    user_id BIGINT NOT NULL,
    remote_jid TEXT NOT NULL,
    behaviour CHAR(1) NOT NULL CHECK (behaviour IN ('A', 'N', 'R')),
    PRIMARY KEY (user_id, remote_jid)
);
-- end: mam_config

-- table: private_storage -------------------------------------------------------------
-- XEP-0049 private XML storage, one element per namespace.
CREATE TABLE IF NOT EXISTS private_storage (
    server TEXT NOT NULL,
    username TEXT NOT NULL,
    namespace TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT now(),
    PRIMARY KEY (server, username, namespace)
);
-- end: private_storage

-- table: vcard -----------------------------------------------------------------------
-- XEP-0054 vCards, as XML text.
CREATE TABLE IF NOT EXISTS vcard (
    username TEXT NOT NULL,
    server TEXT NOT NULL,
    vcard TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT now(),
    PRIMARY KEY (server, username)
);
-- end: vcard

-- table: vcard_search ----------------------------------------------------------------
-- XEP-0055 search fields of each vCard, with lower-cased copies (l*) to search on.
-- "family" is quoted: it is a keyword in CockroachDB; quote it in queries too.
CREATE TABLE IF NOT EXISTS vcard_search (
    username TEXT NOT NULL,
    lusername TEXT NOT NULL,
    server TEXT NOT NULL,
    fn TEXT NOT NULL,
    lfn TEXT NOT NULL,
    "family" TEXT NOT NULL,
    lfamily TEXT NOT NULL,
    given TEXT NOT NULL,
    lgiven TEXT NOT NULL,
    middle TEXT NOT NULL,
    lmiddle TEXT NOT NULL,
    nickname TEXT NOT NULL,
    lnickname TEXT NOT NULL,
    bday TEXT NOT NULL,
    lbday TEXT NOT NULL,
    ctry TEXT NOT NULL,
    lctry TEXT NOT NULL,
    locality TEXT NOT NULL,
    llocality TEXT NOT NULL,
    email TEXT NOT NULL,
    lemail TEXT NOT NULL,
    orgname TEXT NOT NULL,
    lorgname TEXT NOT NULL,
    orgunit TEXT NOT NULL,
    lorgunit TEXT NOT NULL,
    PRIMARY KEY (server, lusername)
);
CREATE INDEX IF NOT EXISTS i_vcard_search_lfn ON vcard_search (server, lfn);
CREATE INDEX IF NOT EXISTS i_vcard_search_lfamily ON vcard_search (server, lfamily);
CREATE INDEX IF NOT EXISTS i_vcard_search_lgiven ON vcard_search (server, lgiven);
CREATE INDEX IF NOT EXISTS i_vcard_search_lmiddle ON vcard_search (server, lmiddle);
CREATE INDEX IF NOT EXISTS i_vcard_search_lnickname ON vcard_search (server, lnickname);
CREATE INDEX IF NOT EXISTS i_vcard_search_lbday ON vcard_search (server, lbday);
CREATE INDEX IF NOT EXISTS i_vcard_search_lctry ON vcard_search (server, lctry);
CREATE INDEX IF NOT EXISTS i_vcard_search_llocality ON vcard_search (server, llocality);
CREATE INDEX IF NOT EXISTS i_vcard_search_lemail ON vcard_search (server, lemail);
CREATE INDEX IF NOT EXISTS i_vcard_search_lorgname ON vcard_search (server, lorgname);
CREATE INDEX IF NOT EXISTS i_vcard_search_lorgunit ON vcard_search (server, lorgunit);
-- end: vcard_search

-- table: last ------------------------------------------------------------------------
-- XEP-0012 last activity: seconds since the epoch of the last logout, and its status.
CREATE TABLE IF NOT EXISTS last (
    server TEXT NOT NULL,
    username TEXT NOT NULL,
    seconds BIGINT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (server, username)
);
CREATE INDEX IF NOT EXISTS i_last_server_seconds ON last (server, seconds);
-- end: last

-- table: privacy_default_list --------------------------------------------------------
-- XEP-0016: the name of each user's default privacy list.
CREATE TABLE IF NOT EXISTS privacy_default_list (
    server TEXT NOT NULL,
    username TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (server, username)
);
-- end: privacy_default_list

-- table: privacy_list ----------------------------------------------------------------
-- XEP-0016 privacy lists (and XEP-0191 blocking, which is a privacy list).
CREATE SEQUENCE IF NOT EXISTS privacy_list_id;
CREATE TABLE IF NOT EXISTS privacy_list (
    server TEXT NOT NULL,
    username TEXT NOT NULL,
    name TEXT NOT NULL,
    id BIGINT NOT NULL DEFAULT nextval('privacy_list_id') UNIQUE,
    created_at TIMESTAMP NOT NULL DEFAULT now(),
    PRIMARY KEY (server, username, name)
);
-- end: privacy_list

-- table: privacy_list_data -----------------------------------------------------------
-- The items of a list, in ord order. t: the type (j jid, g group, s subscription,
-- n none); action: a allow, d deny, b block (XEP-0191, the list "blocking"); match_*:
-- which stanzas the item applies to.
CREATE TABLE IF NOT EXISTS privacy_list_data (
    id BIGINT NOT NULL REFERENCES privacy_list (id) ON DELETE CASCADE,
    t CHAR(1) NOT NULL,
    value TEXT NOT NULL,
    action CHAR(1) NOT NULL,
    ord INT NOT NULL,
    match_all BOOLEAN NOT NULL,
    match_iq BOOLEAN NOT NULL,
    match_message BOOLEAN NOT NULL,
    match_presence_in BOOLEAN NOT NULL,
    match_presence_out BOOLEAN NOT NULL,
    PRIMARY KEY (id, ord)
);
-- end: privacy_list_data

-- table: discovery_nodes -------------------------------------------------------------
-- CETS discovery: the nodes of each cluster, with a node_num unique in the cluster.
-- updated_timestamp is in seconds since the epoch; address '' means ask DNS.
CREATE TABLE IF NOT EXISTS discovery_nodes (
    cluster_name TEXT NOT NULL,
    node_name TEXT NOT NULL,
    node_num INT NOT NULL,
    address TEXT NOT NULL DEFAULT '',
    updated_timestamp BIGINT NOT NULL,
    PRIMARY KEY (node_name)
);
CREATE UNIQUE INDEX IF NOT EXISTS i_discovery_nodes_node_num
    ON discovery_nodes (cluster_name, node_num);
-- end: discovery_nodes
