"""The pipeline's own bookkeeping around dbt, without dbt."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from loaders import pipeline
from loaders.config import Settings, load_settings
from tests.conftest import PROJECT

pytestmark = pytest.mark.unit


def test_each_project_folder_gets_back_its_own_saved_parse(tmp_path: Path) -> None:
    home = tmp_path / "home"
    main = load_settings("dev", env={"ELT_HOME": str(home), "ELT_PROJECT_DIR": str(PROJECT)})
    copy = dataclasses.replace(main, project_dir=tmp_path / "copy")
    (tmp_path / "copy").mkdir()
    saved = home / "target" / "partial_parse.msgpack"

    def parse_of(settings: Settings, made_by: str | None) -> str | None:
        """Prepare ``settings``' run; then dbt (here: this test) saves a parse made by ``made_by``."""
        pipeline._use_parse_of_this_project(settings)
        found = saved.read_text() if saved.exists() else None
        if made_by is not None:
            saved.write_text(made_by)
        return found

    # GIVEN a home whose first run parsed the main project
    assert parse_of(main, "main's parse") is None
    # WHEN a copy of the project runs THEN it does not get main's parse (it parses anew)
    assert parse_of(copy, "copy's parse") is None
    # WHEN main runs again THEN it gets its own parse back, and the copy then gets its own
    assert parse_of(main, None) == "main's parse"
    assert parse_of(copy, None) == "copy's parse"
    assert parse_of(copy, None) == "copy's parse"
    # AND only the last few folders' parses are kept
    for n in range(pipeline._KEPT_PARSES + 2):
        other = dataclasses.replace(main, project_dir=tmp_path / f"other{n}")
        assert parse_of(other, f"other {n}") is None
    assert len(list((home / "target" / "parses").glob("*.msgpack"))) == pipeline._KEPT_PARSES
    assert parse_of(main, None) is None
