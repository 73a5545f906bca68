"""``bench/statements.py`` reads per-statement times out of dbt's debug log."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.statements import Statement, statements

pytestmark = pytest.mark.unit

# Lines as dbt 1.11 writes them at --log-level-file debug (two threads interleaved).
LOG = """\
14:08:56.864469 [debug] [Thread-2 (]: On model.p.intervals: /* {"app": "dbt"} */
  create temporary table "t" as (
    select 1
  )
14:08:56.870000 [debug] [Thread-1 (]: On model.p.daily: /* {"app": "dbt"} */ select 2
14:08:56.900000 [debug] [Thread-1 (]: SQL status: OK in 0.030 seconds
14:08:57.470000 [debug] [Thread-2 (]: SQL status: OK in 0.606 seconds
14:08:57.480000 [debug] [Thread-2 (]: SQL status: OK in 0.001 seconds
"""


def test_each_status_is_paired_with_the_statement_of_its_thread(tmp_path: Path) -> None:
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
