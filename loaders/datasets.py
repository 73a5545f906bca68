"""Datasets the loader lands, read from the dbt source YAML (the one registry).

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
            columns:
              - name: ca                   # declared columns, as normalised names

Objects under ``raw/<name>/`` land into ``raw.<name>``; other prefixes are
not datasets and are skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from loaders.errors import ConfigError

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
        delimiter: Field delimiter of the files.
    """

    name: str
    source: str
    columns: tuple[str, ...]
    required: tuple[tuple[str, ...], ...]
    delimiter: str = ","

    @property
    def prefix(self) -> str:
        return f"raw/{self.name}/"

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
    columns = []
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
    return Dataset(
        name=name,
        source=str(source["name"]),
        columns=tuple(columns),
        required=required,
        delimiter=str(meta.get("delimiter", ",")),
    )


def discover(project: Path) -> dict[str, Dataset]:
    """All datasets declared under ``<project>/models``, keyed by name.

    Raises:
        ConfigError: a YAML file does not parse, or two sources declare one name.
    """
    found: dict[str, Dataset] = {}
    for path in sorted((project / "models").rglob("*.yml")):
        try:
            doc = yaml.safe_load(path.read_text()) or {}
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
