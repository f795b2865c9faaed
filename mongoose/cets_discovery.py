"""The node's discovery backend, from `[internal_databases.cets]` (MongooseIM's
``mongoose_cets_discovery``): the generic actor is :class:`otp.discovery.Discovery`; this
module only picks and builds its backend.

* ``backend = "file"`` with a ``node_list_file``: :class:`otp.discovery.FileBackend`.
* ``backend = "rdbms"``: :class:`mongoose.cets_discovery_rdbms.RdbmsBackend` over the
  node's database (:func:`open_node_database`), opened by the backend on first use, off
  the loop.
"""

from __future__ import annotations

from mongoose.cets_discovery_rdbms import RdbmsBackend
from mongoose.config import Config
from mongoose.storage.database import Database
from mongoose.storage.pools import open_database
from otp.discovery import Backend, FileBackend

__all__ = ["NAME", "discovery_backend", "open_node_database"]

NAME = "cets_discovery"
"""The Discovery actor's registered name in the node's root process."""


def discovery_backend(config: Config, own_address: str | None) -> Backend | None:
    """The configured backend, or None when the node discovers nothing (file backend
    without a file). ``own_address``: this node's ``host:port``, which the RDBMS backend
    writes in its row."""
    cets = config.internal_databases.cets
    if cets.backend == "rdbms":
        return RdbmsBackend(
            lambda: open_node_database(config),
            cluster_name=cets.cluster_name,
            node_name=config.general.node_name,
            address=own_address or "",
            expiry=cets.node_expiry,
        )
    if cets.node_list_file:
        return FileBackend(config.data_path(cets.node_list_file))
    return None


def open_node_database(config: Config) -> Database:
    """The node's database (:func:`mongoose.storage.pools.open_database`), tried once:
    a discovery round that cannot reach it fails, and the next round tries again."""
    return open_database(config, wait=0)
