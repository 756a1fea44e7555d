"""Committed notebooks: no outputs, stable cell ids, a kernelspec, and the course's parameters cell."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import REPO


def tracked_notebooks() -> list[Path]:
    files = subprocess.run(["git", "ls-files", "*.ipynb"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    on_disk = {p.relative_to(REPO).as_posix() for p in REPO.glob("notebooks/*.ipynb")} | {p.relative_to(REPO).as_posix() for p in REPO.glob("source/*/*.ipynb")}
    return sorted(REPO / f for f in set(files) | on_disk if not f.startswith("build/"))


NOTEBOOKS = tracked_notebooks()
LECTURES = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_there_are_lectures():
    assert LECTURES, "notebooks/ holds no lecture notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    dirty = [c.get("id") for c in nb["cells"] if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs or execution counts; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_stable_cell_ids_and_kernelspec(path):
    nb = json.loads(path.read_text())
    assert (nb["nbformat"], nb["nbformat_minor"]) >= (4, 5), f"{path.name}: nbformat 4.5+ is needed for cell ids"
    ids = [c.get("id") for c in nb["cells"]]
    assert all(ids), f"{path.name}: some cells have no id"
    assert len(set(ids)) == len(ids), f"{path.name}: duplicate cell ids"
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernelspec python3 missing (papermill needs it)"
    assert "language_info" in nb["metadata"], f"{path.name}: language_info missing"


@pytest.mark.parametrize("path", LECTURES, ids=lambda p: p.name)
def test_lecture_has_parameters_cell(path):
    nb = json.loads(path.read_text())
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
    src = "".join(tagged[0]["source"])
    for name in ("device = \"auto\"", "seed = 0"):
        assert name in src, f"{path.name}: the parameters cell must set {name}"
    assert ".cuda()" not in "".join("".join(c["source"]) for c in nb["cells"]), f"{path.name}: hard-coded .cuda(); use the device parameter"
