"""Rosters for the presence scenario, written straight into each server's storage.

Run from the repository root, after the accounts exist and before the server starts::

    python bench/roster_setup.py mongoose RUN/data/mongoose.db --users 1000 --roster-size 20
    python bench/roster_setup.py prosody RUN/data --users 1000 --roster-size 20
    python bench/roster_setup.py ejabberd RUN/ejabberd.db --users 1000 --roster-size 20

User ``PREFIX{i}``'s contacts are its ring neighbours, ``bench/xmppload.py``'s
:func:`roster_contacts` (i ± 1 .. i ± R/2 modulo N), every one with subscription both,
no name, no group and nothing pending: what a roster looks like after both users asked
for and granted each other's subscription. Each writer produces what the server itself
would have stored, so that it reads the rows as an ordinary roster:

* **ours**: rows of ``rosterusers`` (subscription ``B``, ask ``N``), one
  ``roster_version`` row per user and, where the schema has it (version 2), one
  ``roster_item_version`` row per contact with the same version, as
  ``mongoose.storage.backends.roster.RosterStore.upsert_item`` writes them: versions in
  its format (a microsecond clock in 14 hex digits and 6 random ones). One transaction
  for everything, on the file opened as the node opens it (schema brought up to date
  first); then ``RosterStore.get_roster`` must read the first user's roster back.
* **Prosody 0.12**: one ``<data>/<host>/roster/<user>.dat`` per user, the Lua chunk its
  internal file store (``util.datamanager``) loads: contacts keyed by bare JID, each a
  table with ``subscription`` and ``groups`` (a set, empty here), and under ``[false]``
  the roster's metadata, ``version`` and the ``pending`` table of incoming requests.
* **ejabberd 23.01**: rows of ``rosterusers`` in its SQLite file (the package's
  ``lite.sql``, one host: no ``server_host`` column), as its ``mod_roster_sql`` writes
  them (subscription ``B``, ask ``N``, ``server`` ``N``, ``subscribe`` empty, type
  ``item``), one transaction; no ``rostergroups`` rows (no groups) and no
  ``roster_version`` (versioning is off). ``mod_roster`` must have ``db_type: sql``.

Each function returns the number of contacts written (N * R).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from xmppload import roster_contacts  # bench/ is not a package

__all__ = ["ejabberd_rosters", "mongoose_rosters", "prosody_rosters", "roster_contacts"]


def _pairs(prefix: str, first: int, users: int, roster_size: int
           ) -> Iterator[tuple[str, list[str]]]:
    """(user, [its contacts' user names]) for every user."""
    for i in range(first, first + users):
        yield f"{prefix}{i}", [f"{prefix}{j}" for j in roster_contacts(i, first, users,
                                                                        roster_size)]


def mongoose_rosters(db_path: Path, domain: str, prefix: str, first: int, users: int,
                     roster_size: int) -> int:
    """Our SQLite store (``<data_dir>/mongoose.db``), see the module docstring."""
    from mongoose.storage import migrate
    from mongoose.storage.backends.roster import RosterStore
    from mongoose.storage.sqlite import SqliteDatabase

    db = SqliteDatabase(db_path)
    try:
        migrate.ensure(db)
        tables = {name for (name,) in db.query(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        item_versions = "roster_item_version" in tables
        stamp = time.time_ns() // 1000
        items, versions, marks = [], [], []
        for user, contacts in _pairs(prefix, first, users, roster_size):
            version = f"{stamp:014x}{secrets.token_hex(3)}"
            versions.append((domain, user, version))
            for contact in contacts:
                jid = f"{contact}@{domain}"
                items.append((domain, user, jid))
                if item_versions:
                    marks.append((domain, user, jid, version))

        def write(tx: Any) -> None:
            tx.execute_many(
                "INSERT INTO rosterusers (server, username, jid, nick, subscription, ask, "
                "askmessage) VALUES (?, ?, ?, '', 'B', 'N', '')", items)
            tx.execute_many(
                "INSERT INTO roster_version (server, username, version) VALUES (?, ?, ?)",
                versions)
            if item_versions:
                tx.execute_many(
                    "INSERT INTO roster_item_version (server, username, jid, version, "
                    "removed) VALUES (?, ?, ?, ?, 0)", marks)

        db.transaction(write)
        # The store must read what we wrote as an ordinary roster.
        user, contacts = next(_pairs(prefix, first, users, roster_size))
        roster = RosterStore(db).get_roster(user, domain)
        got = {(item.jid, item.subscription, item.ask) for item in roster.items}
        want = {(f"{c}@{domain}", "both", "none") for c in contacts}
        if got != want or roster.version is None:
            raise RuntimeError(f"RosterStore reads {user}'s roster as {roster}, "
                               f"not {len(want)} contacts with subscription both")
    finally:
        db.close()
    return len(items)


def prosody_rosters(data_dir: Path, domain: str, prefix: str, first: int, users: int,
                    roster_size: int) -> int:
    """Prosody's internal file store (``data_path``), see the module docstring. User
    names and the host must be alphanumeric: the store escapes anything else."""
    if not (prefix.isalnum() and domain.replace(".", "").isalnum()):
        raise ValueError(f"{prefix!r}, {domain!r}: Prosody's store would escape these names")
    directory = data_dir / domain / "roster"
    directory.mkdir(parents=True, exist_ok=True)
    written = 0
    for user, contacts in _pairs(prefix, first, users, roster_size):
        lines = ["return {", '\t[false] = {\n\t\tversion = 1;\n\t\tpending = {};\n\t};']
        lines += [f'\t["{c}@{domain}"] = {{\n\t\tsubscription = "both";\n\t\tgroups = {{}};'
                  "\n\t};" for c in contacts]
        lines.append("};\n")
        fd = os.open(directory / f"{user}.dat", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            os.write(fd, "\n".join(lines).encode())
        finally:
            os.close(fd)
        written += len(contacts)
    return written


def ejabberd_rosters(db_path: Path, domain: str, prefix: str, first: int, users: int,
                     roster_size: int) -> int:
    """ejabberd's SQLite file (made with the package's lite.sql), see the module
    docstring (the single-host schema: rows carry no host)."""
    rows = [(user, f"{contact}@{domain}")
            for user, contacts in _pairs(prefix, first, users, roster_size)
            for contact in contacts]
    db = sqlite3.connect(db_path)
    try:
        with db:
            db.executemany(
                "INSERT INTO rosterusers (username, jid, nick, subscription, ask, askmessage,"
                " server, subscribe, type) VALUES (?, ?, '', 'B', 'N', '', 'N', '', 'item')",
                rows)
    finally:
        db.close()
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("server", choices=("mongoose", "prosody", "ejabberd"))
    parser.add_argument("path", type=Path, help="ours: the SQLite file (data/mongoose.db); "
                        "Prosody: its data_path; ejabberd: its SQLite file")
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--roster-size", type=int, required=True)
    parser.add_argument("--domain", default="localhost")
    parser.add_argument("--user-prefix", default="u")
    parser.add_argument("--first-user", type=int, default=1)
    args = parser.parse_args(argv)
    if args.roster_size <= 0 or args.roster_size % 2 or args.roster_size >= args.users:
        parser.error("--roster-size must be even, positive and less than --users")
    write = {"mongoose": mongoose_rosters, "prosody": prosody_rosters,
             "ejabberd": ejabberd_rosters}[args.server]
    started = time.perf_counter()
    count = write(args.path, args.domain, args.user_prefix, args.first_user, args.users,
                  args.roster_size)
    seconds = time.perf_counter() - started
    print(f"{args.server}: {count} contacts for {args.users} users in {seconds:.2f} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
