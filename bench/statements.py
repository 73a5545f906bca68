"""The slowest SQL statements of one dbt invocation, from its debug log.

dbt's file log (``$ELT_HOME/logs/dbt.log`` at ``--log-level-file debug``, the
level ``elt run`` writes) gives each statement as ``On <node>: <sql>`` and its
time as ``SQL status: ... in <seconds> seconds`` on the same thread. ``make
bench`` keeps the steady run's log as ``bench/data/dbt-steady-<weeks>.log``.

    .venv/bin/python -m bench.statements bench/data/dbt-steady-256.log --top 10
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

# "12:00:01.123456 [debug] [Thread-1 (]: On model.elt.x: /* {...} */ create ..."
_LINE = re.compile(r"^\S+\s+\[\w+\s*\]\s+\[(?P<thread>[^\]]*)\]: (?P<text>.*)$")
_STATEMENT = re.compile(r"^On (?P<node>[\w.]+): (?P<sql>.*)$")
_INVOCATION = "]: Running with dbt="
_STATUS = re.compile(r"^SQL status: .* in (?P<seconds>[0-9.]+) seconds$")


@dataclass(frozen=True)
class Statement:
    """One statement dbt ran: its node, seconds, and its SQL's first words."""

    node: str
    seconds: float
    sql: str


def statements(log: Path) -> list[Statement]:
    """Every timed statement of the last dbt invocation in ``log`` (a dbt debug
    log, which dbt appends to), in the order they ended.

    Returns:
        One :class:`Statement` per ``SQL status`` line that follows an ``On
        <node>:`` line of the same thread; SQL squeezed to one line.
    """
    lines = log.read_text(errors="replace").splitlines()
    starts = [i for i, raw in enumerate(lines) if _INVOCATION in raw]
    started: dict[str, tuple[str, list[str]]] = {}
    found: list[Statement] = []
    current: list[str] | None = None
    for raw in lines[starts[-1] if starts else 0 :]:
        line = _LINE.match(raw)
        if line is None:
            if current is not None:  # a statement's SQL continues over lines
                current.append(raw)
            continue
        current = None
        thread, text = line["thread"], line["text"]
        if statement := _STATEMENT.match(text):
            current = [statement["sql"]]
            started[thread] = (statement["node"], current)
        elif (status := _STATUS.match(text)) and thread in started:
            node, sql = started.pop(thread)
            squeezed = " ".join(" ".join(sql).split())
            found.append(Statement(node, float(status["seconds"]), squeezed))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--width", type=int, default=90, help="characters of SQL shown")
    args = parser.parse_args()
    found = statements(args.log)
    total = sum(s.seconds for s in found)
    print(f"{len(found)} statements, {total:.2f} s in all")
    for s in sorted(found, key=lambda s: s.seconds, reverse=True)[: args.top]:
        sql = re.sub(r"^/\*.*?\*/\s*", "", s.sql)  # dbt's query comment
        print(f"{s.seconds:8.3f} s  {s.node}  {sql[: args.width]}")


if __name__ == "__main__":
    main()
