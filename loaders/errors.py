"""The one exception family of the loader.

The CLI turns every ``EltError`` into a single line on stderr and a non-zero
exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class EltError(Exception):
    """Base class for errors a user can act on."""

    exit_code = 1


class ConfigError(EltError):
    """The profile, target or state directory is missing or malformed."""

    exit_code = 2


class ServerError(EltError):
    """The local S3 server could not be started, reached or stopped."""


class StorageError(EltError):
    """An S3 request failed (bucket missing, access denied, endpoint down)."""


class LoadError(EltError):
    """An object could not be landed into the ``raw`` schema."""


class WarehouseError(EltError):
    """The DuckDB file cannot be opened: its write-ahead log does not replay, or it is damaged."""


class BusyError(EltError):
    """Another process holds the warehouse or the state directory."""

    exit_code = 75  # EX_TEMPFAIL: try again later.


class StepError(EltError):
    """A pipeline step (load, dbt build, export) failed; ``step`` names it.

    ``reasons`` holds one line per failure (one per failed object for ``load``);
    ``notes`` are further lines said as they are (what still succeeded).
    """

    def __init__(self, step: str, *reasons: str, notes: tuple[str, ...] = ()) -> None:
        lines = [f"{step} failed: {reason}" for reason in reasons]
        super().__init__("\n".join([*lines, *notes]))
        self.step = step
        self.reasons = reasons
        self.notes = notes
