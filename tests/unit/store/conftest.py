"""An upgraded SQLite database per test, for the stores built over it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from welip.store import Database


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path}/w.db")
    db.upgrade()
    yield db
    db.dispose()
