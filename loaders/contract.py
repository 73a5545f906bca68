"""What a landed value must be: the source contract, and the row checks the loader derives from it.

The source YAML (``models/staging/<source>/_<source>__sources.yml``) declares,
for every column staging converts, its ``data_type`` and, for dates, times
and timestamps, its ``format``; a ``not_null`` constraint says a row must
have a value::

    columns:
      - name: date
        data_type: date
        config:
          meta:
            format: '%m/%d/%Y'
        constraints:
          - type: not_null

Staging renders its casts from the same declaration (``cast_source_column()``
in ``macros/contract.sql``): ``cast(v as <data_type>)`` for a number (the
cast skips the spaces around it), ``cast(trim(v) as boolean)``, or
``strptime(trim(v), <format>)`` cast to the type. The loader renders, here, a
check per column that is true exactly when that cast would fail or the value
is missing, and quarantines such rows before dbt ever sees them. A value
passes when, after trimming spaces:

- integers (``bigint``, ``integer``, ...): an optional sign and ASCII digits,
  within the type's range (DuckDB's cast alone also takes ``1e3``, ``0x10``,
  ``1_000`` and rounds ``1.5``; other engines do not);
- ``decimal(p, s)``/``numeric``: plain decimal notation, within precision;
- ``double``/``float``/``real``: decimal notation with an optional exponent;
- ``boolean``: ``true`` or ``false``, in any case;
- ``date``/``time``/``timestamp``: the ``format`` exactly, every field at its
  full width (``%m`` two digits, ``%Y`` four), and a real calendar value
  (no 30 February, no hour 24, no second 60).

A ``not_null`` column that is part of a ``required_columns`` entry such as
``ca|c_a`` is satisfied by a value in any of those names (staging coalesces
them).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from loaders.errors import ConfigError
from loaders.warehouse import quote_identifier, sql_literal

TEXT_TYPES = frozenset({"varchar", "text", "string"})
INTEGER_TYPES = frozenset(
    {"tinyint", "smallint", "integer", "int", "bigint", "hugeint", "int1", "int2", "int4", "int8"}
)
FLOAT_TYPES = frozenset({"double", "float", "real", "float4", "float8"})
BOOLEAN_TYPES = frozenset({"boolean", "bool"})
TEMPORAL_TYPES = frozenset({"date", "time", "timestamp"})
_DECIMAL = re.compile(r"(decimal|numeric)(\(\s*\d+\s*(,\s*\d+\s*)?\))?")
# strptime directives a format may use, and the digits each must be written with.
FORMAT_DIGITS = {"Y": 4, "m": 2, "d": 2, "H": 2, "M": 2, "S": 2}

MISSING = "MISSING VALUE"
CAST_ERROR = "CAST ERROR"
# Characters of a value quoted in a reject's message; elt.rejects.value keeps more.
PREVIEW_CHARS = 80
VALUE_CHARS = 1000

_INTEGER = r"[+-]?[0-9]+"
_DECIMAL_TEXT = r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)"
_FLOAT_TEXT = _DECIMAL_TEXT + r"([eE][+-]?[0-9]+)?"


@dataclass(frozen=True)
class Rule:
    """What one source column's value must be.

    Attributes:
        column: Normalised column name, as declared.
        data_type: The declared type (lower case), or ``None`` for text.
        format: strptime format of a date, time or timestamp, else ``None``.
        not_null: Whether a row must have a value.
        names: The columns that may hold the value: ``(column,)``, or every
            name of its ``required_columns`` entry (``ca|c_a``).
    """

    column: str
    data_type: str | None
    format: str | None
    not_null: bool
    names: tuple[str, ...]

    @property
    def expected(self) -> str:
        """What the value should have been, for a reject's message."""
        if self.format:
            return f"a {self.data_type} in the format {self.format}"
        return f"a {self.data_type}"


@dataclass(frozen=True)
class Check:
    """SQL of one rule over a row.

    Attributes:
        test: True when the row breaks the rule.
        column: SQL literal of the column's name.
        error_type: ``MISSING VALUE`` or ``CAST ERROR``.
        message: SQL of the reject's message (the value quoted, shortened).
        value: SQL of the offending value (at most ``VALUE_CHARS`` characters).
    """

    test: str
    column: str
    error_type: str
    message: str
    value: str


def rule_of(
    column: Mapping[str, Any], required: tuple[tuple[str, ...], ...], where: str
) -> Rule | None:
    """The rule a source YAML column declares, or ``None`` when it declares none.

    Args:
        column: The column's YAML mapping (``name``, ``data_type``,
            ``config.meta.format`` or ``meta.format``, ``constraints``).
        required: The table's ``required_columns`` entries (for ``a|b`` names).
        where: File and table, for error messages.

    Raises:
        ConfigError: an unsupported ``data_type``, a date/time without a
            ``format``, a format on a non-temporal column, or a format using a
            directive other than ``%Y %m %d %H %M %S``.
    """
    name = str(column["name"])
    data_type: str | None = str(column.get("data_type") or "varchar").strip().lower()
    meta = {**(column.get("meta") or {}), **((column.get("config") or {}).get("meta") or {})}
    fmt = meta.get("format")
    constraints = column.get("constraints") or []
    not_null = any(str((c or {}).get("type", "")).lower() == "not_null" for c in constraints)
    if data_type in TEXT_TYPES:
        data_type = None
    elif not _supported(data_type):
        raise ConfigError(
            f"{where}: column {name}: unsupported data_type {data_type!r} (use a text, integer, "
            "decimal, double, boolean, date, time or timestamp type)"
        )
    if data_type in TEMPORAL_TYPES and not fmt:
        raise ConfigError(
            f"{where}: column {name}: data_type {data_type} needs a format "
            "(config: meta: format: '%m/%d/%Y')"
        )
    if fmt is not None:
        if data_type not in TEMPORAL_TYPES:
            raise ConfigError(f"{where}: column {name}: a format needs a date, time or timestamp")
        format_pattern(str(fmt), f"{where}: column {name}")
    if data_type is None and not not_null:
        return None
    names = next((entry for entry in required if name in entry), (name,))
    return Rule(name, data_type, str(fmt) if fmt else None, not_null, names)


def _supported(data_type: str | None) -> bool:
    return bool(
        data_type in INTEGER_TYPES | FLOAT_TYPES | BOOLEAN_TYPES | TEMPORAL_TYPES
        or (data_type and _DECIMAL.fullmatch(data_type))
    )


def format_pattern(fmt: str, where: str = "format") -> str:
    """A regular expression matching exactly the text ``fmt`` writes, every field at full width.

    ``'%m/%d/%Y'`` -> ``'[0-9]{2}/[0-9]{2}/[0-9]{4}'``.

    Raises:
        ConfigError: a directive other than ``%Y %m %d %H %M %S`` (or ``%%``).
    """
    parts, i = [], 0
    while i < len(fmt):
        if fmt[i] != "%":
            parts.append(re.escape(fmt[i]))
            i += 1
            continue
        directive = fmt[i + 1 : i + 2]
        if directive == "%":
            parts.append("%")
        elif directive in FORMAT_DIGITS:
            parts.append(f"[0-9]{{{FORMAT_DIGITS[directive]}}}")
        else:
            raise ConfigError(
                f"{where}: format {fmt!r}: %{directive} is not supported "
                "(use %Y %m %d %H %M %S and literal characters)"
            )
        i += 2
    return "".join(parts)


def _invalid(rule: Rule, value: str) -> str:
    """SQL, true when the (non-null) ``value`` does not convert as staging converts it."""
    data_type = rule.data_type
    assert data_type is not None

    def shaped(pattern: str) -> str:
        # Staging trims spaces (only spaces) before it converts.
        return f"regexp_full_match({value}, {sql_literal(f' *(?:{pattern}) *')})"

    if rule.format:
        parsed = f"try_strptime({value}, {sql_literal(rule.format)})"
        return f"not ({shaped(format_pattern(rule.format))} and {parsed} is not null)"
    if data_type in BOOLEAN_TYPES:
        return (
            f"not ({shaped('(?i:true|false)')} and try_cast(trim({value}) as boolean) is not null)"
        )
    cast = f"try_cast({value} as {data_type})"
    if data_type in INTEGER_TYPES:
        # Most values are written as DuckDB writes them back (no sign, padding
        # or leading zero): that cheap test implies the pattern, which then
        # runs only for the other values (a regular expression costs more than
        # a cast). "is not true": a value that does not cast compares as null.
        canonical = f"cast({cast} as varchar) = {value}"
        return f"({canonical}) is not true and not ({shaped(_INTEGER)} and {cast} is not null)"
    text = _DECIMAL_TEXT if _DECIMAL.fullmatch(data_type) else _FLOAT_TEXT
    return f"not ({shaped(text)} and {cast} is not null)"


def checks(rules: tuple[Rule, ...], expression: Callable[[str], str | None]) -> list[Check]:
    """The SQL checks of ``rules`` over a row.

    Args:
        rules: The dataset's rules (:attr:`loaders.datasets.Dataset.rules`).
        expression: SQL of a column's value in the row (``quote_identifier``
            for a table's column), or ``None`` for a column the rows lack.

    Returns:
        One check per rule that applies: a conversion check where the
        column is present, a missing-value check for every ``not_null`` rule
        (a row lacking all its names has no value).
    """
    found = []
    for rule in rules:
        present = [e for e in map(expression, rule.names) if e is not None]
        value = (
            "null"
            if not present
            else present[0]
            if len(present) == 1
            else f"coalesce({', '.join(present)})"
        )
        label = sql_literal(rule.column)
        if rule.not_null:
            found.append(
                Check(
                    test=f"{value} is null",
                    column=label,
                    error_type=MISSING,
                    message=sql_literal(f"column {rule.column}: no value (the contract: not_null)"),
                    value="null",
                )
            )
        if rule.data_type is not None and present:
            preview = (
                f"case when length({value}) > {PREVIEW_CHARS} "
                f"then left({value}, {PREVIEW_CHARS}) || '...' else {value} end"
            )
            message = (
                f"{sql_literal(f'column {rule.column}: ')} || '''' || {preview} || "
                f"{sql_literal(f''' is not {rule.expected}''')}"
            )
            found.append(
                Check(
                    test=f"({value} is not null and {_invalid(rule, value)})",
                    column=label,
                    error_type=CAST_ERROR,
                    message=message,
                    value=f"left({value}, {VALUE_CHARS})",
                )
            )
    return found


def table_checks(rules: tuple[Rule, ...]) -> list[Check]:
    """:func:`checks` over a ``raw.<dataset>`` table's own columns."""
    return checks(rules, quote_identifier)


def first_failure(found: list[Check]) -> dict[str, str]:
    """SQL of the first failing check's column, error type, message and value, and of any failure.

    Returns:
        ``{"column", "error_type", "message", "value", "any"}``, each a SQL expression
        (``any`` is true when some check fails).
    """

    def first(part: Callable[[Check], str]) -> str:
        return "case " + " ".join(f"when {c.test} then {part(c)}" for c in found) + " end"

    return {
        "column": first(lambda c: c.column),
        "error_type": first(lambda c: sql_literal(c.error_type)),
        "message": first(lambda c: c.message),
        "value": first(lambda c: c.value),
        "any": " or ".join(c.test for c in found) or "false",
    }


def fingerprint(rules: tuple[Rule, ...]) -> str:
    """A stable text of ``rules``: when it changes, landed rows are checked again."""
    return ";".join(
        f"{r.column}:{r.data_type or 'text'}:{r.format or ''}:"
        f"{'not_null' if r.not_null else ''}:{'|'.join(r.names)}"
        for r in sorted(rules, key=lambda r: r.column)
    )


def column_contract(
    datasets: Mapping[str, Any], source: str, table: str, column: str
) -> dict[str, str | None]:
    """A source column's ``data_type`` and ``format``, as ``cast_source_column()`` reads them.

    Args:
        datasets: The registry, :func:`loaders.datasets.discover`.
        source: dbt source name (``mta``); ``table``: its table (``turnstile``).
        column: The column's name as declared.

    Raises:
        ConfigError: no such dataset, or it declares no such column.
    """
    dataset = next((d for d in datasets.values() if d.source == source and d.name == table), None)
    if dataset is None or column not in dataset.columns:
        raise ConfigError(f"source {source}.{table} declares no column {column!r}")
    rule = next((r for r in dataset.rules if r.column == column), None)
    return {
        "data_type": rule.data_type if rule and rule.data_type else "varchar",
        "format": rule.format if rule else None,
    }
