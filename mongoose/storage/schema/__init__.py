"""The SQL schema of each driver, as package data (see :mod:`mongoose.storage.migrate`).

``pg.sql`` (driver pgsql), ``cockroachdb.sql`` and ``sqlite.sql`` are version 1 of the
schema; later versions come as ``migrations/<version>_<name>.<driver>.sql``.
"""
