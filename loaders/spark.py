"""The Spark target's side of ``elt run``: the lake Spark reads, and publishing what it built.

Before ``dbt build`` (:func:`prepare`): the lake root Spark reads
(``ELT_LAKE_ROOT``: the local bucket's FUSE mount, ``<ELT_HOME>/mnt/lake``,
or on a cluster a URI such as ``s3a://<bucket>/lake``), every object the
load step just wrote there visible through it, and
``<lake root>/elt/published.json``: each partitioned mart's last manifest
as the export hook needs it (``spark__published_state()`` reads it with
Spark).

After ``dbt build`` (:func:`publish_marked`): on Spark the export hook
writes each candidate file as a folder ``<file>.d`` (Parquet rows with
their place in the file's order, or JSON lines), and the ``on-run-end``
hook marks the candidates whose model and tests passed
(``<candidate>.publish.d``). Each marked candidate is turned into the files
DuckDB would have written, by DuckDB, so both engines publish the same
bytes, then published as on DuckDB (:mod:`loaders.partitions`,
:mod:`loaders.publish`); unmarked ones are discarded.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
from botocore.exceptions import BotoCoreError, ClientError

from loaders import fuse, lake, partitions, publish
from loaders.config import Settings
from loaders.errors import StorageError
from loaders.s3 import MARTS_PREFIX
from loaders.warehouse import quote_identifier, sql_literal

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

PUBLISHED = "elt/published.json"
MARK = ".publish.d"
FOLDER = ".d"


def lake_root(settings: Settings) -> str:
    """Where Spark finds the lake: ``$ELT_LAKE_ROOT``, else the local mount's ``lake/``."""
    return os.environ.get("ELT_LAKE_ROOT") or str(fuse.mount_point(settings.home) / "lake")


def prepare(settings: Settings, client: S3Client, written: list[str]) -> dict[str, str]:
    """Make the lake ready for Spark; return the environment dbt runs with.

    Writes ``lake/elt/published.json``; unless ``ELT_LAKE_ROOT`` points
    elsewhere, mounts the local bucket and waits until it and the lake
    objects the load step ``written`` (keys) show through the mount.

    Raises:
        ServerError: the local server is not running, or the mount did not
            come up or show the objects in time.
        StorageError: a manifest or the state could not be read or written.
    """
    root = lake_root(settings)
    states = (json.dumps(published_states(client, settings.lake.bucket)) + "\n").encode()
    # Through S3, as every lake object: one written through the mount was seen
    # read back too soon, with zeros where its bytes were still being flushed.
    key = lake.PREFIX + PUBLISHED
    try:
        client.put_object(Bucket=settings.lake.bucket, Key=key, Body=states)
        if "ELT_LAKE_ROOT" not in os.environ:
            point = fuse.mount(settings.home, settings.lake.bucket)
            for written_key in written:
                head = client.head_object(Bucket=settings.lake.bucket, Key=written_key)
                fuse.wait_visible(point / written_key, head["ContentLength"])
            fuse.wait_visible(point / key, len(states), states)
    except (ClientError, BotoCoreError) as exc:
        raise StorageError(f"cannot write or check the lake for Spark: {exc}") from exc
    return {"ELT_LAKE_ROOT": root}


def published_states(client: S3Client, bucket: str) -> dict[str, dict[str, Any]]:
    """``{model: published_state}`` of every partitioned mart with a manifest under ``marts/``."""
    states = {}
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=MARTS_PREFIX, Delimiter="/"
    )
    for page in pages:
        for prefix in page.get("CommonPrefixes", []):
            model = prefix["Prefix"][len(MARTS_PREFIX) : -1]
            if not model.startswith("_"):
                state = partitions.published_state(client, bucket, model)
                if state["partitions"] or state["refreshed_through"]:
                    states[model] = state
    return states


def publish_marked(settings: Settings, client: S3Client, run_id: str) -> None:
    """Publish the candidates this build's ``on-run-end`` marked; discard the others.

    Raises:
        StorageError: a candidate could not be converted or published (the
            previously published objects then stay the entry points).
    """
    root = settings.home / publish.EXPORTS_DIR
    for invocation in sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []:
        for mark in sorted(invocation.glob("*" + MARK)):
            candidate = invocation / mark.name.removesuffix(MARK)
            decision = next(_json_lines(mark), {})
            model = str(decision.get("model") or "")
            with duckdb.connect() as conn:
                if decision.get("action") == "partitions":
                    finish_folder(conn, candidate)
                    publish.publish_partitioned(
                        client, settings.lake.bucket, candidate, model, settings.home, run_id
                    )
                else:
                    to_csv(conn, Path(str(candidate) + FOLDER), candidate)
                    publish.publish_object(
                        client,
                        settings.lake.bucket,
                        candidate,
                        f"{MARTS_PREFIX}{model}.csv",
                        settings.home,
                    )
            shutil.rmtree(mark, ignore_errors=True)
        for left in invocation.iterdir():  # not marked: its model or a test failed
            publish.discard_object(left)


def finish_folder(conn: duckdb.DuckDBPyConnection, folder: Path) -> None:
    """Turn a partitioned mart's Spark candidate folder into the one DuckDB writes.

    ``<p>.csv.d`` become ``<p>.csv``, ``_parts.json.d`` and ``_state.json.d``
    become JSON-lines files, and ``_header.csv`` is the header line of the
    state's columns, as DuckDB prints it.

    Raises:
        StorageError: the folder has no ``_state.json.d``.
    """
    for written in sorted(folder.glob("*.csv" + FOLDER)):
        name = written.name.removesuffix(FOLDER)
        if name != "_header.csv":
            to_csv(conn, written, folder / name)
        shutil.rmtree(written)
    rows = {}
    for name in ("_parts.json", "_state.json"):
        written = folder / (name + FOLDER)
        rows[name] = list(_json_lines(written))
        (folder / name).write_text("".join(json.dumps(row) + "\n" for row in rows[name]))
        shutil.rmtree(written, ignore_errors=True)
    if not rows["_state.json"]:
        raise StorageError(f"{folder}: Spark wrote no _state.json")
    state = rows["_state.json"][0]
    names = ", ".join(f"null as {quote_identifier(c)}" for c in state.get("columns") or [])
    conn.execute(
        f"copy (select {names} where false) to {sql_literal(str(folder / '_header.csv'))} "
        "(format csv, header true)"
    )


def to_csv(conn: duckdb.DuckDBPyConnection, written: Path, target: Path) -> None:
    """Write the rows of Spark's Parquet folder ``written`` to ``target`` as DuckDB's CSV.

    The rows come in their ``_export_order`` (the file's order, numbered by
    Spark), which is left out, with the header and quoting of DuckDB's COPY.

    Raises:
        StorageError: the folder holds no Parquet file.
    """
    files = ", ".join(sql_literal(str(p)) for p in sorted(written.glob("*.parquet")))
    if not files:
        raise StorageError(f"{written}: Spark wrote no Parquet file")
    conn.execute(
        f"copy (select * exclude (_export_order) from read_parquet([{files}]) "
        f"order by _export_order) to {sql_literal(str(target))} (format csv, header true)"
    )


def _json_lines(folder: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a folder of JSON-lines part files (Spark's JSON output)."""
    for part in sorted(folder.glob("part-*")) if folder.exists() else []:
        for line in part.read_text().splitlines():
            if line.strip():
                yield json.loads(line)
