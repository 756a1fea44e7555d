"""The course runner executes a notebook with papermill, reads back the device, and reports errors."""
from __future__ import annotations

import nbformat
import pytest

from utils import runner


def _notebook(path, body: str):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    params = nbformat.v4.new_code_cell('device = "auto"\nseed = 0')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("from utils.notebook import setup\ndevice = setup(device, seed)"), nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_runner_reports_device_and_failures(tmp_path, capsys):
    good = _notebook(tmp_path / "good.ipynb", "import os\nfrom utils.claims import record\nrecord('capability', os.environ.get('ATEN_CPU_CAPABILITY'))")
    bad = _notebook(tmp_path / "bad.ipynb", "raise ValueError('boom from the notebook')")
    code = runner.main([str(good), str(bad), "--out", str(tmp_path / "out"), "--device", "cpu", "--cpu-capability", "default"])
    out = capsys.readouterr().out
    assert code == 1
    assert "good" in out and "device=cpu" in out
    assert "FAILED" in out and "boom from the notebook" in out
    assert (tmp_path / "out" / "good.ipynb").exists()
    assert "1 failed" in out
    from utils.claims import load
    claims = load(tmp_path / "out" / "good.claims.json")
    assert claims["capability"] == "default", "--cpu-capability reaches the kernel's environment"
    assert claims["environment"]["cpu_capability"] == "DEFAULT" and claims["environment"]["device"] == "cpu"
