"""Fixtures: state directories with a real local S3 server (SeaweedFS).

Each ``Elt`` is one ``$ELT_HOME``: its own DuckDB file and its own server on
its own ports. A command runs the CLI's own entry point (the Typer app) with
the user's arguments and environment, in the test process: a process per
command imported Python, boto3 and dbt again (about 0.9 s, 2.8 s with dbt). A command that is to crash or pause itself (fault
injection), and any test that starts a long-lived ``elt`` (``watch``,
``serve``, a run another process waits for), runs a real subprocess.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import subprocess
import sys
import traceback
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bench.weeks import series
from loaders import cli, local_s3, warehouse
from loaders import s3 as s3_mod
from loaders.config import Settings, load_settings

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SAMPLE_WEEKS = sorted((PROJECT / "data" / "turnstile").glob("*.csv.gz"))

# Commands run as a real process: they kill or pause themselves (loaders/faults.py),
# or never end on their own.
SUBPROCESS_ENV = ("ELT_KILL_AT", "ELT_PAUSE_AT")
SUBPROCESS_COMMANDS = ("watch", "serve")


@dataclass
class Elt:
    """One state directory and the commands a user runs against it."""

    home: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ELT_", "AWS_"))}
        # The project these tests belong to (a mutated copy runs its own models).
        env.update(ELT_HOME=str(self.home), ELT_PROJECT_DIR=str(PROJECT))
        env.update(extra)
        return env

    def run(
        self, *args: str, check: bool = True, **extra_env: str
    ) -> subprocess.CompletedProcess[str]:
        """Run ``elt ARGS`` and return the finished command (exit code, text output).

        In the test process unless the command must be a process of its own
        (``SUBPROCESS_ENV``, ``SUBPROCESS_COMMANDS``); see the module docstring.
        """
        if set(extra_env) & set(SUBPROCESS_ENV) or set(args) & set(SUBPROCESS_COMMANDS):
            proc = subprocess.run(
                [str(BIN / "elt"), *args],
                cwd=PROJECT,
                env=self.env(**extra_env),
                capture_output=True,
                text=True,
                timeout=600,
            )
        else:
            proc = self._invoke(args, self.env(**extra_env))
        if check and proc.returncode != 0:
            raise AssertionError(self.failure_report(args, proc))
        return proc

    @staticmethod
    def _invoke(args: tuple[str, ...], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        """``elt ARGS`` through the Typer app, with ``env`` as the whole environment.

        Restores the environment, the working directory and the root logger
        (``elt`` points it at the command's stderr) afterwards. An exception
        the CLI does not handle exits 1 with its traceback on stderr, as the
        ``elt`` process would.
        """
        saved_env, saved_cwd = dict(os.environ), os.getcwd()
        root = logging.getLogger()
        saved_handlers, saved_level = root.handlers[:], root.level
        os.environ.clear()
        os.environ.update(env)
        os.chdir(PROJECT)
        try:
            result = CliRunner().invoke(cli.app, list(args))
        finally:
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)
            root.handlers[:] = saved_handlers
            root.setLevel(saved_level)
        stderr = result.stderr
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            stderr += "".join(traceback.format_exception(result.exception))
        return subprocess.CompletedProcess(["elt", *args], result.exit_code, result.stdout, stderr)

    def failure_report(self, args: tuple[str, ...], proc: subprocess.CompletedProcess[str]) -> str:
        """What a developer needs to act on a failed command: the command, its exit
        code, its stderr, the end of dbt's log and the last run's receipt."""
        parts = [
            f"ELT_HOME={self.home} elt {' '.join(args)} exited {proc.returncode}",
            "--- stderr (last 3000 characters):",
            proc.stderr[-3000:],
        ]
        dbt_log = self.home / "logs" / "dbt.log"
        if dbt_log.exists():
            tail = dbt_log.read_text(errors="replace").splitlines()[-25:]
            parts += [f"--- {dbt_log} (last 25 lines):", *tail]
        try:
            receipt = self.query(
                "select receipt from elt.runs order by started_at desc limit 1", wait_s=5
            )
        except Exception as exc:  # the report must not hide the failure it reports
            receipt = [(f"(no receipt: {exc})",)]
        if receipt:
            parts += ["--- last receipt:", str(receipt[0][0])[-3000:]]
        return "\n".join(parts)

    @property
    def settings(self) -> Settings:
        return load_settings("dev", env=self.env())

    def s3(self) -> Any:
        settings = self.settings
        return s3_mod.client(s3_mod.connection(settings.lake, settings.home))

    def query(
        self, sql: str, params: list[Any] | None = None, wait_s: float = 120
    ) -> list[tuple[Any, ...]]:
        """Read the warehouse, waiting for a run to end (as ``elt status`` does, under the run lock)."""
        with warehouse.read_only(self.settings.warehouse_path, self.home, wait_s=wait_s) as conn:
            return conn.execute(sql, params or []).fetchall()

    def reset(self) -> None:
        """Empty the bucket and delete the warehouse: the next run starts from nothing."""
        client = self.s3()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket="lake"):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket="lake", Key=obj["Key"])
        self.settings.warehouse_path.unlink(missing_ok=True)

    def put(self, key: str, body: bytes) -> None:
        self.s3().put_object(Bucket=self.settings.lake.bucket, Key=key, Body=body)

    def get(self, key: str) -> bytes:
        return self.s3().get_object(Bucket=self.settings.lake.bucket, Key=key)["Body"].read()

    def download_mart(self, model: str) -> bytes:
        """Fetch ``marts/<model>.csv`` through ``elt url`` and a plain HTTP GET."""
        link = self.run("url", model).stdout.splitlines()[0]
        with urllib.request.urlopen(link, timeout=30) as response:
            assert response.status == 200
            return response.read()


HEADER = ",CA,UNIT,SCP,STATION,LINENAME,DIVISION,DATE,TIME,DESC,ENTRIES,EXITS"


# raw.turnstile with each row's object key and ETag, which the ledger holds per load.
LANDED = (
    "(select ledger.key as _source_key, ledger.etag as _source_etag, landed.* "
    "from raw.turnstile as landed inner join elt.ledger as ledger "
    "on ledger.load_id = landed._load_id)"
)


def week_csv(
    rows: int = 3, day: str = "01/01/2024", start: int = 1000, station: str = "59 ST"
) -> bytes:
    """A small turnstile file: turnstile A002-R051-02-00-00 read hourly from 00:00 on ``day``.

    Entries count up by one per reading from ``start``; exits stay at 100.
    """
    lines = [HEADER] + [
        f"{i},A002,R051,02-00-00,{station},NQR456W,BMT,{day},0{i}:00:00,REGULAR,{start + i},100"
        for i in range(rows)
    ]
    return ("\n".join(lines) + "\n").encode()


def some_control_areas(week: Path, target: Path) -> Path:
    """``week``'s header and its lines of control areas A.. to G.. and N2.. to N30.., gzipped.

    The lines are kept byte for byte.
    """
    sliced = target / week.name
    with gzip.open(week, "rb") as source, gzip.open(sliced, "wb") as out:
        out.write(source.readline())
        for line in source:
            area = line.split(b",", 2)[1]
            if area < b"H" or b"N2" <= area < b"N31":
                out.write(line)
    return sliced


@pytest.fixture(scope="module")
def sliced_weeks(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three sliced real weeks: the two bundled ones and the first shifted two weeks on.

    Sliced by :func:`some_control_areas`, shifted by the benchmark's ``series``.
    """
    real = tmp_path_factory.mktemp("real_weeks")
    sliced = [some_control_areas(week, real) for week in SAMPLE_WEEKS]
    return series(sliced, 3, tmp_path_factory.mktemp("weeks"))


def project_copy(target: Path) -> Path:
    """A copy of the dbt project (models, macros, seeds, profiles) to alter in a test."""
    ignore = shutil.ignore_patterns(
        ".venv", ".elt", ".git", "target", "logs", "__pycache__", "data"
    )
    shutil.copytree(PROJECT, target, ignore=ignore)
    return target


COUNTS_SOURCE = """\
version: 2

sources:
  - name: tally
    description: A second dataset, with a mart of its own.
    schema: raw
    tables:
      - name: counts
        description: Name and count pairs.
        meta:
          elt:
            required_columns: [name, n]
        columns:
          - name: name
            description: A name.
          - name: n
            description: A count.
            data_type: bigint
"""

COUNTS_MART = """\
select
    name,
    sum(cast(n as bigint)) as total,
from {{ source('tally', 'counts') }}
group by name
"""

COUNTS_MODELS = """\
version: 2

models:
  - name: counts_total
    description: Total per name.
    config:
      materialized: table
      meta:
        export: csv
        primary_key: [name]
    columns:
      - name: name
        description: The name.
        data_tests: [unique, not_null]
      - name: total
        description: Sum of n.
"""


def with_counts_dataset(target: Path, contracted: bool = True) -> Path:
    """A copy of the project with a second dataset, ``counts`` (``raw/counts/``), and its mart.

    ``contracted=False`` leaves ``n`` without its ``data_type``: the loader
    then lands any text, and the mart's cast can fail on data.
    """
    copy = project_copy(target)
    source = (
        COUNTS_SOURCE
        if contracted
        else COUNTS_SOURCE.replace("            data_type: bigint\n", "")
    )
    (copy / "models" / "staging" / "tally").mkdir()
    (copy / "models" / "staging" / "tally" / "_tally__sources.yml").write_text(source)
    (copy / "models" / "marts" / "tally").mkdir()
    (copy / "models" / "marts" / "tally" / "counts_total.sql").write_text(COUNTS_MART)
    (copy / "models" / "marts" / "tally" / "_tally__models.yml").write_text(COUNTS_MODELS)
    return copy


def started(home: Path) -> Elt:
    elt = Elt(home)
    elt.run("up")
    return elt


@pytest.fixture(scope="module")
def elt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Elt]:
    """A fresh state directory with its server up and bucket ``lake``, per test module."""
    home = tmp_path_factory.mktemp("elt_home")
    instance = started(home)
    yield instance
    local_s3.stop(home)


@pytest.fixture(scope="module")
def second(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Elt]:
    """Another state directory with a server of its own, per test module (to compare two)."""
    home = tmp_path_factory.mktemp("second_home")
    yield started(home)
    local_s3.stop(home)


# The longest modules first: a worker each (pytest-xdist, --dist loadscope)
# starts with them, and the short ones fill in, so no long module runs last alone.
LONGEST_FIRST = (
    "test_spark.py",
    "test_crash.py",
    "test_publish.py",
    "test_watch.py",
    "test_partitions.py",
    "test_faults.py",
    "test_quarantine.py",
    "test_incremental.py",
    "test_end_to_end.py",
    "test_land.py",
    "test_big_file.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order modules longest first, keeping each module's own order."""

    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)
