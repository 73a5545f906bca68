"""``elt run``: load new raw objects, ``dbt build``, check the exported marts.

Each step raises :class:`~loaders.errors.StepError` naming itself, so the CLI
can say in one line which step failed and why.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loaders import datasets as datasets_mod
from loaders import s3 as s3_mod
from loaders import warehouse
from loaders.config import Settings
from loaders.errors import EltError, StepError, StorageError
from loaders.land import LoadResult, export_rejects, land_all
from loaders.lock import exclusive
from loaders.s3 import MARTS_PREFIX, ObjectInfo

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    """What one ``elt run`` did.

    Attributes:
        loads: One result per object attempted (empty when nothing was new).
        dbt_nodes: ``(unique_id, status, seconds)`` per dbt node built or tested.
        exports: Exported mart objects (key, ETag, size in bytes).
    """

    loads: list[LoadResult] = field(default_factory=list)
    dbt_nodes: list[tuple[str, str, float]] = field(default_factory=list)
    exports: list[ObjectInfo] = field(default_factory=list)

    @property
    def rows_loaded(self) -> int:
        return sum(r.rows_loaded for r in self.loads)

    @property
    def rows_rejected(self) -> int:
        return sum(r.rows_rejected for r in self.loads)

    @property
    def failed_loads(self) -> list[LoadResult]:
        return [r for r in self.loads if r.status == "failed"]


OnObject = Callable[[ObjectInfo], Callable[[int], None] | None]


def load(settings: Settings, s3: S3Client, on_object: OnObject | None = None) -> list[LoadResult]:
    """Land every new object version under ``raw/<dataset>/`` of each declared dataset.

    Then writes each touched dataset's quarantine to ``marts/_rejects/<dataset>.csv``
    (when it changed, or is not there yet).

    Raises:
        StorageError, BusyError, ConfigError: listing/reading S3 failed, the
            warehouse is held by another process, or the registry is invalid.
    """
    registry = datasets_mod.discover(settings.project_dir)
    connection = s3_mod.connection(settings.lake, settings.home)
    with warehouse.connect(
        settings.warehouse_path, connection, config=settings.duckdb_config()
    ) as conn:
        results = land_all(
            conn, s3, settings.lake.bucket, registry, settings.home / "tmp", on_object
        )
        for name in sorted({r.dataset for r in results}):
            touched = [r for r in results if r.dataset == name]
            changed = any(r.rows_rejected or r.replaced for r in touched)
            key = f"{MARTS_PREFIX}_rejects/{name}.csv"
            if changed or not s3_mod.exists(s3, settings.lake.bucket, key):
                export_rejects(conn, settings.lake.bucket, registry[name])
    return results


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def dbt(settings: Settings, args: list[str]) -> Any:
    """Invoke dbt in-process on the project with these settings' target.

    Args:
        settings: Target, project and state directory.
        args: dbt command and flags, e.g. ``["build", "--select", "marts"]``.

    Returns:
        dbt's ``dbtRunnerResult``.
    """
    from dbt.cli.main import dbtRunner  # heavy import: only when dbt runs

    argv = [
        *args,
        "--project-dir",
        str(settings.project_dir),
        "--profiles-dir",
        str(settings.project_dir),
        "--target",
        settings.target,
    ]
    with _environment(settings.dbt_env()):
        return dbtRunner().invoke(argv)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _failure_line(result: Any) -> str:
    """The first failed dbt node and its message, as one line (colours stripped)."""
    if result.exception is not None:
        message = str(result.exception)
    else:
        failed = [
            n
            for n in getattr(result.result, "results", None) or []
            if str(n.status) in ("error", "fail", "runtime error")
        ]
        if not failed:
            return "dbt reported a failure (see logs/dbt.log)"
        node = failed[0]
        message = f"{node.node.resource_type} {node.node.name}: {node.message or node.status}"
        if len(failed) > 1:
            message += f" (and {len(failed) - 1} more)"
    message = " ".join(_ANSI.sub("", message).split())
    return message if len(message) <= 400 else message[:397] + "..."


def build(
    settings: Settings, full_refresh: bool = False
) -> tuple[list[tuple[str, str, float]], list[str]]:
    """``dbt build`` (seeds, models, tests, exports) on the settings' target.

    Args:
        settings: Target and project.
        full_refresh: Rebuild incremental models from all history.

    Returns:
        ``(unique_id, status, seconds)`` for every node dbt ran, and the names
        of the models it built that export a CSV (``meta.export``).

    Raises:
        StepError: a model, test or export failed.
    """
    result = dbt(settings, ["build", "--full-refresh"] if full_refresh else ["build"])
    results = getattr(result.result, "results", None) or []
    nodes = [(n.node.unique_id, str(n.status), float(n.execution_time or 0.0)) for n in results]
    if not result.success:
        raise StepError("dbt build", _failure_line(result))
    exporting = [
        n.node.name
        for n in results
        if n.node.resource_type == "model" and (n.node.config.meta or {}).get("export")
    ]
    return nodes, exporting


def exported_marts(settings: Settings, s3: S3Client, models: list[str]) -> list[ObjectInfo]:
    """Check that each of ``models`` has its CSV at ``marts/<model>.csv``.

    Returns:
        The exported objects (key, ETag, size).

    Raises:
        StorageError: an export is missing.
    """
    found = {o.key: o for o in s3_mod.list_objects(s3, settings.lake.bucket, MARTS_PREFIX)}
    exports = []
    for model in models:
        key = f"{MARTS_PREFIX}{model}.csv"
        if key not in found:
            raise StorageError(f"s3://{settings.lake.bucket}/{key} is missing after dbt build")
        exports.append(found[key])
    return exports


def run(
    settings: Settings,
    on_object: OnObject | None = None,
    full_refresh: bool = False,
    wait_s: float = 60.0,
) -> RunReport:
    """Load new objects, build and test with dbt, and list the exports.

    One run at a time per state directory: a second one waits up to ``wait_s``
    seconds, then gives up (``BusyError``). Objects that fail to load are
    recorded and reported, but do not stop the others or the build; the run
    then fails on the load step, one line per failed object. When a new
    version of a key replaced earlier rows, incremental models are rebuilt
    from all history (they only see added rows, not removed ones).

    Raises:
        BusyError: another run holds the state directory.
        StepError: the step that failed (``load``, ``dbt build`` or ``export``).
    """
    report = RunReport()
    with exclusive(settings.home, wait_s):
        # Objects staged by a run that was killed: no one else can be using them.
        shutil.rmtree(settings.home / "tmp", ignore_errors=True)
        s3 = s3_mod.client(s3_mod.connection(settings.lake, settings.home))
        try:
            report.loads = load(settings, s3, on_object)
        except EltError as exc:
            raise StepError("load", str(exc)) from exc
        replaced = any(r.replaced for r in report.loads)
        if replaced:
            log.info("a key got a new version: rebuilding incremental models in full")
        report.dbt_nodes, exporting = build(settings, full_refresh or replaced)
        try:
            report.exports = exported_marts(settings, s3, exporting)
        except EltError as exc:
            raise StepError("export", str(exc)) from exc
    if report.failed_loads:
        raise StepError("load", *(r.error or r.key for r in report.failed_loads))
    return report
