"""Shared test set-up: keep Jupyter, IPython and matplotlib out of $HOME, and find the repo."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_STATE = REPO / "build" / "test-state"
for var, sub in {
    "JUPYTER_CONFIG_DIR": "jupyter/config",
    "JUPYTER_DATA_DIR": "jupyter/data",
    "JUPYTER_RUNTIME_DIR": "jupyter/runtime",
    "IPYTHONDIR": "ipython",
    "MPLCONFIGDIR": "matplotlib",
}.items():
    os.environ.setdefault(var, str(_STATE / sub))
    Path(os.environ[var]).mkdir(parents=True, exist_ok=True)

# nbgrader runs `alembic` (and papermill `jupyter`) from PATH: the venv's own first.
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
