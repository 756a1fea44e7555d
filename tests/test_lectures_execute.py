"""Every lecture notebook runs top to bottom under papermill (fast parameters) and its checks pass."""
from __future__ import annotations

import pytest

from conftest import REPO
from utils.runner import execute

LECTURES = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", LECTURES, ids=lambda p: p.stem)
def test_lecture_executes(path, tmp_path):
    result = execute(path, tmp_path, {"device": "cpu", "seed": 0, "fast": True})
    assert result.error is None, f"{path.name} failed under papermill: {result.error} (executed copy: {result.output})"
    assert result.device == "cpu", f"{path.name} did not print its device line via utils.notebook.setup"
