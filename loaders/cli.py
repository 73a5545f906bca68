"""``elt``: the command line. Thin: parses arguments, calls the library,
turns :class:`~loaders.errors.EltError` into one line and an exit code."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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

from loaders import land, local_s3, pipeline, warehouse
from loaders import s3 as s3_mod
from loaders.config import Settings, load_settings
from loaders.errors import EltError
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


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # boto's debug logs print request headers; keep them out even with -v.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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
    state = local_s3.start(settings.home)
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
        yield lambda obj: None  # land.py logs each object as it finishes
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
) -> None:
    """Load new raw objects, dbt build, export the marts."""
    settings = _settings(target)
    with _progress() as on_object:
        report = pipeline.run(settings, on_object=on_object, full_refresh=full_refresh, wait_s=wait)
    out.print(
        f"loaded {len(report.loads)} object(s), {report.rows_loaded} row(s), "
        f"{report.rows_rejected} rejected; dbt ran {len(report.dbt_nodes)} node(s); exported "
        + ", ".join(f"{o.key} ({o.size} bytes)" for o in report.exports),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


@app.command()
@_reports_errors
def status(
    limit: Annotated[int, typer.Option(help="How many object versions to list.", min=1)] = 20,
    target: TargetOption = None,
) -> None:
    """List recent object versions: rows loaded/rejected, status, duration, failure reason."""
    settings = _settings(target)
    if not settings.warehouse_path.exists():
        out.print("nothing loaded yet")
        return
    with warehouse.connect(settings.warehouse_path, None, wait_s=5) as conn:
        land.ensure_tables(conn, [])
        rows = land.recent(conn, limit)
    columns = (
        "key",
        "etag",
        "status",
        "rows_in",
        "rows_loaded",
        "rows_rejected",
        "seconds",
        "error",
    )
    cells = [["" if row[c] is None else str(row[c]) for c in columns] for row in rows]
    if not out.is_terminal:  # one tab-separated line per object version, for scripts
        for line in [list(columns), *cells]:
            out.print("\t".join(line), markup=False, highlight=False, soft_wrap=True)
        return
    table = Table(*columns)
    for line in cells:
        table.add_row(*line)
    out.print(table)


@app.command()
@_reports_errors
def url(
    model: Annotated[str, typer.Argument(help="Mart name, e.g. turnstile_daily.")],
    expires: Annotated[int, typer.Option(help="Seconds the link stays valid.", min=1)] = 3600,
    target: TargetOption = None,
) -> None:
    """Print a presigned GET URL for marts/MODEL.csv."""
    settings = _settings(target)
    key = f"{s3_mod.MARTS_PREFIX}{model}.csv"
    link = s3_mod.presigned_get(_client(settings), settings.lake.bucket, key, expires)
    out.print(link, markup=False, highlight=False, soft_wrap=True)
