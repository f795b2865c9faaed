-- Accounts of the embedded store (mongoose/auth/accounts.py). Column names follow
-- MongooseIM's RDBMS `users` table so that data and queries carry over; `password` stays
-- empty because only SCRAM secrets are kept, as JSON in `pass_details`.
CREATE TABLE IF NOT EXISTS users (
    username TEXT NOT NULL,
    server TEXT NOT NULL,
    password TEXT NOT NULL DEFAULT '',
    pass_details TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (server, username)
) WITHOUT ROWID;
