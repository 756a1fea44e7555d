"""The verdict's defences, unit by unit (fast): bounded decoding, questions without hidden source,
the static policy, which cells the probe kernel runs, and a real probe kernel answering."""
from __future__ import annotations

import base64
import io
import time
import zipfile
from pathlib import Path

import nbformat
import pytest
import torch

from autograder import kernels, notebook, probe, sandbox, static, verifier

REPO = Path(__file__).resolve().parents[1]


def _saved(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _reply(raw: bytes) -> dict:
    text = repr(base64.b64encode(raw).decode())
    return {"status": "ok", "user_expressions": {"answer": {"status": "ok", "data": {"text/plain": text}}}}


# ----------------------------------------------------------------------------- bounded decoding

def test_load_bounded_reads_plain_data():
    results, note = probe.decode(_reply(_saved({"0": {"value": torch.ones(3)}})))
    assert note is None and torch.equal(results["0"]["value"], torch.ones(3))


def test_load_bounded_refuses_an_expanded_view_before_cloning():
    forged = _saved({"0": {"value": torch.zeros(1).expand(2**31)}})
    assert len(forged) < 4096
    results, note = probe.decode(_reply(forged))
    assert results == {} and "storage" in note


def test_load_bounded_refuses_compressed_archives_and_pickles():
    raw = _saved({"0": {"value": torch.zeros(1000)}})
    bomb = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
    assert "declares more" in probe.decode(_reply(bomb.getvalue()))[1]
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    assert "not a torch archive" in probe.decode(_reply(pickle.dumps(Evil())))[1]


def test_load_bounded_limits_totals_depth_and_strings():
    many = _saved({"0": {"value": [torch.zeros(1 << 20)] * 20}})  # one storage, 20 views of 4 MB
    assert "too large" in probe.decode(_reply(many))[1]
    deep: list = []
    for _ in range(probe.MAX_DEPTH + 2):
        deep = [deep]
    assert "deeply" in probe.decode(_reply(_saved({"0": {"value": deep}})))[1]
    assert "too long" in probe.decode(_reply(_saved({"0": {"msg": "x" * (probe.MAX_STRING + 1)}})))[1]


def test_answer_must_be_the_probes_encoding():
    assert "encoding" in probe.decode({"user_expressions": {"answer": {"status": "ok",
                                                                       "data": {"text/plain": "[1, 2]"}}}})[1]
    assert "could not run" in probe.decode({"user_expressions": {"answer": {"status": "error", "ename": "NameError"}}})[1]
    assert probe.decode(None)[0] == {}


# ----------------------------------------------------------------------------- questions only

@pytest.fixture(scope="module", params=["ps1_smoothing", "ps2_losses"])
def plan(request):
    name = request.param
    return verifier.record(verifier.SourceAssignment(name, REPO / "source" / name / f"{name}.ipynb"))


def test_questions_carry_no_hidden_source(plan, tmp_path):
    plan.save(tmp_path / "plan.pt")
    blob = b"".join(p.read_bytes() for p in (tmp_path / "plan.pt.d").iterdir())
    for test in plan.assignment.tests:
        hidden = test.source.split("### BEGIN HIDDEN TESTS", 1)[-1]
        for line in hidden.splitlines():
            line = line.strip()
            if line.startswith(("def ", "return ", "raise ", "assert ")) and len(line) > 12:
                assert line.encode() not in blob, (test.grade_id, line)
    assert b"_reference_one_hot" not in blob and b"_reference_lsce" not in blob and b"def " not in blob


def test_helper_tables_answer_like_the_helper(plan):
    tables = [t for test in plan.tests.values() for t in test["tables"].values()]
    if plan.assignment.name == "ps1_smoothing":
        calls = [c for t in tables for c in t["calls"]]
        assert calls and all(set(args) == {"targets", "num_classes"} for args, _ in calls)
        args, outcome = next(c for c in calls if "value" in c[1])
        assert torch.equal(outcome["value"], torch.nn.functional.one_hot(args["targets"].long(), args["num_classes"]).float())


# ----------------------------------------------------------------------------- static policy

GOOD = "import torch\nimport torch.nn.functional as F\ndef lsce(z, y):\n    return -(F.log_softmax(z, 1).gather(1, y[:, None])).mean()\n"


@pytest.mark.parametrize("extra, problem", [
    ("import functools\n_c = functools.reduce(getattr, ['cross_' + 'entropy'], F)", "as a value"),
    ("_c = get_ipython().ev('F.cross_entropy')", "get_ipython"),
    ("get_ipython().run_cell('x = 1')", "get_ipython"),
    ("import helper_ce", "import helper_ce"),
    ("t = torch.overrides.get_overridable_functions()", "torch.overrides"),
    ("t = torch.ops.aten", "torch.ops"),
    ("t = torch._C._nn", "private"),
    ("import torch._refs", "torch._refs"),
    ("from torch import _decomp", "_decomp"),
    ("import sys", "import sys"),
    ("t = __import__('torch')", "__import__"),
    ("%time exec('x = 1')", "exec"),
    ("x = ().__class__.__base__.__subclasses__()", "__subclasses__"),
])
def test_static_policy_refuses_dynamic_access(extra, problem):
    found = static.builtin_loss_violation([GOOD, extra], "lsce", ["import torch.nn.functional as F"])
    assert found is not None and problem in found, found


@pytest.mark.parametrize("extra", [
    "%time x = 1",
    "class M(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n        self._eps = 0.1",
    "import math, random, numpy as np",
    "class G(torch.autograd.Function):\n    @staticmethod\n    def forward(ctx, x):\n        return x",
    "print(F.cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1])))",
])
def test_static_policy_accepts_ordinary_code(extra):
    assert static.builtin_loss_violation([GOOD, extra], "lsce", ["import torch.nn.functional as F"]) is None


def test_student_cells_keep_cells_tagged_like_probes():
    nb = nbformat.v4.new_notebook()
    answer = nbformat.v4.new_code_cell("def f():\n    return 1")
    answer.metadata["nbgrader"] = {"solution": True, "grade": False, "grade_id": "f", "locked": False}
    test = nbformat.v4.new_code_cell("assert f() == 1")
    test.metadata["nbgrader"] = {"solution": False, "grade": True, "grade_id": "t", "locked": True, "points": 1}
    tagged = nbformat.v4.new_code_cell("_ce = 1")
    tagged.metadata["tags"] = ["autograder-probe"]
    tagged.id = "autograder-probe-t"
    nb.cells = [answer, test, tagged]
    assert notebook.student_cells(nb) == ["def f():\n    return 1", "_ce = 1"]
    assert notebook.written_by_student(nb) == ["def f():\n    return 1", "_ce = 1"]


# ----------------------------------------------------------------------------- a real probe kernel

def test_probe_kernel_answers_over_its_own_reply_and_never_sees_test_cells(tmp_path):
    """The student's cells run, a test cell's code is never sent; a second payload published by
    student code during the probe does not replace the reply's answer."""
    source = kernels.Kernels(tmp_path / "slot", [], sandbox.Limits(), True, ["torch"])
    work = source.workdir()
    km = source.manager(work)
    assert kernels.start(km) is None
    channel = kernels.Channel(km, time.monotonic() + 120, "deadline", probe.MAX_MESSAGE_BYTES)
    try:
        assert channel.wait_ready()
        session = probe.ProbeSession(channel, cell_timeout=20)
        session.run_cells([
            "import torch\nfrom IPython.display import publish_display_data\n"
            "def double(x):\n    publish_display_data({'application/x.autograder-probe+json': {'forged': 1}})\n"
            "    return x * 2\n",
            "_seen = []\nget_ipython().events.register('pre_run_cell', lambda info: _seen.append(info.raw_cell))",
        ])
        questions = {"values": [], "signatures": [], "tables": {},
                     "events": [{"kind": "call", "target": "double", "args": (torch.ones(2),), "kwargs": {},
                                 "grad": [], "vjps": [], "globals": {}, "attrs": [], "grad_enabled": True}]}
        answers = session.ask({"t": _saved(questions)})
        results, note = answers["t"]
        assert note is None and torch.equal(results["0"]["value"], torch.full((2,), 2.0))
        seen = channel.execute("_n = len(_seen)", timeout=10, user_expressions={"n": "repr(_seen)"})
        text = seen["user_expressions"]["n"]["data"]["text/plain"]
        assert "HIDDEN" not in text and "assert" not in text
    finally:
        channel.close()
        source.stop(km, failed=False)
        source.close()
