"""Replicated in-memory tables after esl/cets: a full replica in every process.

Every process of the cluster that creates table ``name`` holds a full replica of it, so
reads are local dict lookups with no message and no copy. Writes are applied locally
first, then sent to every other process in the cluster view through :mod:`otp.dist`;
the writer may wait for the acknowledgements of every process that was in the view when
it wrote (a process lost meanwhile stops being waited for, so a write never hangs on a
dead peer). Writes from one process reach every replica in the order they were made,
because each pair of processes has one ordered path.

Records and keys
    A record is a tuple whose first element is its key. A ``set`` table holds at most
    one record per key; a ``bag`` holds several distinct records per key.

Ownership (a change from CETS)
    Every record belongs to the process that wrote it (for :func:`Table.insert_new`, the
    process that asked). When a process is lost -- its worker died, its node left or
    stopped answering heartbeats -- every replica removes the records it owned, and the
    table's ``handle_down`` callback, if any, runs in each process with the removed
    records. CETS leaves that cleanup to the application; doing it here means a session
    table can never keep sessions of a dead worker.

Joining without pausing (a change from CETS)
    When a process appears in the view (a worker started, a node joined, a netsplit
    healed), every process sends it a dump of the records *it owns*, and from then on its
    writes. Both travel on the same ordered path, so the newcomer sees each owner's dump
    and then that owner's later writes, in order: no write is lost or applied twice, and
    no one pauses. CETS pauses writes on all members during a join because its records
    have no owner and the two sides' whole tables must be merged at one instant; with
    owners, each process's share can be merged independently. A process that creates a
    table late asks every other process for its dump (the same message).

Conflicts
    Two owners may write the same key of a ``set`` table (two workers racing, or both
    sides of a netsplit). Whenever a replica holds a key owned by one process and gets a
    different record for it from another, it resolves the pair with the table's
    ``handle_conflict(mine, theirs)`` -- which must be deterministic and symmetric in
    outcome -- or by default keeps the record of the owner that sorts last (node name,
    then worker number). Every replica applies the same rule to the same pair, whatever
    the order they arrive in, so replicas agree (CETS can leave them different). The
    losing record is dropped; a key's owner is the only process that can delete it.
    Conflicts are counted (:meth:`Table.status`).

insert_new
    :meth:`Table.insert_new` inserts only if the key is absent cluster-wide, as CETS does
    with a leader: the request goes to the leader (the first process in the view that
    has the table), which checks its replica, and if the key is free applies the insert
    for the requester and sends it to everyone. Uniqueness holds while the view is
    stable; during a netsplit each side has its own leader.

Who gets the writes
    A process sends its writes to every other process in the view except those that
    told it they hold no replica (``c:none``, the answer to a dump or a write for a
    table they lack), and waits for acks from the same set. A process that creates the
    table later asks everyone for their dumps, which puts it back in their sets. Root
    processes that hold no tables thus stop costing every write a message and an ack.

Hidden nodes
    A hidden node (an operator's shell; see :mod:`otp.dist`) is not in
    :meth:`Dist.processes <otp.dist.Dist.processes>` of the members, so it is never
    sent a dump or a write and is never the leader; it cannot create a table either
    (:meth:`Cets.create` refuses), since no one would replicate to it. A shell reads a
    node's tables by asking that node (``otp.introspect``).

Threads
    Reads may come from any thread (a dict read). Writes and everything else run on the
    scheduler's loop; from another thread use :meth:`Scheduler.run_sync`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from otp import scheduler as scheduler_mod
from otp.future import LoopFuture

if TYPE_CHECKING:
    from otp.dist import Dist, Key

__all__ = ["Table", "create", "get"]

logger = logging.getLogger("otp.cets")

Record = tuple[Any, ...]
HandleDown = Callable[["Table", list[Record]], None]
HandleConflict = Callable[[Record, Record], Record]


class Table:
    """This process's replica of one replicated table; see the module docstring."""

    def __init__(
        self,
        cets: Cets,
        name: str,
        *,
        type: str = "set",
        handle_down: HandleDown | None = None,
        handle_conflict: HandleConflict | None = None,
    ) -> None:
        if type not in ("set", "bag"):
            raise ValueError(f"table type must be 'set' or 'bag', got {type!r}")
        if type == "bag" and handle_conflict is not None:
            raise ValueError("a bag table has no conflicts to handle")
        self.cets = cets
        self.name = name
        self.type = type
        self.handle_down = handle_down
        self.handle_conflict = handle_conflict
        # set: key -> (record, owner); bag: key -> {record: owner}
        self._data: dict[Any, Any] = {}
        # set tables also keep key -> record, so that get() is a bare dict lookup
        self._records: dict[Any, Record] = {}
        if type == "set":
            self.get = self._records.get  # type: ignore[method-assign]
        self.conflicts = 0
        # Processes that told us they hold no replica: our writes skip them.
        self.non_members: set[Key] = set()

    # -- reads (local, any thread) ---------------------------------------------------------

    def get(self, key: Any, default: Any = None) -> Record | None:
        """Set tables: the record with ``key``, or ``default``. This is the replica's own
        ``dict.get`` (bound at creation), the fastest read there is."""
        raise TypeError("get() is for set tables; use lookup() on a bag")

    def lookup(self, key: Any) -> list[Record]:
        """The records with ``key`` (at most one in a set table)."""
        entry = self._data.get(key)
        if entry is None:
            return []
        if self.type == "set":
            return [entry[0]]
        return list(entry)

    def match_prefix(self, prefix: tuple[Any, ...]) -> list[Record]:
        """Records whose key is a tuple starting with ``prefix`` (a scan of the table)."""
        n = len(prefix)
        return [
            record
            for key in list(self._data)
            if isinstance(key, tuple) and key[:n] == prefix
            for record in self.lookup(key)
        ]

    def all(self) -> list[Record]:
        """Every record, in no particular order."""
        return [record for key in list(self._data) for record in self.lookup(key)]

    def size(self) -> int:
        """Number of records."""
        if self.type == "set":
            return len(self._data)
        return sum(len(records) for records in list(self._data.values()))

    def owner_of(self, record: Record) -> Key | None:
        entry = self._data.get(record[0])
        if entry is None:
            return None
        if self.type == "set":
            return entry[1] if entry[0] == record else None
        return entry.get(record)

    # -- writes (loop thread) --------------------------------------------------------------

    def insert(self, record: Record, *, wait: bool = False) -> LoopFuture[None]:
        """Insert (or replace, in a set) ``record``; see :meth:`write`."""
        return self.write("ins", [_check_record(record)], wait=wait)

    def insert_many(
        self, records: Iterable[Record], *, wait: bool = False
    ) -> LoopFuture[None]:
        return self.write("ins", [_check_record(r) for r in records], wait=wait)

    def delete(self, key: Any, *, wait: bool = False) -> LoopFuture[None]:
        """Delete every record with ``key`` that this process owns."""
        return self.write("del", [key], wait=wait)

    def delete_many(self, keys: Iterable[Any], *, wait: bool = False) -> LoopFuture[None]:
        return self.write("del", list(keys), wait=wait)

    def delete_object(self, record: Record, *, wait: bool = False) -> LoopFuture[None]:
        """Delete exactly ``record`` (in a bag, one of the key's records)."""
        return self.write("delobj", [_check_record(record)], wait=wait)

    def delete_objects(
        self, records: Iterable[Record], *, wait: bool = False
    ) -> LoopFuture[None]:
        return self.write("delobj", [_check_record(r) for r in records], wait=wait)

    def write(self, op: str, args: list[Any], *, wait: bool) -> LoopFuture[None]:
        """Apply ``op`` here, send it to every other process; the future is done at once,
        or with ``wait`` once every process in the view at write time has applied it."""
        owner = self.cets.dist.key
        self._apply(op, args, owner)
        return self.cets.replicate(self, op, args, owner, wait)

    def insert_new(self, record: Record) -> LoopFuture[bool]:
        """Insert ``record`` only if its key is absent cluster-wide (leader-checked)."""
        return self.cets.insert_new(self, _check_record(record))

    # -- applying --------------------------------------------------------------------------

    def _apply(self, op: str, args: list[Any], owner: Key) -> None:
        if op == "ins":
            for record in args:
                self._put(record, owner)
        elif op == "del":
            for key in args:
                self._delete_key(key, owner)
        elif op == "delobj":
            for record in args:
                self._delete_record(record, owner)

    def _put(self, record: Record, owner: Key) -> None:
        key = record[0]
        if self.type == "bag":
            self._data.setdefault(key, {})[record] = owner
            return
        old = self._data.get(key)
        if old is not None and old[1] != owner:
            # Another owner's key: resolve the same way on every replica, whatever the
            # order the two writes arrive in (an identical record too: its owner decides
            # who may delete it and whose loss removes it).
            if old[0] != record:
                self.conflicts += 1
            self._set(key, self._resolve(old, (record, owner)))
            return
        self._set(key, (record, owner))

    def _set(self, key: Any, entry: tuple[Record, Key]) -> None:
        self._data[key] = entry
        self._records[key] = entry[0]

    def _unset(self, key: Any) -> None:
        del self._data[key]
        del self._records[key]

    def _resolve(
        self, mine: tuple[Record, Key], theirs: tuple[Record, Key]
    ) -> tuple[Record, Key]:
        if self.handle_conflict is not None and mine[0] != theirs[0]:
            chosen = self.handle_conflict(mine[0], theirs[0])
            # Keep the owner of the record chosen, so cleanup still follows its writer; a
            # new record made by the handler belongs to the owner sorting last.
            if chosen == mine[0]:
                return mine
            if chosen == theirs[0]:
                return theirs
            return (chosen, max(mine[1], theirs[1]))
        return mine if mine[1] > theirs[1] else theirs

    def _delete_key(self, key: Any, owner: Key) -> None:
        entry = self._data.get(key)
        if entry is None:
            return
        if self.type == "set":
            if entry[1] == owner:
                self._unset(key)
            return
        for record in [r for r, o in entry.items() if o == owner]:
            del entry[record]
        if not entry:
            del self._data[key]

    def _delete_record(self, record: Record, owner: Key) -> None:
        key = record[0]
        entry = self._data.get(key)
        if entry is None:
            return
        if self.type == "set":
            if entry[0] == record and entry[1] == owner:
                self._unset(key)
            return
        if entry.get(record) == owner:
            del entry[record]
            if not entry:
                del self._data[key]

    def _owned_by(self, owner: Key) -> list[Record]:
        if self.type == "set":
            return [rec for rec, o in list(self._data.values()) if o == owner]
        return [
            r for records in list(self._data.values()) for r, o in records.items() if o == owner
        ]

    def _remove_owners(self, lost: set[Key]) -> list[Record]:
        removed: list[Record] = []
        if self.type == "set":
            for key, (record, owner) in list(self._data.items()):
                if owner in lost:
                    self._unset(key)
                    removed.append(record)
            return removed
        for key, records in list(self._data.items()):
            for record, owner in list(records.items()):
                if owner in lost:
                    del records[record]
                    removed.append(record)
            if not records:
                del self._data[key]
        return removed

    def status(self) -> dict[str, Any]:
        """Plain data: name, type, size, members (processes replicating it), nodes,
        unavailable nodes (gone silent; still called), discovered nodes (the addresses
        this node was told to join, by its seeds or discovery), conflicts resolved so far."""
        return {
            "name": self.name,
            "type": self.type,
            "size": self.size(),
            "members": [f"{n}.{w}" for n, w in self.cets.dist.processes()],
            "nodes": self.cets.dist.nodes(),
            "unavailable_nodes": sorted(self.cets.dist.unavailable_nodes()),
            "discovered_nodes": self.cets.dist.discovered_nodes(),
            "conflicts": self.conflicts,
        }


def _check_record(record: Any) -> Record:
    if not isinstance(record, tuple) or not record:
        raise TypeError(
            f"a record is a non-empty tuple whose first element is the key, got {record!r}"
        )
    return record


class Cets:
    """The tables of this process and their replication through :mod:`otp.dist`."""

    def __init__(self, dist: Dist) -> None:
        self.dist = dist
        self.tables: dict[str, Table] = {}
        self._acks: dict[int, tuple[LoopFuture[None], set[Key]]] = {}
        self._requests: dict[int, LoopFuture[Any]] = {}
        self._tags = itertools.count(1)
        self._known: set[Key] = set(dist.processes())
        self._others_cache: list[Key] = [k for k in sorted(self._known) if k != dist.key]
        self._done: LoopFuture[None] = LoopFuture(dist.scheduler)
        self._done.set(None)
        dist.add_handlers(
            {
                "c:op": self._on_op,
                "c:ack": self._on_ack,
                "c:dump": self._on_dump,
                "c:want": self._on_want,
                "c:new": self._on_insert_new,
                "c:newr": self._on_insert_new_reply,
                "c:none": self._on_none,
            }
        )
        dist.scheduler.on_processes_lost.append(self._processes_lost)
        dist.on_view_changed.append(self._view_changed)
        dist.scheduler.cets = self

    def _others(self) -> list[Key]:
        return self._others_cache

    def _members(self, table: Table) -> list[Key]:
        """Where ``table``'s writes go: every other process not known to lack it."""
        if not table.non_members:
            return self._others_cache
        return [key for key in self._others_cache if key not in table.non_members]

    # -- tables ----------------------------------------------------------------------------

    def create(self, name: str, **options: Any) -> Table:
        """Create this process's replica of table ``name`` and fetch the others' records."""
        if name in self.tables:
            raise ValueError(f"table {name!r} exists")
        if self.dist.hidden:
            raise RuntimeError(f"a hidden node holds no replica (table {name!r})")
        table = self.tables[name] = Table(self, name, **options)
        for key in self._others():
            self.dist._put(key, ["c:want", name, list(self.dist.key)])
        return table

    # -- replication -----------------------------------------------------------------------

    def replicate(
        self, table: Table, op: str, args: list[Any], owner: Key, wait: bool
    ) -> LoopFuture[None]:
        members = self._members(table)
        if not (wait and members):
            item = ["c:op", table.name, op, args, list(owner), None, None]
            for key in members:
                self.dist._put(key, item)
            return self._done  # one shared, finished future: nothing to wait for
        future: LoopFuture[None] = LoopFuture(self.dist.scheduler)
        tag = next(self._tags)
        item = ["c:op", table.name, op, args, list(owner), list(self.dist.key), tag]
        for key in members:
            self.dist._put(key, item)
        self._acks[tag] = (future, set(members))
        return future

    def _on_op(self, item: list[Any]) -> None:
        _, name, op, args, owner, reply_to, tag = item
        table = self.tables.get(name)
        if table is not None:
            if op == "ins":
                args = [tuple(r) if not isinstance(r, tuple) else r for r in args]
            table._apply(op, args, (owner[0], owner[1]))
        else:
            self._tell_none(name, (owner[0], owner[1]))
        if tag is not None:
            self.dist._put((reply_to[0], reply_to[1]), ["c:ack", tag, list(self.dist.key)])

    def _on_ack(self, item: list[Any]) -> None:
        _, tag, sender = item
        waiting = self._acks.get(tag)
        if waiting is None:
            return
        future, pending = waiting
        pending.discard((sender[0], sender[1]))
        if not pending:
            del self._acks[tag]
            future.set(None)

    def _on_want(self, item: list[Any]) -> None:
        _, name, asker = item
        asker_key = (asker[0], asker[1])
        table = self.tables.get(name)
        if table is not None:
            table.non_members.discard(asker_key)
            self._send_dump(table, asker_key)

    def _tell_none(self, name: str, to: Key) -> None:
        """Tell ``to`` we hold no replica of ``name``, so it stops sending us its writes."""
        if to != self.dist.key:
            self.dist._put(to, ["c:none", name, list(self.dist.key)])

    def _on_none(self, item: list[Any]) -> None:
        _, name, sender = item
        table = self.tables.get(name)
        if table is not None:
            table.non_members.add((sender[0], sender[1]))

    def _send_dump(self, table: Table, to: Key) -> None:
        owned = table._owned_by(self.dist.key)
        self.dist._put(to, ["c:dump", table.name, owned, list(self.dist.key)])

    def _on_dump(self, item: list[Any]) -> None:
        _, name, records, owner = item
        table = self.tables.get(name)
        if table is None:
            self._tell_none(name, (owner[0], owner[1]))
            return
        owner_key = (owner[0], owner[1])
        for record in records:
            table._put(record, owner_key)

    # -- membership ------------------------------------------------------------------------

    def _view_changed(self) -> None:
        current = set(self.dist.processes())
        new = current - self._known
        self._known = current
        self._others_cache = [k for k in sorted(current) if k != self.dist.key]
        for key in sorted(new):
            if key == self.dist.key:
                continue
            for table in self.tables.values():
                self._send_dump(table, key)

    def _processes_lost(self, lost: set[Key]) -> None:
        for table in self.tables.values():
            table.non_members -= lost  # a new process in that slot may have the table
        for tag, (future, pending) in list(self._acks.items()):
            pending -= lost
            if not pending:
                del self._acks[tag]
                future.set(None)
        for table in self.tables.values():
            removed = table._remove_owners(lost)
            if removed and table.handle_down is not None:
                try:
                    table.handle_down(table, removed)
                except Exception:
                    logger.exception(
                        "handle_down failed",
                        extra={"what": "cets_handle_down_failed", "table": table.name},
                    )

    # -- insert_new through the leader -----------------------------------------------------

    def leader(self, table: Table) -> Key:
        return min(self.dist.processes())

    def insert_new(self, table: Table, record: Record) -> LoopFuture[bool]:
        future: LoopFuture[bool] = LoopFuture(self.dist.scheduler)
        tag = next(self._tags)
        self._requests[tag] = future
        item = ["c:new", table.name, record, list(self.dist.key), tag]
        leader = self.leader(table)
        if leader == self.dist.key:
            self._on_insert_new(item)
        else:
            self.dist._put(leader, item)
        return future

    def _on_insert_new(self, item: list[Any]) -> None:
        _, name, record, requester, tag = item
        record = tuple(record) if not isinstance(record, tuple) else record
        requester_key = (requester[0], requester[1])
        table = self.tables.get(name)
        inserted = False
        if table is not None and not table.lookup(record[0]):
            table._apply("ins", [record], requester_key)
            self.replicate(table, "ins", [record], requester_key, False)
            inserted = True
        reply = ["c:newr", tag, inserted]
        if requester_key == self.dist.key:
            self._on_insert_new_reply(reply)
        else:
            self.dist._put(requester_key, reply)

    def _on_insert_new_reply(self, item: list[Any]) -> None:
        _, tag, inserted = item
        future = self._requests.pop(tag, None)
        if future is not None:
            future.set(inserted)


def _cets() -> Cets:
    scheduler = scheduler_mod.current()
    cets = getattr(scheduler, "cets", None)
    if cets is None:
        raise RuntimeError("this process is not part of a cluster (no otp.dist)")
    return cets


def create(name: str, **options: Any) -> Table:
    """Create this process's replica of table ``name`` (safe from any thread)."""
    scheduler = scheduler_mod.current()
    if scheduler.on_loop_thread():
        return _cets().create(name, **options)
    return scheduler.run_sync(lambda: _cets().create(name, **options))


def get(name: str) -> Table:
    """This process's replica of table ``name``; ``KeyError`` if it has none."""
    return _cets().tables[name]
