"""``elt``: the command line. Thin: parses arguments, calls the library,
turns :class:`~loaders.errors.EltError` into one line and an exit code."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from loaders import land, local_s3, logs, partitions, pipeline, receipts, warehouse
from loaders import s3 as s3_mod
from loaders import watch as watch_mod
from loaders.config import Settings, load_settings
from loaders.errors import BusyError, EltError
from loaders.s3 import ObjectInfo

app = typer.Typer(
    help="Land CSVs from S3 into DuckDB, build them with dbt, publish marts as CSV.",
    no_args_is_help=True,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

TargetOption = Annotated[
    str | None, typer.Option("--target", "-t", help="dbt target (default $ELT_TARGET or dev).")
]


def _reports_errors(func: F) -> F:
    """Map library errors to one line on stderr and the error's exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except EltError as exc:
            for line in str(exc).splitlines():
                err.print(f"elt: {line}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


class LogFormat(StrEnum):
    text = "text"
    json = "json"


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    log_format: Annotated[
        LogFormat, typer.Option("--log-format", help="Log lines as text or JSON lines.")
    ] = LogFormat.text,
) -> None:
    logs.setup(verbose, log_format.value)


def _settings(target: str | None) -> Settings:
    return load_settings(target)


def _client(settings: Settings) -> Any:
    return s3_mod.client(s3_mod.connection(settings.lake, settings.home))


@app.command()
@_reports_errors
def up(target: TargetOption = None) -> None:
    """Start the local S3 server (idempotent), create the bucket, print the endpoint."""
    settings = _settings(target)
    if not settings.lake.is_local:
        raise EltError(f"target {settings.target} uses a remote S3 endpoint: nothing to start")
    state = local_s3.start(settings.home, settings.lake.bucket)
    if s3_mod.ensure_bucket(_client(settings), settings.lake.bucket):
        logging.getLogger(__name__).info("created bucket %s", settings.lake.bucket)
    out.print(state.endpoint_url, markup=False, highlight=False)


@app.command()
@_reports_errors
def down(target: TargetOption = None) -> None:
    """Stop the local S3 server."""
    settings = _settings(target)
    stopped = local_s3.stop(settings.home)
    out.print("stopped" if stopped else "not running")


@app.command()
@_reports_errors
def upload(
    files: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, readable=True)],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset: raw/<dataset>/.")],
    target: TargetOption = None,
) -> None:
    """Upload FILES to s3://<bucket>/raw/<dataset>/<file name>."""
    settings = _settings(target)
    client = _client(settings)
    for path in files:
        key = f"{s3_mod.RAW_PREFIX}{dataset}/{path.name}"
        s3_mod.upload(client, path, settings.lake.bucket, key)
        out.print(f"s3://{settings.lake.bucket}/{key}", markup=False, highlight=False)


@contextmanager
def _progress() -> Iterator[pipeline.OnObject]:
    """A byte progress bar per object on a terminal; plain log lines otherwise."""
    if not err.is_terminal:
        yield lambda obj: None  # loaders.land logs each object as it finishes
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=False) as progress:

        def on_object(obj: ObjectInfo) -> Callable[[int], None]:
            task = progress.add_task(obj.key, total=obj.size)
            return lambda size: progress.advance(task, size)

        yield on_object


class Trigger(StrEnum):
    manual = "manual"
    watch = "watch"


@app.command()
@_reports_errors
def run(
    target: TargetOption = None,
    full_refresh: Annotated[
        bool, typer.Option("--full-refresh", help="Rebuild incremental models from all history.")
    ] = False,
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for another run on this ELT_HOME.", min=0)
    ] = 60.0,
    downstream_only: Annotated[
        bool,
        typer.Option(
            "--downstream-only",
            help="Build only models downstream of datasets that gained rows (none: no build).",
        ),
    ] = False,
    trigger: Annotated[
        Trigger, typer.Option(help="Recorded in the run receipt.", hidden=True)
    ] = Trigger.manual,
) -> None:
    """Load new raw objects, dbt build, export the marts; write the run receipt."""
    settings = _settings(target)
    with _progress() as on_object:
        report = pipeline.run(
            settings,
            on_object=on_object,
            full_refresh=full_refresh,
            wait_s=wait,
            trigger=trigger.value,
            downstream_only=downstream_only,
        )
    built = f"dbt ran {len(report.dbt_nodes)} node(s)" if report.built else "nothing to build"
    out.print(
        f"run {report.run_id}: loaded {len(report.loads)} object(s), {report.rows_loaded} row(s), "
        f"{report.rows_rejected} rejected; {built}; exported "
        + (", ".join(f"{o.key} ({o.size} bytes)" for o in report.exports) or "nothing"),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    # One line per object with quarantined rows: how many, and why.
    for line in filter(None, (r.quarantine_line() for r in report.loads)):
        out.print(f"{line} (see marts/_rejects/)", markup=False, highlight=False, soft_wrap=True)


@app.command()
@_reports_errors
def watch(
    interval: Annotated[
        float, typer.Option(help="Seconds between two listings of raw/.", min=0.5)
    ] = 10.0,
    settle: Annotated[
        float, typer.Option(help="Quiet seconds after the last new upload before a run.", min=0)
    ] = 2.0,
    target: TargetOption = None,
) -> None:
    """Run the pipeline whenever new objects land under raw/, until SIGTERM or Ctrl-C."""
    settings = _settings(target)
    root = logging.getLogger()
    verbose = root.level <= logging.DEBUG
    log_format = "json" if isinstance(root.handlers[0].formatter, logs.JsonFormatter) else "text"
    command = watch_mod.run_command(settings, verbose, log_format)
    watch_mod.watch(settings, command, interval_s=interval, settle_s=settle)


def _print_table(title: str, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    """A rich table on a terminal; tab-separated lines (header first) for scripts."""
    cells = [
        ["" if row[c] is None else " | ".join(str(row[c]).splitlines()) for c in columns]
        for row in rows
    ]
    if not out.is_terminal:
        # typer.echo, not rich: rich expands tabs into spaces.
        typer.echo(f"# {title}")
        for line in [list(columns), *cells]:
            typer.echo("\t".join(line))
        return
    table = Table(*columns, title=title)
    for line in cells:
        table.add_row(*line)
    out.print(table)


@app.command()
@_reports_errors
def status(
    limit: Annotated[
        int, typer.Option(help="How many runs and object versions to list.", min=1)
    ] = 20,
    target: TargetOption = None,
) -> None:
    """Show the watcher, the last runs, and recent object versions with their outcome."""
    settings = _settings(target)
    state = watch_mod.read_state(settings.home)
    if state is None:
        out.print("watcher: never started", markup=False, highlight=False)
    else:
        last_exit = "-" if state.last_run_exit is None else state.last_run_exit
        out.print(
            f"watcher: {state.state} (pid {state.pid}, every {state.interval_s:g}s, "
            f"{state.runs} run(s), last poll {state.last_poll_at or '-'}, "
            f"last run exit {last_exit}" + (f", error: {state.error}" if state.error else "") + ")",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    if not settings.warehouse_path.exists():
        out.print("nothing loaded yet")
        return
    try:
        with warehouse.read_only(settings.warehouse_path, settings.home) as conn:
            has_runs = warehouse.has_table(conn, receipts.RUNS)
            runs = receipts.recent(conn, limit) if has_runs else []
            objects = land.recent(conn, limit) if warehouse.has_table(conn, land.LEDGER) else []
    except BusyError as exc:
        out.print(str(exc), markup=False, highlight=False)
        return
    run_columns = ("run_id", "trigger", "status", "seconds", "objects", "rows_loaded")
    _print_table("runs", (*run_columns, "rows_rejected", "errors"), runs)
    object_columns = ("key", "etag", "status", "rows_in", "rows_loaded", "rows_rejected")
    _print_table("objects", (*object_columns, "seconds", "error"), objects)


@app.command()
@_reports_errors
def serve(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.", min=1, max=65535)] = 8000,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    target: TargetOption = None,
) -> None:
    """Serve a read-only page: published marts with fresh download links, rejects, a chart."""
    import uvicorn  # only this command needs the web server

    from loaders import serve as serve_mod

    settings = _settings(target)
    _client(settings)  # fail now, in one line, if S3 is not configured
    app_ = serve_mod.create_app(lambda: _client(settings), settings.lake.bucket)
    out.print(f"serving http://{host}:{port}/ (Ctrl-C to stop)", markup=False, highlight=False)
    uvicorn.run(app_, host=host, port=port, log_config=None, access_log=True)


@app.command()
@_reports_errors
def url(
    model: Annotated[str, typer.Argument(help="Mart name, e.g. turnstile_daily.")],
    expires: Annotated[int, typer.Option(help="Seconds the link stays valid.", min=1)] = 3600,
    target: TargetOption = None,
) -> None:
    """Print a presigned GET URL for marts/MODEL.csv, then one for its manifest if it has one.

    A partitioned mart's manifest (marts/MODEL/_manifest.json) lists its parts,
    one CSV per month or year, with their ETags and date ranges.
    """
    settings = _settings(target)
    client = _client(settings)
    key = f"{s3_mod.MARTS_PREFIX}{model}.csv"
    links = [s3_mod.presigned_get(client, settings.lake.bucket, key, expires)]
    manifest = partitions.manifest_key(model)
    if s3_mod.exists(client, settings.lake.bucket, manifest):
        links.append(s3_mod.presigned_get(client, settings.lake.bucket, manifest, expires))
    for link in links:
        out.print(link, markup=False, highlight=False, soft_wrap=True)


if __name__ == "__main__":  # `python -m loaders.cli`: how elt watch starts its runs
    app()
