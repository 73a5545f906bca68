"""The source contract: no value a file can hold stops the pipeline.

The loader's checks (loaders/contract.py) and staging's casts
(macros/contract.sql) are both rendered from the source YAML. These tests hold
them to one promise: whatever the loader keeps, the staging SQL dbt compiles
converts without error, and whatever it refuses is quarantined naming the
column, the value and why.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loaders import contract, land, pipeline
from loaders.config import load_settings
from loaders.datasets import Dataset, discover
from loaders.errors import ConfigError
from loaders.warehouse import quote_identifier
from tests.conftest import PROJECT

TURNSTILE = discover(PROJECT)["turnstile"]
COLUMNS = ("ca", "c_a", "unit", "scp", "station", "date", "time", "desc", "entries", "exits")

# Values a hostile or broken file may hold, for each typed column.
HOSTILE = {
    "empty": None,  # an empty CSV field lands as NULL
    "spaces only": "   ",
    "day 32": "01/32/2024",
    "month 13": "13/05/2024",
    "month 0": "00/10/2024",
    "30 February": "02/30/2024",
    "29 February, not a leap year": "02/29/2023",
    "hour 24": "24:00:00",
    "hour 25, minute 61": "25:61:00",
    "minute 60": "12:60:00",
    "second 60": "23:59:60",
    "2^63": "9223372036854775808",
    "-1e3": "-1e3",
    "1e3": "1e3",
    "0x10": "0x10",
    "1_000": "1_000",
    "1.5": "1.5",
    "unicode digits": "\u0661\u0662",  # Arabic-Indic 1 and 2
    "unicode digit date": "\u0661\u0662/\u0660\u0665/\u0662\u0660\u0662\u0664",
    "1 MB of text": "x" * (1 << 20),
    "a lone quote": '"',
    "unpadded date": "1/5/2024",
    "two-digit year": "01/05/24",
    "ISO date": "2024-01-05",
    "tab": "\t7",
}
TYPED = ("date", "time", "entries", "exits")


@pytest.mark.unit
def test_the_turnstile_contract_types_every_value_staging_converts() -> None:
    # GIVEN the source YAML WHEN read THEN the four converted columns carry their rules
    rules = {r.column: r for r in TURNSTILE.rules}
    assert (rules["date"].data_type, rules["date"].format) == ("date", "%m/%d/%Y")
    assert (rules["time"].data_type, rules["time"].format) == ("time", "%H:%M:%S")
    assert {rules["entries"].data_type, rules["exits"].data_type} == {"bigint"}
    assert all(rules[c].not_null for c in ("ca", "unit", "scp", *TYPED))


@pytest.mark.unit
@pytest.mark.parametrize(
    ("column", "message"),
    [
        ({"name": "d", "data_type": "date"}, "data_type date needs a format"),
        ({"name": "d", "data_type": "struct(a int)"}, "unsupported data_type 'struct(a int)'"),
        (
            {"name": "d", "data_type": "date", "config": {"meta": {"format": "%d %b %Y"}}},
            "%b is not supported",
        ),
        (
            {"name": "d", "data_type": "bigint", "meta": {"format": "%Y"}},
            "a format needs a date, time or timestamp",
        ),
    ],
)
def test_a_contract_the_loader_cannot_check_is_refused_naming_the_column(
    column: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match="column d: ") as raised:
        contract.rule_of(column, (), "models/x.yml: t")
    assert message in str(raised.value)


@pytest.mark.unit
def test_format_becomes_a_full_width_pattern() -> None:
    assert contract.format_pattern("%m/%d/%Y") == "[0-9]{2}/[0-9]{2}/[0-9]{4}"
    assert contract.format_pattern("%H:%M:%S") == "[0-9]{2}:[0-9]{2}:[0-9]{2}"
    assert contract.format_pattern("%Y-%m-%dT%H.%M%%") == (
        "[0-9]{4}\\-[0-9]{2}\\-[0-9]{2}T[0-9]{2}\\.[0-9]{2}%"
    )


def _flagged(rules: tuple[contract.Rule, ...], rows: list[dict[str, str | None]]) -> list[tuple]:
    """(row, column, error type, value) of every row the checks refuse, in row order."""
    conn = duckdb.connect()
    names = sorted({n for r in rules for n in r.names} | {c for row in rows for c in row})
    conn.execute(f"create table t (row_id int, {', '.join(f'{n} varchar' for n in names)})")
    for i, row in enumerate(rows):
        conn.execute(
            f"insert into t values (?, {', '.join('?' for _ in names)})",
            [i, *(row.get(n) for n in names)],
        )
    first = contract.first_failure(contract.table_checks(rules))
    return conn.execute(
        f"select row_id, {first['column']}, {first['error_type']}, {first['value']} "
        f"from t where {first['any']} order by row_id"
    ).fetchall()


@pytest.mark.unit
@pytest.mark.parametrize("column", TYPED)
def test_every_hostile_value_is_refused_and_valid_ones_kept(column: str) -> None:
    # GIVEN one valid row, then one row per hostile value in the column
    valid = {
        "ca": "A002",
        "unit": "R051",
        "scp": "02-00-00",
        "date": "01/05/2024",
        "time": "23:59:59",
        "entries": "-9223372036854775808",
        "exits": " 007 ",
    }
    rows = [valid] + [{**valid, column: value} for value in HOSTILE.values()]
    # WHEN checked THEN every hostile row is refused for that column, none else
    expected = [
        (i, column, "MISSING VALUE" if value is None else "CAST ERROR", value and value[:1000])
        for i, value in enumerate(HOSTILE.values(), start=1)
    ]
    assert _flagged(TURNSTILE.rules, rows) == expected


@pytest.mark.unit
def test_either_name_of_the_control_area_satisfies_not_null() -> None:
    rows = [
        {"ca": "A002", "unit": "R", "scp": "1", "date": "01/05/2024", "time": "00:00:00"},
        {"c_a": "A002", "unit": "R", "scp": "1", "date": "01/05/2024", "time": "00:00:00"},
        {"unit": "R", "scp": "1", "date": "01/05/2024", "time": "00:00:00"},
    ]
    for row in rows:
        row.update(entries="1", exits="2")
    assert _flagged(TURNSTILE.rules, rows) == [(2, "ca", "MISSING VALUE", None)]


# --- the staging SQL dbt compiles, against the loader's checks ----------------


@pytest.fixture(scope="module")
def staging_sql(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The staging model's SQL as dbt compiles it (its casts rendered from the contract)."""
    home = tmp_path_factory.mktemp("compile_home")
    settings_ = load_settings("dev", env={"ELT_HOME": str(home), "ELT_PROJECT_DIR": str(PROJECT)})
    result = pipeline.dbt(settings_, ["compile", "--select", "stg_mta__turnstile_readings"])
    assert result.success, pipeline.failure_line(result)
    (node,) = [r.node for r in result.result.results if r.node.resource_type == "model"]
    return str(node.compiled_code)


@pytest.fixture()
def warehouse() -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory database named like the project's file, with the loader's tables."""
    conn = duckdb.connect()
    conn.execute("attach ':memory:' as warehouse")
    conn.execute("use warehouse")
    land.ensure_tables(conn, [TURNSTILE])
    yield conn
    conn.close()


def _land_and_stage(
    conn: duckdb.DuckDBPyConnection, staging_sql: str, rows: list[dict[str, str | None]]
) -> tuple[int, list[tuple]]:
    """Insert ``rows`` into raw.turnstile, drop those the contract refuses, run staging."""
    conn.execute("delete from raw.turnstile")
    quoted = ", ".join(quote_identifier(c) for c in COLUMNS)
    for i, row in enumerate(rows, start=1):
        conn.execute(
            f"insert into raw.turnstile ({quoted}, _source_row_number, _load_id, _loaded_at) "
            f"values ({', '.join('?' for _ in COLUMNS)}, ?, 'l', now())",
            [*(row.get(c) for c in COLUMNS), i],
        )
    first = contract.first_failure(contract.table_checks(TURNSTILE.rules))
    refused = conn.execute(f"delete from raw.turnstile where {first['any']}").fetchone()
    staged = conn.execute(
        f"select _source_row_number, turnstile_id, reading_at, cumulative_entries, "
        f"cumulative_exits from ({staging_sql}) order by 1"
    ).fetchall()
    return int(refused[0]) if refused else 0, staged


def _us_date(day: dt.date) -> str:
    return f"{day.month:02d}/{day.day:02d}/{day.year:04d}"


# Values shaped like the real thing, nearly so, or not at all.
NEAR_DATE = st.text(alphabet="0123456789/-+ .", max_size=12)
NEAR_NUMBER = st.text(alphabet="0123456789+-eExXbB_. \t", max_size=22)
# Any text a UTF-8 file can hold (no surrogates; no NUL, which DuckDB strings refuse).
ANY_TEXT = st.text(
    alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30
)
# The right shape, any numbers in it: 02/30/2024, 13/01/2024, 24:00:00, 23:59:60.
SHAPED_DATE = st.builds(
    "{:02d}/{:02d}/{:04d}".format,
    st.integers(0, 99),
    st.integers(0, 99),
    st.integers(0, 9999),
)
SHAPED_TIME = st.builds(
    "{:02d}:{:02d}:{:02d}".format, st.integers(0, 99), st.integers(0, 99), st.integers(0, 99)
)
DATES = st.one_of(
    st.dates(min_value=dt.date(1, 1, 1), max_value=dt.date(9999, 12, 31)).map(_us_date),
    SHAPED_DATE,
    NEAR_DATE,
    ANY_TEXT,
    st.none(),
)
TIMES = st.one_of(
    st.times().map(lambda t: t.strftime("%H:%M:%S")), SHAPED_TIME, NEAR_DATE, ANY_TEXT
)
COUNTERS = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(str),
    st.integers(min_value=-(2**65), max_value=2**65).map(str),
    NEAR_NUMBER,
    ANY_TEXT,
    st.none(),
)
ROWS = st.lists(
    st.fixed_dictionaries(
        {
            "ca": st.one_of(st.none(), ANY_TEXT),
            "c_a": st.one_of(st.none(), ANY_TEXT),
            "unit": st.one_of(st.none(), ANY_TEXT),
            "scp": st.one_of(st.none(), ANY_TEXT),
            "station": ANY_TEXT,
            "date": DATES,
            "time": TIMES,
            "desc": st.sampled_from(["REGULAR", "RECOVR AUD", "", "x"]),
            "entries": COUNTERS,
            "exits": COUNTERS,
        }
    ),
    min_size=1,
    max_size=8,
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=ROWS)
def test_whatever_the_loader_keeps_staging_converts(
    warehouse: duckdb.DuckDBPyConnection, staging_sql: str, rows: list[dict[str, str | None]]
) -> None:
    # GIVEN random rows WHEN the loader's checks drop what they refuse
    refused, staged = _land_and_stage(warehouse, staging_sql, rows)
    # THEN staging converts every kept row (it raised otherwise), with every
    # contracted value present, and keeps exactly the rows not refused
    assert refused + len(staged) == len(rows)
    for _, turnstile_id, reading_at, entries, exits in staged:
        assert None not in (turnstile_id, reading_at, entries, exits)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    day=st.dates(min_value=dt.date(1, 1, 1), max_value=dt.date(9999, 12, 31)),
    moment=st.times(),
    entries=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    exits=st.integers(min_value=0, max_value=2**63 - 1),
    pad=st.sampled_from(["", " ", "  "]),
)
def test_every_valid_value_is_kept_and_converts_to_itself(
    warehouse: duckdb.DuckDBPyConnection,
    staging_sql: str,
    day: dt.date,
    moment: dt.time,
    entries: int,
    exits: int,
    pad: str,
) -> None:
    # GIVEN a valid value in every column, padded as files pad them, exits
    # with a leading zero WHEN landed and staged THEN each is kept, as itself
    row = {
        "ca": "A002",
        "unit": "R051",
        "scp": "02-00-00",
        "date": pad + _us_date(day) + pad,
        "time": moment.strftime("%H:%M:%S") + pad,
        "entries": pad + str(entries),
        "exits": f"0{exits}",
    }
    refused, staged = _land_and_stage(warehouse, staging_sql, [row])
    assert refused == 0
    (_, _, reading_at, cumulative_entries, cumulative_exits), *_ = staged
    assert reading_at == dt.datetime.combine(day, moment.replace(microsecond=0))
    assert (cumulative_entries, cumulative_exits) == (entries, exits)


@pytest.mark.unit
def test_a_dataset_without_rules_has_no_checks() -> None:
    plain = Dataset(name="plain", source="s", columns=("a",), required=())
    assert contract.table_checks(plain.rules) == []
    assert contract.first_failure([])["any"] == "false"


@pytest.mark.unit
def test_unit_test_contract_lookup_reads_the_same_yaml(tmp_path: Path) -> None:
    registry = discover(PROJECT)
    assert contract.column_contract(registry, "mta", "turnstile", "date") == {
        "data_type": "date",
        "format": "%m/%d/%Y",
    }
    assert contract.column_contract(registry, "mta", "turnstile", "station") == {
        "data_type": "varchar",
        "format": None,
    }
    with pytest.raises(ConfigError, match="declares no column 'nope'"):
        contract.column_contract(registry, "mta", "turnstile", "nope")
