"""`make lab` opens JupyterLab with nbgrader's extensions: check they are installed and enabled."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def _run(*args: str) -> str:
    proc = subprocess.run([str(BIN / "jupyter"), *args], capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"}, timeout=120)
    return proc.stdout + proc.stderr


def test_nbgrader_lab_extension_enabled():
    out = _run("labextension", "list")
    line = next((l for l in out.splitlines() if "@jupyter/nbgrader" in l), "")
    assert "enabled" in line and "OK" in line, f"nbgrader's JupyterLab extension is not enabled:\n{out}"


def test_nbgrader_server_extensions_enabled():
    out = _run("server", "extension", "list")
    for ext in ("nbgrader.server_extensions.formgrader", "nbgrader.server_extensions.validate_assignment"):
        assert any(ext in l and "enabled" in l for l in out.splitlines()), f"{ext} not enabled:\n{out}"
