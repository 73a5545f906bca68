"""``elt serve``: a read-only page on localhost to consume what the pipeline published.

It lists each CSV published under ``marts/`` (rows, size, when it was
refreshed, the status of the last run) with a download link that is a fresh
presigned URL, the parts of each partitioned mart from its manifest (one CSV
per month or year, with its date range and the run that wrote it), the
rejects exported per dataset under ``marts/_rejects/``, the latest run
receipts from ``marts/_runs/``, and a chart of daily entries and exits of one
station (from ``marts/station_daily.csv``).

Everything comes from S3 (list and get, never put or delete) and is cached
by ETag: the page works on a bucket another machine fills, and never touches
the DuckDB file a run may be writing. The chart is drawn server side as SVG
(matplotlib), so the page needs no script from the internet.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from botocore.exceptions import BotoCoreError, ClientError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from loaders import partitions, receipts
from loaders import s3 as s3_mod
from loaders.errors import StorageError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
STATION_MART = "station_daily"
LINK_EXPIRES_S = 3600


@dataclass(frozen=True)
class Published:
    """One CSV under ``marts/``: what the page's tables show."""

    name: str
    key: str
    size_bytes: int
    refreshed_at: datetime
    rows: int | None
    url: str
    run_id: str | None = None
    run_status: str | None = None


@dataclass(frozen=True)
class PartView:
    """One part of a partitioned mart, as its manifest lists it, with a download link."""

    mart: str
    partition: str
    rows: int
    size_bytes: int
    first: str | None
    last: str | None
    run_id: str
    url: str


@dataclass(frozen=True)
class StationDay:
    """One row of ``station_daily``: a station's entries and exits on a service date."""

    remote_unit: str
    station: str
    service_date: date
    entries: int
    exits: int


class Lake:
    """Read-only view of the bucket, with bodies cached by (key, ETag).

    Args:
        client: Factory of the S3 client (boto3 clients are thread-safe).
        bucket: The bucket the pipeline publishes to.
    """

    def __init__(self, client: Callable[[], S3Client], bucket: str) -> None:
        self._client = client
        self.bucket = bucket
        self._cache: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    @property
    def s3(self) -> S3Client:
        return self._client()

    def listing(self, prefix: str) -> list[dict[str, Any]]:
        """Objects directly under ``prefix`` (no deeper keys), in key order.

        Raises:
            StorageError: S3 could not be listed.
        """
        found: list[dict[str, Any]] = []
        try:
            pages = self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, Delimiter="/"
            )
            for page in pages:
                found.extend(dict(o) for o in page.get("Contents", []))
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot list s3://{self.bucket}/{prefix}: {exc}") from exc
        return [o for o in found if o["Key"].endswith(".csv")]

    def _parsed(self, key: str, etag: str, parse: Callable[[bytes], Any]) -> Any:
        with self._lock:
            if (key, etag) in self._cache:
                return self._cache[(key, etag)]
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot read s3://{self.bucket}/{key}: {exc}") from exc
        value = parse(body)
        with self._lock:
            self._cache = {k: v for k, v in self._cache.items() if k[0] != key}
            self._cache[(key, etag)] = value
        return value

    def manifest(self, mart: str) -> dict[str, Any] | None:
        """The manifest of a partitioned mart (``marts/<mart>/_manifest.json``), or ``None``."""
        key = partitions.manifest_key(mart)
        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError:
            return None
        except BotoCoreError as exc:
            raise StorageError(f"cannot read s3://{self.bucket}/{key}: {exc}") from exc
        found: dict[str, Any] = self._parsed(key, head["ETag"].strip('"'), json.loads)
        return found

    def row_count(self, key: str, etag: str) -> int:
        """Data rows of a CSV object (records below the header, quoted newlines counted right)."""
        return int(self._parsed(key, etag, lambda body: max(0, len(_records(body)) - 1)))

    def station_days(self) -> list[StationDay]:
        """Rows of ``marts/station_daily.csv``; empty when it is not published yet."""
        key = f"{s3_mod.MARTS_PREFIX}{STATION_MART}.csv"
        found = [o for o in self.listing(s3_mod.MARTS_PREFIX) if o["Key"] == key]
        if not found:
            return []
        result: list[StationDay] = self._parsed(key, found[0]["ETag"], _station_days)
        return result

    def url(self, key: str) -> str:
        """A presigned GET URL of ``key``, valid for an hour."""
        return self.s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=LINK_EXPIRES_S
        )


def _records(body: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body.decode("utf-8", errors="replace"))))


def _station_days(body: bytes) -> list[StationDay]:
    rows = csv.DictReader(io.StringIO(body.decode("utf-8")))
    return [
        StationDay(
            remote_unit=row["remote_unit"],
            station=row["station"],
            service_date=date.fromisoformat(row["service_date"]),
            entries=int(row["entries"]),
            exits=int(row["exits"]),
        )
        for row in rows
    ]


def published(lake: Lake, prefix: str, runs: list[dict[str, Any]]) -> list[Published]:
    """The CSVs directly under ``prefix``, each with the last run that exported it.

    Rows come from that run's receipt when it recorded them, else from the CSV.
    """
    items = []
    for obj in lake.listing(prefix):
        key, etag = obj["Key"], obj["ETag"].strip('"')
        exported = next(
            (
                (run, export)
                for run in runs
                for export in run.get("exports", [])
                if export["key"] == key and export.get("etag") == etag
            ),
            None,
        )
        rows = exported[1].get("rows") if exported else None
        if rows is None and prefix == s3_mod.MARTS_PREFIX:
            listed = lake.manifest(key[len(prefix) : -len(".csv")])
            if listed and listed.get("whole", {}).get("etag") == etag:
                rows = int(listed["rows"])  # not the whole file parsed to count its lines
        items.append(
            Published(
                name=key[len(prefix) : -len(".csv")],
                key=key,
                size_bytes=int(obj["Size"]),
                refreshed_at=obj["LastModified"],
                rows=rows if rows is not None else lake.row_count(key, etag),
                url=lake.url(key),
                run_id=exported[0]["run_id"] if exported else None,
                run_status=exported[0]["status"] if exported else None,
            )
        )
    return items


def parts_of(lake: Lake, marts: list[Published]) -> list[PartView]:
    """Every part of the partitioned marts among ``marts``, in mart and partition order."""
    views = []
    for mart in marts:
        listed = lake.manifest(mart.name)
        for part in (listed or {}).get("parts", []):
            views.append(
                PartView(
                    mart=mart.name,
                    partition=part["partition"],
                    rows=int(part["rows"]),
                    size_bytes=int(part["bytes"]),
                    first=part.get("first"),
                    last=part.get("last"),
                    run_id=part["run_id"],
                    url=lake.url(part["key"]),
                )
            )
    return views


def chart_svg(days: list[StationDay], remote_unit: str) -> str:
    """Daily entries and exits of one remote unit over the loaded dates, as an SVG document."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render to a buffer
    from matplotlib.figure import Figure

    mine = sorted((d for d in days if d.remote_unit == remote_unit), key=lambda d: d.service_date)
    figure = Figure(figsize=(9, 3.6), layout="constrained")
    axes = figure.subplots()
    dates = np.array([d.service_date for d in mine], dtype="datetime64[D]")
    axes.plot(dates, [d.entries for d in mine], marker="o", label="entries", gid="entries")
    axes.plot(dates, [d.exits for d in mine], marker="o", label="exits", gid="exits")
    name = mine[0].station if mine else "no data"
    axes.set_title(f"{remote_unit} {name}: daily entries and exits")
    axes.set_ylabel("passes per day")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.autofmt_xdate()
    buffer = io.StringIO()
    # Text as <text> elements, not outlines: readable, selectable, searchable.
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        figure.savefig(buffer, format="svg")
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]  # inline in the page: drop the XML prolog and doctype


def create_app(client: Callable[[], S3Client], bucket: str) -> Starlette:
    """The page's web application (Starlette): ``/``, ``/chart.svg``, ``/healthz``.

    Args:
        client: Factory of the S3 client, called per request (a restarted
            local server may listen on new ports).
        bucket: Bucket the pipeline publishes to.
    """
    lake = Lake(client, bucket)

    def index(request: Request) -> Response:
        try:
            runs = list(receipts.published(lake.s3, bucket, limit=20))
            marts = published(lake, s3_mod.MARTS_PREFIX, runs)
            parts = parts_of(lake, marts)
            rejects = published(lake, f"{s3_mod.MARTS_PREFIX}_rejects/", runs)
            days = lake.station_days()
        except StorageError as exc:
            log.warning("serve: %s", exc)
            return PlainTextResponse(f"S3 unavailable: {exc}", status_code=503)
        stations = sorted({(d.remote_unit, d.station) for d in days})
        selected = request.query_params.get("station") or _busiest(days)
        context = {
            "bucket": bucket,
            "marts": marts,
            "parts": parts,
            "rejects": rejects,
            "runs": runs[:10],
            "stations": stations,
            "selected": selected,
            "chart": chart_svg(days, selected) if selected else None,
            "first_date": min((d.service_date for d in days), default=None),
            "last_date": max((d.service_date for d in days), default=None),
        }
        return TEMPLATES.TemplateResponse(request, "serve.html", context)

    def chart(request: Request) -> Response:
        remote_unit = request.query_params.get("station", "")
        try:
            days = lake.station_days()
        except StorageError as exc:
            return PlainTextResponse(f"S3 unavailable: {exc}", status_code=503)
        return Response(chart_svg(days, remote_unit), media_type="image/svg+xml")

    def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route("/", index),
            Route("/chart.svg", chart),
            Route("/healthz", healthz),
        ]
    )


def _busiest(days: list[StationDay]) -> str | None:
    """The remote unit with the most entries over all dates (the chart's default)."""
    totals: dict[str, int] = {}
    for day in days:
        totals[day.remote_unit] = totals.get(day.remote_unit, 0) + day.entries
    return max(totals, key=lambda unit: (totals[unit], unit)) if totals else None
