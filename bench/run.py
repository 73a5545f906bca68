"""``make bench``: the pipeline against the bare engine and the scripts people write instead.

For each scale (weeks of real readings, shifted forward in time: ``bench/weeks.py``)
a local S3 server of its own gets the weeks under ``raw/turnstile/``; then,
each timed ``--repeat`` times (the median is reported), but the steady state,
timed ``--steady-repeat`` times: that many more weeks on the state the last
cold build left. By default (``--interleave``) every scale's cold builds come
first, then the steady runs go in rounds: one more week at each scale and one
week alone, in an order that reverses each round, so that the growth ratio
compares runs of the same minutes (this machine's speed drifts by 20% or more
within a sitting); ``--no-interleave`` runs each scale's steady weeks one after
the other:

``pipeline_cold``   ``elt run`` on an empty state: raw objects to published CSVs
``pipeline_steady`` N weeks loaded and built, one more uploaded: ``elt run``
``one_week``        ``elt run`` on an empty state with one week (steady's yardstick)
``bare``            one DuckDB statement: S3 CSVs to ``turnstile_daily`` CSV in S3
``landing``         the loader alone (``pipeline.load``) on an empty warehouse
``landing_lake``    the same, also writing the lake (``ELT_LAKE=true``: ``lake/`` in the bucket)
``landing_bare``    ``create table as select * from read_csv('s3://...')``
``spark_cold``/``spark_steady`` the same as ``pipeline_*`` with ``ELT_TARGET=spark``
                  (``--spark-scales``, 32 weeks by default), right after DuckDB's
``pandas``/``polars`` the stateless scripts of ``bench/scripts/`` (16 GB cap)

Every command runs as a child process; its peak resident memory (with its
own children) is sampled by psutil. Results: ``bench/results/latest.json``
and the table in ``bench/README.md``.

    .venv/bin/python -m bench.run --scales 2,32,256 --repeat 3
    .venv/bin/python -m bench.run --scales 32,256 --repeat 1 --steady-repeat 3
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench.weeks import series
from loaders import local_s3
from loaders import s3 as s3_mod
from loaders.config import load_settings

PROJECT = Path(__file__).resolve().parents[1]
ELT = str(Path(sys.executable).with_name("elt"))
CAP_MB = 16 * 1024
LOGS = PROJECT / "bench" / "data" / "logs"  # stderr of every measured run (git-ignored)
# Methods a run can leave out (--scripts, --landing-scales, --spark-scales):
# with --merge, their earlier records are kept.
SKIPPABLE = (
    "pandas",
    "polars",
    "landing",
    "landing_lake",
    "landing_bare",
    "spark_cold",
    "spark_steady",
)
KEY_COLUMNS = ("turnstile_id", "service_date", "entries", "exits", "readings", "anomalies")

BARE = """
import sys
from pathlib import Path
from loaders import s3, warehouse
from loaders.config import load_settings
settings = load_settings("dev")
sql = open(sys.argv[1]).read().format(
    source="'s3://lake/raw/turnstile/*.csv.gz'", target="'s3://lake/bench/bare.csv'"
)
with warehouse.connect(Path(sys.argv[2]), s3.connection(settings.lake, settings.home)) as conn:
    conn.execute(sql)
"""
LANDING = """
from loaders import pipeline, s3
from loaders.config import load_settings
settings = load_settings("dev")
results = pipeline.load(settings, s3.client(s3.connection(settings.lake, settings.home)))
print(sum(r.rows_loaded for r in results))
"""
LANDING_BARE = """
import sys
from pathlib import Path
from loaders import s3, warehouse
from loaders.config import load_settings
settings = load_settings("dev")
with warehouse.connect(Path(sys.argv[1]), s3.connection(settings.lake, settings.home)) as conn:
    conn.execute(
        "create table landed as select * from "
        "read_csv('s3://lake/raw/turnstile/*.csv.gz', header = true, all_varchar = true)"
    )
    print(conn.execute("select count(*) from landed").fetchone()[0])
"""


@dataclass
class Measured:
    """One timed child process."""

    seconds: float
    peak_mb: float
    stdout: str
    out_of_memory: bool = False


@dataclass
class Record:
    """One line of ``latest.json``."""

    scale: int
    method: str
    median_s: float | None
    rows_per_s: float | None
    peak_mb: float | None
    ratio_to_bare: float | None = None
    runs_s: list[float] = field(default_factory=list)
    readings: int = 0
    note: str = ""
    split_s: dict[str, float] = field(default_factory=dict)
    memory_limit: str | None = None
    matches_pipeline: bool | None = None
    # Median bytes the runs sent to S3 to publish marts (from their receipts).
    uploaded_bytes: int | None = None
    # Steady runs and one week alone taken in turn, round by round (runs_s in round order).
    interleaved: bool = False


def measure(argv: list[str], env: dict[str, str], cap_mb: float | None = None) -> Measured:
    """Run ``argv``; sample its resident memory (children included) every 50 ms.

    ``cap_mb``: kill it above this resident size (the scripts' 16 GB cap).

    Raises:
        subprocess.CalledProcessError: it exited non-zero (not by our memory cap).
    """
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=env, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    watched = psutil.Process(proc.pid)
    peak = 0.0
    killed = False
    while proc.poll() is None:
        try:
            tree = [watched, *watched.children(recursive=True)]
            rss = sum(p.memory_info().rss for p in tree if p.is_running()) / 2**20
        except psutil.Error:
            rss = 0.0
        peak = max(peak, rss)
        if cap_mb is not None and rss > cap_mb:
            for p in [*watched.children(recursive=True), watched]:
                p.kill()
            killed = True
            break
        time.sleep(0.05)
    stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - started
    LOGS.mkdir(parents=True, exist_ok=True)
    with (LOGS / "runs.log").open("a") as log:
        log.write(f"=== {' '.join(argv[:2])} {seconds:.1f}s exit {proc.returncode}\n{stderr}\n")
    if proc.returncode != 0 and not killed:
        sys.stderr.write(stderr[-3000:])
        raise subprocess.CalledProcessError(proc.returncode, argv[:2], stdout, stderr)
    return Measured(seconds, peak, stdout, killed)


class Scale:
    """A state directory with its own local S3 server and ``weeks`` weeks uploaded."""

    def __init__(self, root: Path, weeks: list[Path]) -> None:
        self.home = root / f"scale_{len(weeks)}"
        self.weeks = weeks
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("ELT_", "AWS_"))},
            "ELT_HOME": str(self.home),
            "ELT_PROJECT_DIR": str(PROJECT),
        }
        subprocess.run([ELT, "up"], env=self.env, check=True, capture_output=True)
        self.settings = load_settings("dev", env=self.env)
        self.client = s3_mod.client(s3_mod.connection(self.settings.lake, self.home))
        for week in weeks:
            s3_mod.upload(self.client, week, "lake", f"raw/turnstile/{week.name}")
        creds = local_s3.credentials(self.home)
        self.script_env = {
            **self.env,
            "AWS_ENDPOINT_URL": local_s3.endpoint(self.home),
            "AWS_ACCESS_KEY_ID": creds.access_key_id,
            "AWS_SECRET_ACCESS_KEY": creds.secret_access_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def empty_state(self) -> None:
        """No warehouse, nothing published: the next ``elt run`` is cold."""
        for name in ("warehouse.duckdb", "warehouse.duckdb.wal", "bench.duckdb"):
            (self.home / name).unlink(missing_ok=True)
        for prefix in ("marts/", "lake/"):
            for obj in list(s3_mod.list_objects(self.client, "lake", prefix)):
                self.client.delete_object(Bucket="lake", Key=obj.key)

    def last_receipt(self) -> dict[str, Any]:
        """The newest receipt published under ``marts/_runs/`` (what a consumer would read)."""
        keys = [o.key for o in s3_mod.list_objects(self.client, "lake", "marts/_runs/")]
        return json.loads(self.get(max(keys)))

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket="lake", Key=key)["Body"].read()

    def stop(self) -> None:
        local_s3.stop(self.home)


def key_rows(body: bytes) -> set[tuple[str, ...]]:
    """The comparable columns of a turnstile_daily CSV, as a set of rows."""
    return {tuple(r[c] for c in KEY_COLUMNS) for r in csv.DictReader(io.StringIO(body.decode()))}


def summarise(scale: int, method: str, runs: list[Measured], readings: int, **extra: Any) -> Record:
    done = [r for r in runs if not r.out_of_memory]
    if not done:
        return Record(
            scale,
            method,
            None,
            None,
            round(max(r.peak_mb for r in runs)),
            readings=readings,
            note=f"out of memory: killed above the {CAP_MB // 1024} GB cap",
            **extra,
        )
    median = statistics.median(r.seconds for r in done)
    return Record(
        scale,
        method,
        round(median, 2),
        round(readings / median) if readings else None,
        round(max(r.peak_mb for r in done)),
        runs_s=[round(r.seconds, 2) for r in done],
        readings=readings,
        **extra,
    )


def landing_pairs(scale: Scale, repeat: int) -> list[Record]:
    """The loader alone, with the lake, then a bare CTAS over the same objects, ``repeat`` times.

    Each round runs back to back, so a slower spell of the machine hits all three.
    """
    py = sys.executable
    landing, landing_lake, landing_bare = [], [], []
    for _ in range(repeat):
        scale.empty_state()
        landing.append(measure([py, "-c", LANDING], scale.env))
        scale.empty_state()
        landing_lake.append(measure([py, "-c", LANDING], {**scale.env, "ELT_LAKE": "true"}))
        (scale.home / "bench.duckdb").unlink(missing_ok=True)
        landing_bare.append(
            measure([py, "-c", LANDING_BARE, str(scale.home / "bench.duckdb")], scale.env)
        )
        (scale.home / "bench.duckdb").unlink(missing_ok=True)
    readings = int(landing[-1].stdout.strip().splitlines()[-1])
    bare_rows = int(landing_bare[-1].stdout.strip().splitlines()[-1])
    if bare_rows != readings:
        raise RuntimeError(f"the loader landed {readings} rows, the bare CTAS {bare_rows}")
    return [
        summarise(len(scale.weeks), "landing", landing, readings),
        summarise(len(scale.weeks), "landing_lake", landing_lake, readings),
        summarise(len(scale.weeks), "landing_bare", landing_bare, readings),
    ]


def pipeline_record(
    n: int,
    method: str,
    runs: list[Measured],
    readings: int,
    splits: list[dict[str, float]],
    uploaded: list[int],
) -> Record:
    """The record of ``elt run`` measured as ``runs``.

    Adds the medians of its receipts' step timings (``splits``, seconds)
    and of the bytes it sent (``uploaded``).
    """
    split = {k: round(statistics.median(s[k] for s in splits), 2) for k in splits[0]}
    return summarise(
        n, method, runs, readings, split_s=split, uploaded_bytes=int(statistics.median(uploaded))
    )


class Cold:
    """A scale whose cold builds are measured: its server is up, its steady state built."""

    def __init__(self, scale: Scale, record: Record, pipeline_csv: bytes) -> None:
        self.scale = scale
        self.record = record
        self.pipeline_csv = pipeline_csv  # turnstile_daily.csv, as the cold build published it
        self.n = len(scale.weeks)


def cold_runs(root: Path, weeks: list[Path], repeat: int) -> Cold:
    """``elt run`` on an empty state, ``repeat`` times, on a new scale of ``weeks``.

    The last run leaves the state the steady runs start from; the server stays up.
    """
    scale = Scale(root, weeks)
    n = len(weeks)
    try:
        print(f"== {n} weeks", flush=True)
        cold, splits, uploaded = [], [], []
        log = scale.home / "logs" / "dbt.log"
        for _ in range(repeat):
            scale.empty_state()
            log.unlink(missing_ok=True)  # dbt appends: keep only this cold build's
            cold.append(measure([ELT, "run"], scale.env))
            # The per-statement profile of the cold build (python -m bench.statements).
            shutil.copy(log, LOGS.parent / f"dbt-cold-{n}.log")
            receipt = scale.last_receipt()
            splits.append(receipt["timings"])
            uploaded.append(receipt.get("uploaded_bytes", 0))
        readings = sum(o["rows_loaded"] for o in receipt["objects"])
        record = pipeline_record(n, "pipeline_cold", cold, readings, splits, uploaded)
        print(record, flush=True)
        return Cold(scale, record, scale.get("marts/turnstile_daily.csv"))
    except BaseException:
        teardown(scale)
        raise


def teardown(scale: Scale) -> None:
    """Stop the scale's server and delete its state."""
    scale.stop()
    shutil.rmtree(scale.home, ignore_errors=True)


class Steady:
    """The steady runs of one scale: one more week each, from the state its cold build left."""

    def __init__(self, cold: Cold, weeks: list[Path]) -> None:
        self.cold = cold
        self.weeks = list(weeks)
        self.runs: list[Measured] = []
        self.splits: list[dict[str, float]] = []
        self.uploaded: list[int] = []
        self.week_rows = 0

    def run(self) -> None:
        """Upload the next week and time ``elt run`` until its CSVs are published."""
        scale, n = self.cold.scale, self.cold.n
        week = self.weeks[len(self.runs)]
        log = scale.home / "logs" / "dbt.log"
        log.unlink(missing_ok=True)  # dbt appends: keep only the steady run's
        s3_mod.upload(scale.client, week, "lake", f"raw/turnstile/{week.name}")
        self.runs.append(measure([ELT, "run"], scale.env))
        receipt = scale.last_receipt()
        self.splits.append(receipt["timings"])
        self.uploaded.append(receipt.get("uploaded_bytes", 0))
        self.week_rows = sum(o["rows_loaded"] for o in receipt["objects"])
        # Per-statement times of the steady run (dbt's debug log), for the README.
        if log.exists():
            shutil.copy(log, LOGS.parent / f"dbt-steady-{n}.log")

    def record(self, note: str = "", interleaved: bool = False) -> Record:
        """The ``pipeline_steady`` record; removes the weeks it uploaded from the bucket."""
        for week in self.weeks[: len(self.runs)]:
            self.cold.scale.client.delete_object(Bucket="lake", Key=f"raw/turnstile/{week.name}")
        record = pipeline_record(
            self.cold.n, "pipeline_steady", self.runs, self.week_rows, self.splits, self.uploaded
        )
        record.note, record.interleaved = note, interleaved
        print(record, flush=True)
        return record


def interleaved(
    colds: list[Cold], extra: dict[int, list[Path]], alone: Path, rounds: int
) -> list[Record]:
    """Steady runs of every scale and one week alone, taken in turn, ``rounds`` times.

    This machine's speed drifts by 20% or more within a sitting, and a scale's
    steady runs taken one after the other land in one patch of it: the growth
    ratio would then measure the drift. Here each round runs one steady week of
    every scale and one week alone (on an empty state of its own), in an order
    that reverses each round (32, 256, alone; then alone, 256, 32), so a drift
    that holds for a round falls on each alike. One week alone is run once,
    untimed, before the first round: like the steady scales after their cold
    builds, it then starts from dbt's saved parse. Their records carry
    ``interleaved=True``: ``targets`` then also gives each round's own ratios.
    """
    steadies = [Steady(cold, extra[cold.n]) for cold in colds]
    single = Scale(colds[0].scale.home.parent, [alone])
    single_runs: list[Measured] = []
    single_splits: list[dict[str, float]] = []
    single_uploaded: list[int] = []

    def one_alone() -> None:
        single.empty_state()
        single_runs.append(measure([ELT, "run"], single.env))
        receipt = single.last_receipt()
        single_splits.append(receipt["timings"])
        single_uploaded.append(receipt.get("uploaded_bytes", 0))

    try:
        # Untimed: the steady scales start with dbt's saved parse of the project
        # (from their cold builds), so one week alone does too, not with a full parse.
        single.empty_state()
        measure([ELT, "run"], single.env)
        turns: list[Callable[[], None]] = [s.run for s in steadies] + [one_alone]
        for i in range(rounds):
            print(f"== interleaved round {i + 1} of {rounds}", flush=True)
            for turn in turns if i % 2 == 0 else reversed(turns):
                turn()
        readings = sum(o["rows_loaded"] for o in single.last_receipt()["objects"])
    finally:
        teardown(single)
    note = f"interleaved: {rounds} rounds, with " + ", ".join(
        [f"{c.n} weeks" for c in colds] + ["one week alone"]
    )
    records = [s.record(note, interleaved=True) for s in steadies]
    alone_record = pipeline_record(
        1, "one_week", single_runs, readings, single_splits, single_uploaded
    )
    alone_record.note, alone_record.interleaved = note, True
    records.append(alone_record)
    print(records[-1], flush=True)
    return records


def finish_scale(
    cold: Cold,
    repeat: int,
    args: argparse.Namespace,
    keep: Callable[[list[Record]], None],
    records: list[Record],
) -> list[Record]:
    """Every other method at the scale of ``cold``, then its server stopped and state deleted.

    ``records`` are the scale's records so far; ``keep`` gets them with each new
    one, so that a long scale stopped midway, or failing late, keeps what it measured.
    """
    scale, n, readings = cold.scale, cold.n, cold.record.readings
    pipeline_csv = cold.pipeline_csv
    py = sys.executable
    try:
        if n in args.spark_scales:
            records += spark_runs(scale, args.extra_weeks[n], repeat, records)
            print(records[-2:], flush=True)
            keep(records)

        bare_sql = str(PROJECT / "bench" / "bare.sql")
        bare = [
            measure([py, "-c", BARE, bare_sql, str(scale.home / "bench.duckdb")], scale.env)
            for _ in range(repeat)
        ]
        matches = key_rows(scale.get("bench/bare.csv")) == key_rows(pipeline_csv)
        records.append(summarise(n, "bare", bare, readings, matches_pipeline=matches))
        print(records[-1], flush=True)
        keep(records)
        if n in args.landing_scales:
            records += landing_pairs(scale, repeat)
            print(records[-3:], flush=True)
            keep(records)

        for tool in args.scripts:
            script = str(PROJECT / "bench" / "scripts" / f"{tool}_job.py")
            runs = []
            for _ in range(repeat):
                argv = [py, script, "lake", "raw/turnstile/", f"bench/{tool}.csv"]
                runs.append(measure(argv, scale.script_env, cap_mb=CAP_MB))
                if runs[-1].out_of_memory:
                    break
            matches = (
                None
                if runs[-1].out_of_memory
                else key_rows(scale.get(f"bench/{tool}.csv")) == key_rows(pipeline_csv)
            )
            records.append(summarise(n, tool, runs, readings, matches_pipeline=matches))
            print(records[-1], flush=True)
            keep(records)

        if n == args.memory_limit_scale:
            scale.empty_state()
            env = {**scale.env, "ELT_MEMORY_LIMIT": args.memory_limit}
            try:
                capped = [measure([ELT, "run"], env)]
                records.append(
                    summarise(n, "pipeline_cold", capped, readings, memory_limit=args.memory_limit)
                )
            except subprocess.CalledProcessError as exc:
                last = (exc.stderr or "").strip().splitlines()[-1:] or [f"exit {exc.returncode}"]
                records.append(
                    Record(
                        n,
                        "pipeline_cold",
                        None,
                        None,
                        None,
                        readings=readings,
                        note=f"failed: {last[0][:300]}",
                        memory_limit=args.memory_limit,
                    )
                )
            print(records[-1], flush=True)
            keep(records)
    finally:
        teardown(scale)
    bare_s = next(r.median_s for r in records if r.method == "bare")
    for record in records:
        if record.median_s and bare_s and not record.method.endswith("_steady"):
            record.ratio_to_bare = round(record.median_s / bare_s, 2)
    return records


def spark_runs(scale: Scale, extra: list[Path], repeat: int, done: list[Record]) -> list[Record]:
    """The Spark target (``ELT_TARGET=spark elt run``): cold, then one more week, as for DuckDB.

    Right after DuckDB's runs at the same scale (``done``), so that the
    ratios compare one sitting. A cold run starts with no warehouse, no
    Spark catalog and nothing under ``marts/`` or ``lake/``.
    """
    env = {**scale.env, "ELT_TARGET": "spark"}
    n = len(scale.weeks)
    cold, splits, uploaded = [], [], []
    for _ in range(repeat):
        scale.empty_state()
        shutil.rmtree(scale.home / "spark", ignore_errors=True)  # its tables went with lake/
        cold.append(measure([ELT, "run"], env))
        receipt = scale.last_receipt()
        splits.append(receipt["timings"])
        uploaded.append(receipt.get("uploaded_bytes", 0))
    readings = sum(o["rows_loaded"] for o in receipt["objects"])
    records = [pipeline_record(n, "spark_cold", cold, readings, splits, uploaded)]
    steady, splits, uploaded = [], [], []
    for week in extra[:repeat]:
        s3_mod.upload(scale.client, week, "lake", f"raw/turnstile/{week.name}")
        steady.append(measure([ELT, "run"], env))
        receipt = scale.last_receipt()
        splits.append(receipt["timings"])
        uploaded.append(receipt.get("uploaded_bytes", 0))
    for week in extra[:repeat]:
        scale.client.delete_object(Bucket="lake", Key=f"raw/turnstile/{week.name}")
    if steady:
        week_rows = sum(o["rows_loaded"] for o in receipt["objects"])
        records.append(pipeline_record(n, "spark_steady", steady, week_rows, splits, uploaded))
    for record in records:
        duck = next(
            (r for r in done if r.method == record.method.replace("spark", "pipeline")), None
        )
        if duck and duck.median_s and record.median_s:
            record.note = f"{record.median_s / duck.median_s:.1f}x DuckDB's ({duck.median_s:.1f} s)"
    return records


def one_week(root: Path, week: Path, repeat: int) -> Record:
    """``elt run`` on an empty state with one week uploaded: the steady state's yardstick."""
    scale = Scale(root, [week])
    try:
        runs = []
        for _ in range(repeat):
            scale.empty_state()
            runs.append(measure([ELT, "run"], scale.env))
        readings = sum(o["rows_loaded"] for o in scale.last_receipt()["objects"])
        return summarise(1, "one_week", runs, readings)
    finally:
        scale.stop()
        shutil.rmtree(scale.home, ignore_errors=True)


TITLES = {
    "pipeline_cold": "`elt run`, empty state",
    "pipeline_steady": "`elt run`, one more week",
    "spark_cold": "`ELT_TARGET=spark elt run`, empty state",
    "spark_steady": "`ELT_TARGET=spark elt run`, one more week",
    "one_week": "`elt run`, one week alone",
    "bare": "one DuckDB statement",
    "landing": "loader alone",
    "landing_lake": "loader alone, writing the lake too (`ELT_LAKE=true`)",
    "landing_bare": "`create table as read_csv`",
    "pandas": "pandas script",
    "polars": "polars script",
}


def report(records: list[Record], meta: dict[str, Any]) -> str:
    """The Markdown of ``bench/README.md``."""
    lines = [
        "# Benchmarks",
        "",
        "Regenerated by `make bench` (`bench/run.py`); the numbers below are from "
        f"{meta['date']} on {meta['machine']}. Medians of each row's runs; peak is the",
        "resident memory of the process and its children. Raw records:",
        "`bench/results/latest.json`.",
        "",
        *(
            [f"Since then, {meta['note']} (`--only-landing`): those rows are newer.", ""]
            if meta.get("note")
            else []
        ),
        "| weeks | readings | method | runs | median s | readings/s | peak MB | x bare | notes |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in records:
        notes = [r.note] if r.note else []
        if r.split_s:
            load, build = r.split_s.get("load", 0), r.split_s.get("build", 0)
            notes.append(
                f"load {load:.1f} s, dbt build {build:.1f} s "
                f"(of which export PUTs {r.split_s.get('export', 0):.1f} s)"
            )
        if r.memory_limit:
            notes.append(f"DuckDB memory_limit {r.memory_limit}")
        if r.uploaded_bytes is not None:
            notes.append(f"uploaded {r.uploaded_bytes / 2**20:,.1f} MB")
        if r.matches_pipeline is not None:
            notes.append("same numbers as the pipeline" if r.matches_pipeline else "DIFFERS")
        cells = [
            str(r.scale),
            f"{r.readings:,}",
            f"{r.method}: {TITLES.get(r.method, '')}",
            str(len(r.runs_s)) if r.runs_s else "-",
            "-" if r.median_s is None else f"{r.median_s:.2f}",
            "-" if r.rows_per_s is None else f"{r.rows_per_s:,}",
            "-" if r.peak_mb is None else f"{r.peak_mb:,}",
            "-" if r.ratio_to_bare is None else f"{r.ratio_to_bare:.2f}",
            "; ".join(notes),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Targets", ""] + [f"- {t}" for t in targets(records)] + [""]
    return "\n".join(lines)


def by_round(record: Record, yardstick: Record) -> str:
    """Each round's ratio of two interleaved records, and their median; else nothing.

    Round ``i``'s runs of the two were taken within a minute of each other, so
    this ratio is the one a drift of the machine's speed moves least.
    """
    if not (record.interleaved and yardstick.interleaved):
        return ""
    if len(record.runs_s) != len(yardstick.runs_s) or not record.runs_s:
        return ""
    ratios = [a / b for a, b in zip(record.runs_s, yardstick.runs_s, strict=True)]
    listed = ", ".join(f"{r:.2f}" for r in ratios)
    return f"; interleaved, round by round {statistics.median(ratios):.2f}x ({listed})"


def targets(records: list[Record]) -> list[str]:
    """Each target of the benchmark issue, with the measured figure."""

    def find(scale: int, method: str, limit: str | None = None) -> Record | None:
        return next(
            (r for r in records if (r.scale, r.method, r.memory_limit) == (scale, method, limit)),
            None,
        )

    out = []
    top = max(r.scale for r in records)
    alone = find(1, "one_week")
    steady = find(top, "pipeline_steady")
    polars = find(top, "polars")
    if steady and steady.median_s and alone and alone.median_s:
        out.append(
            f"Steady state at {top} weeks: {steady.median_s:.1f} s for one more week, "
            f"{steady.median_s / alone.median_s:.2f}x one week alone ({alone.median_s:.1f} s)"
            f"{by_round(steady, alone)}; target at most 1.5x."
        )
    at_32 = find(32, "pipeline_steady")
    if steady and steady.median_s and at_32 and at_32.median_s and top != 32:
        out.append(
            f"Steady state growth {top}/32 weeks: {steady.median_s / at_32.median_s:.2f}x "
            f"({steady.median_s:.1f} s against {at_32.median_s:.1f} s){by_round(steady, at_32)}; "
            "target at most 1.2x."
        )
    if steady and steady.peak_mb is not None:
        out.append(
            f"Peak memory of the steady run at {top} weeks, default settings: "
            f"{steady.peak_mb:,} MB; target under 1,024 MB."
        )
    if steady and steady.uploaded_bytes is not None:
        out.append(
            f"Bytes uploaded by the steady run at {top} weeks: "
            f"{steady.uploaded_bytes / 2**20:,.1f} MB (the parts the week touched, the "
            "manifests); target a few MB."
        )
    if steady and steady.median_s and polars:
        if polars.median_s:
            out.append(
                f"Against the polars script at {top} weeks ({polars.median_s:.1f} s): "
                f"{polars.median_s / steady.median_s:.1f}x faster; target at least 10x."
            )
        else:
            out.append(f"The polars script at {top} weeks: {polars.note}.")
    cold = find(top, "pipeline_cold")
    if cold and cold.ratio_to_bare:
        out.append(
            f"Cold build at {top} weeks: {cold.ratio_to_bare:.2f}x bare, peak "
            f"{cold.peak_mb or 0:,} MB; target at most 1.6x, peak under 3,072 MB."
        )
    for scale in sorted({r.scale for r in records}):
        for method in ("spark_cold", "spark_steady"):
            spark = find(scale, method)
            if spark and spark.median_s:
                out.append(
                    f"Spark target at {scale} weeks, {TITLES[method].split(', ')[1]}: "
                    f"{spark.median_s:.1f} s, {spark.note}, peak {spark.peak_mb or 0:,} MB."
                )
        landing, bare = find(scale, "landing"), find(scale, "landing_bare")
        if landing and bare and landing.median_s and bare.median_s:
            out.append(
                f"Landing at {scale} weeks: {bare.median_s / landing.median_s:.2f} of bare "
                "landing throughput; target at least 0.9."
            )
    for r in records:
        if r.memory_limit:
            out.append(
                f"{r.scale} weeks with DuckDB memory_limit {r.memory_limit}: "
                + (f"completed in {r.median_s:.0f} s" if r.median_s else "did not complete")
                + ("" if r.peak_mb is None else f", peak {r.peak_mb:,} MB")
                + (f" ({r.note})" if r.note else "")
                + "; target under 3,072 MB."
            )
    return out


def measure_in_turn(
    root: Path,
    weeks: list[Path],
    scales: list[int],
    args: argparse.Namespace,
    records: list[Record],
    save: Callable[[], None],
) -> None:
    """Each scale in turn: cold builds, steady runs one after the other, every other method.

    One week alone is measured first unless ``records`` (kept by ``--merge``) has it.
    """
    if not any(r.method == "one_week" for r in records):
        records.append(one_week(root, weeks[0], args.repeat))
        print(records[-1], flush=True)
    for n in scales:
        done = list(records)

        def keep(partial: list[Record], done: list[Record] = done) -> None:
            records[:] = done + partial
            save()

        cold = cold_runs(root, weeks[:n], args.repeat)
        mine = [cold.record]
        keep(mine)
        try:
            if args.extra_weeks[n]:
                steady = Steady(cold, args.extra_weeks[n])
                for _ in range(args.steady_repeat):
                    steady.run()
                mine.append(steady.record())
                keep(mine)
        except BaseException:
            teardown(cold.scale)
            raise
        keep(finish_scale(cold, args.repeat, args, keep, mine))


def measure_interleaved(
    root: Path,
    weeks: list[Path],
    scales: list[int],
    args: argparse.Namespace,
    records: list[Record],
    save: Callable[[], None],
) -> None:
    """Every scale's cold builds, then the steady runs interleaved, then every other method."""
    colds: list[Cold] = []
    try:
        for n in scales:
            colds.append(cold_runs(root, weeks[:n], args.repeat))
            records.append(colds[-1].record)
            save()
        steady = interleaved(colds, args.extra_weeks, weeks[0], args.steady_repeat)
    except BaseException:
        for cold in colds:
            teardown(cold.scale)
        raise
    records += steady
    save()
    for i, cold in enumerate(colds):
        mine = [cold.record, *(r for r in steady if r.scale == cold.n)]
        done = [r for r in records if not any(r is m for m in mine)]

        def keep(partial: list[Record], done: list[Record] = done) -> None:
            records[:] = done + partial
            save()

        try:
            keep(finish_scale(cold, args.repeat, args, keep, mine))
        except BaseException:
            for later in colds[i + 1 :]:
                teardown(later.scale)
            raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", default="2,32,256")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--scripts", default="pandas,polars", type=lambda s: [t for t in s.split(",") if t]
    )
    parser.add_argument(
        "--landing-scales",
        default="2,32,256",
        type=lambda s: {int(t) for t in s.split(",") if t},
        help="scales at which to time the loader against a bare CTAS",
    )
    parser.add_argument(
        "--merge", action="store_true", help="keep earlier results of the scales not run now"
    )
    parser.add_argument(
        "--only-landing",
        action="store_true",
        help="time only the loader against a bare CTAS, at --scales; keep every other result",
    )
    parser.add_argument(
        "--spark-scales",
        default="32",
        type=lambda s: {int(t) for t in s.split(",") if t},
        help="scales at which to run the Spark target too, right after DuckDB",
    )
    parser.add_argument(
        "--steady-repeat",
        type=int,
        help="steady runs per scale, one more week each (default: --repeat). One run is"
        " noisy: at 256 weeks the first after the cold build pays for some of its"
        " checkpoint, and some weeks' appends make DuckDB compact the raw table's last"
        " row groups as the loader closes the warehouse",
    )
    parser.add_argument(
        "--interleave",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="take the steady runs of every scale and one week alone in turn, round by"
        " round (--steady-repeat rounds), after every scale's cold builds: the growth"
        " ratio then compares runs of the same minutes (default); --no-interleave runs"
        " each scale's steady weeks one after the other",
    )
    parser.add_argument("--memory-limit", default="2GB")
    parser.add_argument("--memory-limit-scale", type=int, default=256)
    parser.add_argument("--data", type=Path, default=PROJECT / "bench" / "data" / "weeks")
    parser.add_argument("--out", type=Path, default=PROJECT / "bench" / "results" / "latest.json")
    parser.add_argument("--readme", type=Path, default=PROJECT / "bench" / "README.md")
    args = parser.parse_args()
    scales = sorted(int(s) for s in args.scales.split(","))
    args.steady_repeat = args.steady_repeat or args.repeat
    extra_weeks = max(args.repeat, args.steady_repeat)

    sources = sorted((PROJECT / "data" / "turnstile").glob("*.csv.gz"))
    weeks = series(sources, max(scales) + extra_weeks, args.data)
    root = Path(tempfile.mkdtemp(prefix="elt-bench-"))
    records: list[Record] = []
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GB, "
        f"{platform.system()} {platform.machine()}",
        "repeat": args.repeat,
        "steady_repeat": args.steady_repeat,
    }

    def save() -> None:
        """Write what is measured so far: a long run stopped midway keeps its scales."""
        args.out.parent.mkdir(parents=True, exist_ok=True)
        # A record measured now replaces a kept one of the same scale and method.
        newest = {(r.scale, r.method, r.memory_limit): r for r in records}
        records[:] = list(newest.values())
        records.sort(key=lambda r: (r.scale, r.method != "pipeline_cold"))
        args.out.write_text(json.dumps([asdict(r) for r in records], indent=2) + "\n")
        args.readme.write_text(report(records, meta))

    if args.only_landing:
        kept = [Record(**r) for r in json.loads(args.out.read_text())]
        records += [
            r
            for r in kept
            if not (r.scale in scales and r.method in ("landing", "landing_lake", "landing_bare"))
        ]
        meta["note"] = f"landing re-measured {meta['date']} at {args.scales} weeks"
        try:
            for n in scales:
                scale = Scale(root, weeks[:n])
                try:
                    print(f"== landing, {n} weeks", flush=True)
                    pairs = landing_pairs(scale, args.repeat)
                    bare = [r.median_s for r in records if r.scale == n and r.method == "bare"]
                    for record in pairs:
                        if bare and bare[0] and record.median_s:
                            record.ratio_to_bare = round(record.median_s / bare[0], 2)
                    records += pairs
                    print(records[-3:], flush=True)
                    save()
                finally:
                    scale.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print("\n".join(targets(records)))
        return
    if args.merge and args.out.exists():
        # Keep the earlier records of whatever this invocation does not measure
        # (a method skipped with --scripts '' or --landing-scales '' keeps its row).
        kept = [Record(**r) for r in json.loads(args.out.read_text())]
        records += [r for r in kept if r.scale not in scales or r.method in SKIPPABLE]
    args.extra_weeks = {n: weeks[n : n + extra_weeks] for n in scales}
    try:
        if args.interleave:
            measure_interleaved(root, weeks, scales, args, records, save)
        else:
            measure_in_turn(root, weeks, scales, args, records, save)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("\n".join(targets(records)))


if __name__ == "__main__":
    main()
