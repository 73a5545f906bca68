"""dbt-duckdb plugin: gives dbt's DuckDB connection the same S3 access as the loader.

Declared in ``profiles.yml`` per target::

    plugins:
      - module: loaders.dbt_plugin
        config: {bucket: lake, endpoint: local}

On each new connection it loads httpfs from the wheel (offline), creates the
temporary DuckDB secret for the target's bucket, with credentials from
:func:`loaders.s3.connection` (local server keys, or the AWS chain), and
registers the SQL functions the publish step of ``macros/export_mart.sql``
calls (:func:`loaders.publish.publish_object`, :func:`loaders.publish.discard_object`)
and the one a unit test's ``cast_source_column()`` reads the source contract
from (:func:`loaders.contract.column_contract`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from dbt.adapters.duckdb.plugins import BasePlugin
from duckdb import DuckDBPyConnection

from loaders import contract, datasets, publish, s3, warehouse
from loaders.config import LakeConfig, duckdb_config, project_dir, resolve_home
from loaders.errors import ServerError

log = logging.getLogger(__name__)


class Plugin(BasePlugin):
    """Configures S3 access on every DuckDB connection dbt opens."""

    def initialize(self, plugin_config: dict[str, Any]) -> None:
        self.lake = LakeConfig.from_mapping(plugin_config)
        self.memory_limit = str(plugin_config.get("memory_limit") or "").strip() or None
        self._connection: s3.Connection | None = None

    def update_connection_config(self, creds: Any, config: dict[str, Any]) -> None:
        # The state directory may not exist yet on a fresh clone.
        if creds.path and creds.path != ":memory:":
            Path(creds.path).parent.mkdir(parents=True, exist_ok=True)
        # The same memory cap and spill folder as the loader's connections.
        config.update(duckdb_config(resolve_home(), self.memory_limit))

    def configure_connection(self, conn: DuckDBPyConnection) -> None:
        try:
            self._connection = s3.connection(self.lake, resolve_home())
        except ServerError as exc:
            # Models and tests still run; only the S3 export will fail, saying so.
            log.warning("S3 not configured for dbt: %s", exc)
            self._connection = None
        warehouse.configure(conn, self._connection)
        # Registered in the database's catalog: dbt's cursors see them too.
        publish.register_functions(conn, self.lake.bucket, resolve_home(), lambda: self._connection)

        def source_contract(source: str, table: str, column: str) -> str:
            registry = datasets.discover(project_dir())
            return json.dumps(contract.column_contract(registry, source, table, column))

        # What a unit test's cast_source_column() reads: its graph holds no sources.
        conn.create_function(
            "elt_source_contract", source_contract, ["varchar"] * 3, "varchar", side_effects=True
        )
