"""Scaled inputs from the real weeks: whole weeks shifted forward in time.

Week ``k`` (0-based) of a series is a real weekly file with every ``DATE``
moved ``7 * k * len(real weeks)`` days on, written in the source's own format
(its header line as is, gzip), so the loader sees what the MTA would send.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
from datetime import date, timedelta
from pathlib import Path

import duckdb


def shift_week(source: Path, days: int, target: Path) -> Path:
    """Write ``source`` (a gzipped weekly CSV) with every DATE moved ``days`` on.

    The file is named after its new week-ending date, ``YYMMDD.csv.gz``, like
    the MTA's (the name of ``source`` plus ``days``), inside ``target`` (a folder).

    Returns:
        The path written.
    """
    ending = date(2000 + int(source.name[:2]), int(source.name[2:4]), int(source.name[4:6]))
    path = target / f"{(ending + timedelta(days=days)):%y%m%d}.csv.gz"
    if path.exists():  # made by an earlier run: the same inputs give the same bytes
        return path
    with gzip.open(source, "rt", newline="") as fh:
        header = fh.readline()
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "body.csv"
        with duckdb.connect() as conn:
            conn.execute(
                f"""
                copy (
                    select * replace (
                        strftime(
                            strptime("DATE", '%m/%d/%Y') + interval ({int(days)}) day, '%m/%d/%Y'
                        ) as "DATE"
                    )
                    from read_csv(?, header = true, all_varchar = true)
                ) to '{body}' (format csv, header false)
                """,
                [str(source)],
            )
        partial = path.with_name(path.name + ".partial")
        with open(body, "rb") as src, gzip.open(partial, "wb", compresslevel=1) as out:
            out.write(header.encode())
            shutil.copyfileobj(src, out, 2**20)
        partial.replace(path)  # whole or absent: a killed run leaves no half file
    return path


def series(sources: list[Path], count: int, target: Path) -> list[Path]:
    """``count`` consecutive weeks: the real ones, then shifted copies of them.

    Returns:
        Paths in week order (oldest first), all inside ``target``.
    """
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        source = sources[k % len(sources)]
        shift = 7 * len(sources) * (k // len(sources))
        if shift == 0:
            paths.append(Path(shutil.copy(source, target / source.name)))
        else:
            paths.append(shift_week(source, shift, target))
    return paths
