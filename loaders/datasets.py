r"""Datasets the loader lands, read from the dbt source YAML (the one registry).

A dataset is a table of a dbt source whose schema is ``raw`` and whose
``meta.elt`` block describes the files, for example::

    sources:
      - name: mta
        schema: raw
        tables:
          - name: turnstile                # lands s3://<bucket>/raw/turnstile/*
            meta:
              elt:
                required_columns: [ca|c_a, unit, scp]   # "a|b": either name
                key_pattern: '\d{6}\.csv\.gz'       # optional: allowed file names
            columns:
              - name: ca                   # declared columns, as normalised names
              - name: entries
                data_type: bigint          # rows that cannot cast are quarantined
                constraints:
                  - type: not_null         # rows without a value too
              - name: date
                data_type: date
                config:
                  meta:
                    format: '%m/%d/%Y'     # the format staging parses it with

Objects under ``raw/<name>/`` land into ``raw.<name>``; other prefixes are
not datasets and are skipped with a warning. What each value must be (the
``data_type``, ``format`` and ``not_null`` of its column) is read by
:mod:`loaders.contract`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from loaders.contract import Rule, rule_of
from loaders.errors import ConfigError
from loaders.formats import SUFFIXES, format_of

# libyaml's safe loader when present: ten times faster on the models folder.
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

RAW_SCHEMA = "raw"
_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def normalise_name(header: str, position: int) -> str:
    """Normalise a CSV header cell into a column name.

    Trims, lower-cases and turns every run of non-alphanumerics into ``_``
    (``" C/A "`` -> ``c_a``). A blank header, such as the unnamed row index
    some exports add, becomes ``unnamed_<position>`` (1-based).
    """
    name = _NON_ALNUM.sub("_", header.strip().lower()).strip("_")
    return name or f"unnamed_{position}"


@dataclass(frozen=True)
class Dataset:
    """One landable dataset.

    Attributes:
        name: Dataset name: the ``raw/<name>/`` prefix and the ``raw.<name>`` table.
        source: Name of the dbt source declaring it.
        columns: Declared column names (normalised), in YAML order.
        required: Required columns; each entry lists the accepted names.
        delimiter: Field delimiter of CSV files.
        key_pattern: Regular expression a file name (the key after the prefix)
            must match in full; ``None`` allows any name with a supported suffix.
        rules: What the values of the columns that declare a ``data_type``
            (other than text) or a ``not_null`` constraint must be: a row
            breaking one is quarantined (:mod:`loaders.contract`).
    """

    name: str
    source: str
    columns: tuple[str, ...]
    required: tuple[tuple[str, ...], ...]
    delimiter: str = ","
    key_pattern: str | None = None
    rules: tuple[Rule, ...] = ()

    @property
    def prefix(self) -> str:
        return f"raw/{self.name}/"

    def refusal(self, key: str) -> str | None:
        """Why ``key`` may not be loaded into this dataset, or ``None`` if it may."""
        name = key[len(self.prefix) :]
        if not key.startswith(self.prefix) or "/" in name or not name:
            return f"{key}: refused: objects must sit directly under {self.prefix}"
        if format_of(name) is None:
            suffixes = ", ".join(suffix for suffix, _ in SUFFIXES)
            return f"{key}: refused: unsupported file type (use {suffixes})"
        if self.key_pattern and not re.fullmatch(self.key_pattern, name):
            return f"{key}: refused: file name does not match key_pattern {self.key_pattern!r}"
        return None

    def missing_columns(self, present: set[str]) -> list[str]:
        """Required entries with none of their names in ``present`` (``"a|b"`` form)."""
        return ["|".join(names) for names in self.required if not present.intersection(names)]


def _dataset(source: dict[str, Any], table: dict[str, Any], path: Path) -> Dataset:
    meta = (table.get("meta") or table.get("config", {}).get("meta") or {}).get("elt") or {}
    name = str(table["name"])
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ConfigError(f"{path}: dataset name {name!r} must be lower-case snake_case")
    required = tuple(
        tuple(normalise_name(part, 0) for part in str(entry).split("|"))
        for entry in meta.get("required_columns") or []
    )
    columns, rules = [], []
    for column in table.get("columns") or []:
        column_name = str(column["name"])
        if column_name.startswith("_"):
            continue  # lineage columns: written by the loader, documented in the YAML
        if normalise_name(column_name, 0) != column_name:
            raise ConfigError(
                f"{path}: column {column_name!r} of {name} must be written normalised "
                f"({normalise_name(column_name, 0)!r})"
            )
        columns.append(column_name)
        rule = rule_of(column, required, f"{path}: {name}")
        if rule is not None:
            rules.append(rule)
    return Dataset(
        name=name,
        source=str(source["name"]),
        columns=tuple(columns),
        required=required,
        delimiter=str(meta.get("delimiter", ",")),
        key_pattern=str(meta["key_pattern"]) if meta.get("key_pattern") else None,
        rules=tuple(rules),
    )


def discover(project: Path) -> dict[str, Dataset]:
    """All datasets declared under ``<project>/models``, keyed by name.

    Raises:
        ConfigError: a YAML file does not parse, or two sources declare one name.
    """
    found: dict[str, Dataset] = {}
    for path in sorted((project / "models").rglob("*.yml")):
        try:
            doc = yaml.load(path.read_text(), Loader=SafeLoader) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        for source in doc.get("sources") or []:
            if source.get("schema", source.get("name")) != RAW_SCHEMA:
                continue
            for table in source.get("tables") or []:
                if not (table.get("meta") or table.get("config", {}).get("meta") or {}).get("elt"):
                    continue
                dataset = _dataset(source, table, path)
                if dataset.name in found:
                    raise ConfigError(f"{path}: dataset {dataset.name!r} is declared twice")
                found[dataset.name] = dataset
    return found
