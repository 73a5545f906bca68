"""One typed settings object, read from ``profiles.yml``.

``profiles.yml`` is the single place where S3 is configured: each target names
its DuckDB file and, in the ``loaders.dbt_plugin`` plugin block, its bucket and
S3 endpoint. dbt reads that block through the plugin; the loader reads the same
block here, so both always talk to the same bucket with the same credentials.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml

from loaders.errors import ConfigError

PROFILE_NAME = "elt"
PLUGIN_MODULE = "loaders.dbt_plugin"
LOCAL_ENDPOINT = "local"


def project_dir(env: Mapping[str, str] | None = None) -> Path:
    """Return the project root: the folder holding ``dbt_project.yml``.

    ``ELT_PROJECT_DIR`` overrides it (tests point it at a copy of the project).
    """
    override = (os.environ if env is None else env).get("ELT_PROJECT_DIR")
    return Path(override).resolve() if override else Path(__file__).resolve().parents[1]


def resolve_home(env: Mapping[str, str] | None = None, project: Path | None = None) -> Path:
    """Return the absolute state directory: ``$ELT_HOME``, default ``<project>/.elt``."""
    env = os.environ if env is None else env
    raw = env.get("ELT_HOME") or str((project or project_dir()) / ".elt")
    return Path(raw).expanduser().resolve()


@dataclass(frozen=True)
class LakeConfig:
    """Where the lake lives: a bucket, and an S3 endpoint.

    Attributes:
        bucket: Bucket holding ``raw/<dataset>/`` uploads and ``marts/`` exports.
        endpoint: ``"local"`` for the SeaweedFS server that ``elt up`` runs
            under ``$ELT_HOME``; an ``http(s)://`` URL for another S3-compatible
            server; ``None`` for AWS S3 itself.
        region: AWS region used for signing.
    """

    bucket: str
    endpoint: str | None = LOCAL_ENDPOINT
    region: str = "us-east-1"

    @property
    def is_local(self) -> bool:
        return self.endpoint == LOCAL_ENDPOINT

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> LakeConfig:
        """Build from the plugin's ``config`` block of a ``profiles.yml`` output.

        Raises:
            ConfigError: ``bucket`` is missing or empty.
        """
        bucket = str(config.get("bucket") or "").strip()
        if not bucket:
            raise ConfigError(
                "profiles.yml: the loaders.dbt_plugin config needs a bucket "
                "(for the prod target set ELT_BUCKET)"
            )
        endpoint = config.get("endpoint")
        return cls(
            bucket=bucket,
            endpoint=str(endpoint) if endpoint else None,
            region=str(config.get("region") or "us-east-1"),
        )


@dataclass(frozen=True)
class Settings:
    """Everything the loader needs, for one dbt target.

    Attributes:
        project_dir: Root of the dbt project (``dbt_project.yml``).
        home: State directory (``$ELT_HOME``): DuckDB file, S3 server, logs.
        target: dbt target name (``dev`` or ``prod``).
        warehouse_path: The DuckDB database file dbt and the loader share.
        lake: Bucket and endpoint.
        memory_limit: DuckDB ``memory_limit`` (e.g. ``1GB``), or ``None`` for
            DuckDB's default; work beyond it spills to ``<home>/spill``.
        engine: What dbt builds the models with: ``duckdb`` (the warehouse
            file), or ``spark`` (from the raw data in the open, ``lake/``).
        write_lake: Whether the loader also writes each landed object
            version to ``lake/`` in the bucket (:mod:`loaders.lake`); always
            for the ``spark`` engine.
    """

    project_dir: Path
    home: Path
    target: str
    warehouse_path: Path
    lake: LakeConfig
    memory_limit: str | None = None
    engine: str = "duckdb"
    write_lake: bool = False

    def duckdb_config(self) -> dict[str, str]:
        """DuckDB settings every connection to the warehouse gets."""
        return duckdb_config(self.home, self.memory_limit)

    def dbt_env(self) -> dict[str, str]:
        """Environment variables that make a dbt run use these settings."""
        return {
            "ELT_HOME": str(self.home),
            "ELT_TARGET": self.target,
            "DBT_PROFILES_DIR": str(self.project_dir),
        }


# The storage format a new warehouse file is created in. DuckDB's default
# (v1.0.0+) keeps to what DuckDB 1.0 can read: text columns, for one, are
# stored with Dictionary or FSST compression, here with the newer DICT_FSST
# (`pragma storage_info` of the two). Measured one-off, writing the 256-week
# deduplicated readings (64.5M rows) took 53 s in it and 36 s in this one; a
# cold `elt run` of 32 weeks, 56 to 59 s against 46 to 50 s (README, "State
# and configuration"). The price: only DuckDB 1.5 or later opens the file. A file
# that exists keeps the format it was created in.
STORAGE_VERSION = "v1.5.0"


def duckdb_config(home: Path, memory_limit: str | None) -> dict[str, str]:
    """DuckDB settings: spill to ``<home>/spill``, the memory cap, a thread per core.

    ``memory_limit`` comes from the profile (``ELT_MEMORY_LIMIT``, 2GB by
    default); ``threads`` from ``ELT_THREADS``, else the machine's cores.
    A warehouse file these settings create is in :data:`STORAGE_VERSION`'s format.
    """
    config = {
        "temp_directory": str(home / "spill"),
        "threads": str(os.environ.get("ELT_THREADS") or os.cpu_count() or 1),
        "storage_compatibility_version": STORAGE_VERSION,
    }
    if memory_limit:
        config["memory_limit"] = memory_limit
    return config


def _render(value: Any, env: Mapping[str, str]) -> Any:
    """Render dbt's ``{{ env_var(...) }}`` in a profile value, recursively."""
    if isinstance(value, dict):
        return {k: _render(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, env) for v in value]
    if not isinstance(value, str) or "{{" not in value:
        return value

    def env_var(name: str, default: str | None = None) -> str:
        if name in env:
            return env[name]
        if default is None:
            raise ConfigError(f"profiles.yml: environment variable {name} is not set")
        return default

    return (
        jinja2.Environment(undefined=jinja2.StrictUndefined)
        .from_string(value)
        .render(env_var=env_var)
    )


def load_settings(target: str | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read ``<project>/profiles.yml`` and return the settings of one target.

    Args:
        target: Target name; default ``$ELT_TARGET``, else the profile's default.
        env: Environment to render ``env_var()`` with; default ``os.environ``.

    Raises:
        ConfigError: profiles.yml missing, unknown target, or no plugin block.
    """
    env = dict(os.environ if env is None else env)
    project = project_dir(env)
    home = resolve_home(env, project)
    env["ELT_HOME"] = str(home)
    if target:
        env["ELT_TARGET"] = target
    path = project / "profiles.yml"
    try:
        profiles = yaml.safe_load(path.read_text())
        profile = profiles[PROFILE_NAME]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: no readable '{PROFILE_NAME}' profile ({exc})") from exc
    name = str(_render(profile.get("target", "dev"), env))
    outputs = profile.get("outputs") or {}
    if name not in outputs:
        raise ConfigError(f"{path}: no target '{name}' (have: {', '.join(outputs)})")
    output = _render(outputs[name], env)
    engine = str(output.get("type") or "duckdb")
    # Another engine's output names the DuckDB output the loader lands with.
    landing = str(output.get("landing") or name) if engine != "duckdb" else name
    if landing not in outputs:
        raise ConfigError(f"{path}: target '{name}' lands with '{landing}', which is not a target")
    landed = output if landing == name else _render(outputs[landing], env)
    plugin = next(
        (p for p in landed.get("plugins") or [] if p.get("module") == PLUGIN_MODULE), None
    )
    if plugin is None:
        raise ConfigError(f"{path}: target '{landing}' has no {PLUGIN_MODULE} plugin block")
    config = plugin.get("config") or {}
    warehouse = Path(landed.get("path") or home / "warehouse.duckdb")
    return Settings(
        project_dir=project,
        home=home,
        target=name,
        warehouse_path=warehouse if warehouse.is_absolute() else (project / warehouse).resolve(),
        lake=LakeConfig.from_mapping(config),
        memory_limit=str(config.get("memory_limit") or "").strip() or None,
        engine=engine,
        write_lake=engine != "duckdb" or _true(config.get("lake")),
    )


def _true(value: Any) -> bool:
    """A profile flag: ``true``/``1``/``yes`` (any case) is on, anything else off."""
    return str(value).strip().lower() in ("true", "1", "yes")
