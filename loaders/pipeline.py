"""``elt run``: load new raw objects, ``dbt build``, check the exported marts.

Each step raises :class:`~loaders.errors.StepError` naming itself, so the CLI
can say in one line which step failed and why. Every run, successful or not,
leaves a receipt (:mod:`loaders.receipts`) in ``elt.runs`` and at
``marts/_runs/<run id>.json``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from loaders import datasets as datasets_mod
from loaders import faults, lake, logs, partitions, publish, receipts, warehouse
from loaders import s3 as s3_mod
from loaders.config import Settings
from loaders.errors import EltError, StepError, StorageError
from loaders.land import (
    LoadResult,
    export_rejects,
    full_refresh_done,
    full_refresh_pending,
    land_all,
    new_load_id,
    recheck_contracts,
)
from loaders.lock import exclusive
from loaders.s3 import MARTS_PREFIX, ObjectInfo

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    """What one ``elt run`` did.

    Attributes:
        run_id: Id of the run (its receipt is ``marts/_runs/<run_id>.json``).
        loads: One result per object attempted (empty when nothing was new).
        dbt_nodes: ``(unique_id, status, seconds)`` per dbt node built or tested.
        exports: Exported mart objects (key, ETag, size in bytes): CSVs, and
            a partitioned mart's changed parts, whole file and manifest.
        export_rows: Rows of the exported objects that recorded them, by key.
        built: Whether dbt ran (a watch run that landed nothing skips it).
    """

    run_id: str = ""
    built: bool = False
    loads: list[LoadResult] = field(default_factory=list)
    dbt_nodes: list[tuple[str, str, float]] = field(default_factory=list)
    exports: list[ObjectInfo] = field(default_factory=list)
    export_rows: dict[str, int | None] = field(default_factory=dict)

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


@dataclass(frozen=True)
class Landing:
    """What the load step did.

    Attributes:
        results: One result per object version attempted, in key order.
        full_refresh_reason: Why the models must be rebuilt in full (rows
            were taken away since the last full build), or ``None``.
    """

    results: list[LoadResult]
    full_refresh_reason: str | None = None
    synced: lake.Synced | None = None


def load(settings: Settings, s3: S3Client, on_object: OnObject | None = None) -> list[LoadResult]:
    """Land every new object version; the results of :func:`land`."""
    return land(settings, s3, on_object).results


def land(settings: Settings, s3: S3Client, on_object: OnObject | None = None) -> Landing:
    """Land every new object version under ``raw/<dataset>/`` of each declared dataset.

    First checks the landed rows of any dataset whose source contract changed
    (:func:`loaders.land.recheck_contracts`). Then writes the quarantine of
    each dataset it touched to ``marts/_rejects/<dataset>.csv``, brings the
    raw data in the open up to date (``lake/``, :func:`loaders.lake.sync`)
    when the settings write it, and reads whether the models need a full
    refresh (in the same connection: a run opens the warehouse once before
    dbt).

    Raises:
        StorageError, BusyError, ConfigError: listing/reading S3 failed, the
            warehouse is held by another process, or the registry is invalid.
    """
    registry = datasets_mod.discover(settings.project_dir)
    connection = s3_mod.connection(settings.lake, settings.home)
    with warehouse.connect(
        settings.warehouse_path, connection, config=settings.duckdb_config()
    ) as conn:
        # Rows landed under an older contract: checked again before anything new lands.
        rechecked = recheck_contracts(conn, list(registry.values()))
        results = land_all(
            conn, s3, settings.lake.bucket, registry, settings.home / "tmp", on_object
        )
        # Rewritten for each dataset this run touched: a run needs no right to
        # read marts/ to know whether the file is there already.
        for name in sorted({r.dataset for r in results} | set(rechecked)):
            export_rejects(conn, settings.lake.bucket, registry[name])
        synced = (
            lake.sync(conn, s3, settings.lake.bucket, registry, settings.project_dir / "seeds")
            if settings.write_lake
            else None
        )
        return Landing(results, full_refresh_pending(conn), synced)


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


def dbt(settings: Settings, args: list[str], env: dict[str, str] | None = None) -> Any:
    """Invoke dbt in-process on the project with these settings' target.

    Args:
        settings: Target, project and state directory.
        args: dbt command and flags, e.g. ``["build", "--select", "marts"]``.
        env: More environment variables for this invocation.

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
        # dbt's console lines go through our logging (run id, JSON, masking);
        # its own full debug log goes to <ELT_HOME>/logs/dbt.log (without
        # --log-level-file, "none" would silence the file too).
        "--log-level",
        "none",
        "--log-level-file",
        "debug",
        "--log-path",
        str(settings.home / "logs"),
        # Artifacts and the saved parse per state directory: a run reparses only
        # what changed since the last run of this ELT_HOME (dbt's partial
        # parsing), which a target/ shared by several ELT_HOMEs would defeat
        # (the profile's path differs, so each would parse everything again).
        "--target-path",
        str(settings.home / "target"),
        "--no-use-colors",
    ]
    _use_parse_of_this_project(settings)
    with _environment({**settings.dbt_env(), **(env or {})}):
        try:
            return dbtRunner(callbacks=[logs.dbt_event]).invoke(argv)
        finally:
            _close_dbt_warehouse()


# Saved parses kept for project folders other than the one running (an edited
# copy, say): switching back reparses only what changed, not everything.
_KEPT_PARSES = 4


def _use_parse_of_this_project(settings: Settings) -> None:
    """Put in ``$ELT_HOME/target`` dbt's saved parse of this project folder, if one was kept.

    One ELT_HOME can be run with two project folders (a copy being edited,
    say); dbt's partial parsing compares files by their path in the project,
    and was seen keeping the other folder's source columns. So a parse is
    only reused by the project that made it: ``target/partial_parse.msgpack``
    is the parse of the folder named in ``target/elt_project_dir``; the parse
    of a folder run before waits in ``target/parses/<digest of its path>.msgpack``
    (the last ``_KEPT_PARSES`` of them) until that folder runs again.
    """
    target = settings.home / "target"
    marker = target / "elt_project_dir"
    project = str(settings.project_dir.resolve())
    previous = marker.read_text() if marker.exists() else None
    if previous == project:
        return
    current = target / "partial_parse.msgpack"
    kept = target / "parses"
    kept.mkdir(parents=True, exist_ok=True)
    if previous is not None and current.exists():
        current.replace(kept / f"{_path_digest(previous)}.msgpack")
    saved = kept / f"{_path_digest(project)}.msgpack"
    if saved.exists():
        saved.replace(current)
    else:
        current.unlink(missing_ok=True)
    for old in sorted(kept.glob("*.msgpack"), key=lambda p: p.stat().st_mtime)[:-_KEPT_PARSES]:
        old.unlink(missing_ok=True)
    marker.write_text(project)


def _path_digest(path: str) -> str:
    return hashlib.sha256(path.encode()).hexdigest()[:16]


def _close_dbt_warehouse() -> None:
    """Close the DuckDB file dbt-duckdb keeps open after an invocation.

    dbt-duckdb holds its database handle in a class attribute for the life of
    the process, even with no connection in use. A run releases its run lock
    when it ends, so a reader waiting for that lock (``elt status``, the
    watcher) would then find the file still held read-write by this process.
    """
    from dbt.adapters.duckdb.connections import DuckDBConnectionManager

    with suppress(Exception):  # env() raises when dbt never connected
        DuckDBConnectionManager.env().close()
    DuckDBConnectionManager.close_all_connections()


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def failure_line(result: Any) -> str:
    """The first failed dbt node and its message, as one line (colours stripped).

    Args:
        result: An unsuccessful ``dbtRunnerResult`` (from :func:`dbt`).

    Returns:
        At most 400 characters: dbt's exception, else the first failed node
        and how many more failed, else a pointer to ``$ELT_HOME/logs/dbt.log``.
    """
    if result.exception is not None:
        message = str(result.exception)
    else:
        failed = [
            n
            for n in getattr(result.result, "results", None) or []
            if str(n.status) in ("error", "fail", "runtime error")
        ]
        if not failed:
            return "dbt reported a failure (see logs/dbt.log in ELT_HOME)"
        node = failed[0]
        message = f"{node.node.resource_type} {node.node.name}: {node.message or node.status}"
        if len(failed) > 1:
            message += f" (and {len(failed) - 1} more)"
    message = " ".join(_ANSI.sub("", message).split())
    return message if len(message) <= 400 else message[:397] + "..."


@dataclass(frozen=True)
class Built:
    """What ``dbt build`` ran: every node, and the exporting models it built."""

    nodes: list[tuple[str, str, float]]
    exporting: dict[str, str]  # model name -> relation name (database.schema.table)
    partitioned: frozenset[str] = frozenset()  # of those, the ones published by partition


def build(
    settings: Settings,
    full_refresh: bool = False,
    select: list[str] | None = None,
    nodes: list[tuple[str, str, float]] | None = None,
    lake_written: list[str] | None = None,
) -> Built:
    """``dbt build`` (seeds, models, data tests, exports; no unit tests) on the settings' target.

    On the Spark engine the lake is made ready first and the marked
    candidates are published after (:mod:`loaders.spark`); on DuckDB dbt's
    own hooks publish.

    Args:
        settings: Target and project.
        full_refresh: Rebuild incremental models from all history.
        select: dbt selectors (``@source:mta.turnstile``); ``None`` builds all.
        nodes: Filled with ``(unique_id, status, seconds)`` per node dbt ran,
            also when the build fails.
        lake_written: Keys the load step wrote under ``lake/`` (Spark waits
            until they show through its mount).

    Returns:
        Every node dbt ran, and the models it built that export a CSV
        (``meta.export``).

    Raises:
        StepError: a model, test or export failed.
    """
    # Unit tests pin the models' SQL on fixed rows, not the data: they run in
    # `make test` and when analysts build with dbt, not in every production run
    # (dbt's own advice), where they cost a second each time.
    args = ["build", "--exclude-resource-type", "unit_test"]
    args += ["--full-refresh"] if full_refresh else []
    if select:
        args += ["--select", *select]
    if settings.engine == "spark":
        from loaders import spark  # the Spark side of a run: only this engine needs it

        client = s3_mod.client(s3_mod.connection(settings.lake, settings.home))
        try:
            env = spark.prepare(settings, client, lake_written or [])
        except EltError as exc:
            raise StepError("dbt build", f"the lake is not ready for Spark: {exc}") from exc
        result = dbt(settings, args, env)
        try:
            spark.publish_marked(settings, client, os.environ.get("ELT_RUN_ID") or "manual")
        except EltError as exc:
            raise StepError("export", str(exc)) from exc
    else:
        result = dbt(settings, args)
    results = getattr(result.result, "results", None) or []
    ran = [(n.node.unique_id, str(n.status), float(n.execution_time or 0.0)) for n in results]
    if nodes is not None:
        nodes.extend(ran)
    if not result.success:
        raise StepError("dbt build", failure_line(result))
    models = [
        n.node
        for n in results
        if n.node.resource_type == "model" and (n.node.config.meta or {}).get("export")
    ]
    exporting = {node.name: node.relation_name for node in models}
    partitioned = frozenset(n.name for n in models if n.config.meta.get("partition_by"))
    return Built(ran, exporting, partitioned)


def exported_marts(settings: Settings, built: Built) -> list[tuple[ObjectInfo, int | None]]:
    """Check that each exporting model of ``built`` was published by this build.

    A mart is published at ``marts/<model>.csv``; a partitioned one at least
    as its manifest, ``marts/<model>/_manifest.json`` (its changed parts and
    the whole file beside it). Reads the publish record
    (:func:`loaders.publish.published_rows`), not the bucket.

    Returns:
        Every object this build published, with its rows where recorded.

    Raises:
        StorageError: a mart's CSV or manifest is missing.
    """
    found = publish.published_rows(settings.home)
    for model in built.exporting:
        key = (
            partitions.manifest_key(model)
            if model in built.partitioned
            else f"{MARTS_PREFIX}{model}.csv"
        )
        if key not in found:
            raise StorageError(
                f"s3://{settings.lake.bucket}/{key} was not published by this dbt build"
            )
    return list(found.values())


def _refreshed_in_full(settings: Settings, started_at: datetime) -> None:
    with warehouse.connect(settings.warehouse_path, None, config=settings.duckdb_config()) as conn:
        full_refresh_done(conn, started_at)


def _row_counts(settings: Settings, relations: dict[str, str]) -> dict[str, int]:
    """Rows of each exported mart (what its CSV holds below the header)."""
    counts = {}
    with warehouse.connect(settings.warehouse_path, None, config=settings.duckdb_config()) as conn:
        for name, relation in relations.items():
            row = conn.execute(f"select count(*) from {relation}").fetchone()
            counts[name] = int(row[0]) if row else 0
    return counts


def _receipt_of(report: RunReport, receipt: receipts.Receipt, row_counts: dict[str, int]) -> None:
    receipt.objects = [
        {
            "key": r.key,
            "etag": r.etag,
            "sha256": r.sha256,
            "size_bytes": r.size,
            "status": r.status,
            "rows_loaded": r.rows_loaded,
            "rows_rejected": r.rows_rejected,
            "seconds": round(r.seconds, 3),
            **({"error": r.error} if r.error else {}),
            **(
                {
                    "quarantined": [
                        {"column": column, "error_type": error_type, "rows": count}
                        for column, error_type, count in r.reasons
                    ]
                }
                if r.reasons
                else {}
            ),
        }
        for r in report.loads
    ]
    receipt.dbt_nodes = [
        {"unique_id": uid, "status": status, "seconds": round(seconds, 3)}
        for uid, status, seconds in report.dbt_nodes
    ]
    receipt.exports = [
        {
            "key": o.key,
            "etag": o.etag,
            "size_bytes": o.size,
            "rows": report.export_rows.get(o.key)
            if o.key in report.export_rows
            else row_counts.get(o.key.removeprefix(MARTS_PREFIX).removesuffix(".csv")),
        }
        for o in report.exports
    ]


def _keep_receipt(settings: Settings, s3: S3Client | None, receipt: receipts.Receipt) -> None:
    """Save the receipt in ``elt.runs`` and to S3; a failure here is logged, not raised.

    The run's own outcome is what the caller reports: a receipt that cannot be
    written (S3 down, say) must not hide it.
    """
    try:
        # Same config as dbt's connection, which stays open in this process.
        config = settings.duckdb_config()
        with warehouse.connect(settings.warehouse_path, None, wait_s=10, config=config) as conn:
            receipts.save(conn, receipt)
    except Exception as exc:
        log.warning("receipt %s not saved in %s: %s", receipt.run_id, receipts.RUNS, exc)
    if s3 is None:
        return
    try:
        receipts.publish(s3, settings.lake.bucket, receipt)
    except EltError as exc:
        log.warning("receipt %s not written to S3: %s", receipt.run_id, exc)


def selectors(settings: Settings, loads: list[LoadResult]) -> list[str]:
    """dbt selectors for what is downstream of the datasets that gained rows.

    ``@source:<source>.<dataset>`` for each dataset with a loaded object: the
    models downstream of it, plus what those models need (seeds, other
    staging), which may not be built yet; unchanged incremental ancestors are
    cheap no-ops. The tests on those nodes follow (dbt's eager indirect
    selection), and only the marts among them are exported.
    """
    registry = datasets_mod.discover(settings.project_dir)
    changed = sorted({r.dataset for r in loads if r.status == "loaded"})
    return [f"@source:{registry[name].source}.{name}" for name in changed if name in registry]


def run(
    settings: Settings,
    on_object: OnObject | None = None,
    full_refresh: bool = False,
    wait_s: float = 60.0,
    trigger: str = "manual",
    downstream_only: bool = False,
) -> RunReport:
    """Load new objects, build and test with dbt, and list the exports.

    One run at a time per state directory: a second one waits up to ``wait_s``
    seconds, then gives up (``BusyError``). Objects that fail to load are
    recorded and reported, but do not stop the others or the build; the run
    then fails on the load step, one line per failed object. When a new
    version of a key replaced earlier rows, incremental models are rebuilt
    from all history (they only see added rows, not removed ones).

    Args:
        settings: Target, project and state directory.
        on_object: Progress callback factory, see :data:`OnObject`.
        full_refresh: Rebuild incremental models from all history.
        wait_s: Seconds to wait for another run on this state directory.
        trigger: ``manual`` or ``watch``, recorded in the receipt.
        downstream_only: Build only what is downstream of the datasets that
            gained rows, and nothing when none did (``elt watch``); otherwise
            the whole project is built.

    Raises:
        BusyError: another run holds the state directory.
        StepError: the step that failed (``load``, ``dbt build`` or ``export``).
    """
    run_id = new_load_id()
    report = RunReport(run_id=run_id)
    receipt = receipts.Receipt(run_id=run_id, trigger=trigger)
    clock = time.monotonic()
    with (
        logs.run_context(run_id),
        exclusive(settings.home, wait_s),
        # The run id the publish records in manifests (dbt runs in this process).
        _environment({"ELT_RUN_ID": run_id}),
    ):
        log.info("run %s started (%s)", run_id, trigger)
        s3: S3Client | None = None
        row_counts: dict[str, int] = {}
        try:
            # Objects staged by a run that was killed: no one else can be using them.
            shutil.rmtree(settings.home / "tmp", ignore_errors=True)
            s3 = s3_mod.client(s3_mod.connection(settings.lake, settings.home))
            step = time.monotonic()
            try:
                landing = land(settings, s3, on_object)
                report.loads = landing.results
            except EltError as exc:
                raise StepError("load", str(exc)) from exc
            receipt.timings["load"] = round(time.monotonic() - step, 3)
            if landing.synced is not None:
                receipt.timings["lake"] = round(landing.synced.seconds, 3)
                receipt.lake = {
                    "written": landing.synced.written,
                    "deleted": landing.synced.deleted,
                    "seeds": landing.synced.seeds,
                    "ledger": landing.synced.ledger,
                }
            faults.point("loaded")
            # Rows taken away since the last full build (a key's new version,
            # a changed contract): kept in the warehouse until a full build
            # succeeds, so a crash before it cannot lose the need.
            refresh_reason = None if full_refresh else landing.full_refresh_reason
            if refresh_reason:
                log.info("%s: rebuilding incremental models in full", refresh_reason)
            full = full_refresh or refresh_reason is not None
            select = selectors(settings, report.loads) if downstream_only and not full else None
            receipt.selected = select or []
            if select is None or select:
                report.built = True
                publish.start(settings.home)
                step = time.monotonic()
                build_started_at = datetime.now(UTC)
                try:
                    written = (
                        [*landing.synced.written, *landing.synced.seeds] if landing.synced else []
                    )
                    if landing.synced and landing.synced.ledger:
                        written = [*written, lake.LEDGER_KEY]
                    built = build(settings, full, select, report.dbt_nodes, written)
                    if full:
                        _refreshed_in_full(settings, build_started_at)
                except StepError as exc:
                    # A failing model holds back only what depends on it: the
                    # marts whose models and tests passed were published.
                    published = publish.published(settings.home)
                    report.exports = [published[key] for key in sorted(published)]
                    if not report.exports:
                        raise
                    # The entry points: whole CSVs and manifests (their parts are listed there).
                    keys = ", ".join(
                        o.key
                        for o in report.exports
                        if o.key.count("/") == 1 or o.key.endswith(partitions.MANIFEST)
                    )
                    raise StepError(
                        exc.step, *exc.reasons, notes=(f"published despite the failure: {keys}",)
                    ) from exc
                finally:
                    receipt.timings["build"] = round(time.monotonic() - step, 3)
                    receipt.timings["export"] = round(publish.put_seconds, 3)
                    receipt.uploaded_bytes = publish.uploaded_bytes
                try:
                    exported = exported_marts(settings, built)
                except EltError as exc:
                    raise StepError("export", str(exc)) from exc
                report.exports = [info for info, _ in exported]
                report.export_rows = {i.key: rows for i, rows in exported if rows is not None}
                plain = {m: r for m, r in built.exporting.items() if m not in built.partitioned}
                row_counts = _row_counts(settings, plain)
            if report.failed_loads:
                raise StepError("load", *(r.error or r.key for r in report.failed_loads))
            receipt.status = "success"
        except BaseException as exc:
            receipt.status = "failed"
            receipt.errors = str(exc).splitlines() or [type(exc).__name__]
            raise
        finally:
            receipt.finished_at = datetime.now(UTC).isoformat()
            receipt.seconds = round(time.monotonic() - clock, 3)
            _receipt_of(report, receipt, row_counts)
            _keep_receipt(settings, s3, receipt)
            log.info("run %s %s in %.1fs", run_id, receipt.status, receipt.seconds)
    return report
