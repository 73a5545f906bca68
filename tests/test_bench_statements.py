"""``bench/statements.py`` reads per-statement times out of dbt's debug log."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.statements import Statement, statements

pytestmark = pytest.mark.unit

# Lines as dbt 1.11 writes them at --log-level-file debug: two invocations (dbt
# appends), the second with two threads interleaved.
LOG = """\
14:01:00.000000 [info ] [MainThread]: Running with dbt=1.11.16
14:01:00.100000 [debug] [Thread-1 (]: On model.p.earlier: select 0
14:01:00.200000 [debug] [Thread-1 (]: SQL status: OK in 0.100 seconds
14:08:56.000000 [info ] [MainThread]: Running with dbt=1.11.16
14:08:56.864469 [debug] [Thread-2 (]: On model.p.intervals: /* {"app": "dbt"} */
  create temporary table "t" as (
    select 1
  )
14:08:56.870000 [debug] [Thread-1 (]: On model.p.daily: /* {"app": "dbt"} */ select 2
14:08:56.900000 [debug] [Thread-1 (]: SQL status: OK in 0.030 seconds
14:08:57.470000 [debug] [Thread-2 (]: SQL status: OK in 0.606 seconds
14:08:57.480000 [debug] [Thread-2 (]: SQL status: OK in 0.001 seconds
"""


def test_each_status_of_the_last_invocation_is_paired_with_its_threads_statement(
    tmp_path: Path,
) -> None:
    log = tmp_path / "dbt.log"
    log.write_text(LOG)
    assert statements(log) == [
        Statement("model.p.daily", 0.030, '/* {"app": "dbt"} */ select 2'),
        Statement(
            "model.p.intervals",
            0.606,
            '/* {"app": "dbt"} */ create temporary table "t" as ( select 1 )',
        ),
    ]
