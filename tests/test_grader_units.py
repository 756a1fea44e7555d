"""The grader's parts without kernels: static rules, submission collection, the verifier's
record/replay on plain data, LMS collection, the sandbox command line (fast tests)."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import nbformat
import pytest
import torch

from autograder import collect, sandbox, static, verifier

# ----------------------------------------------------------------------------- static rules

GOOD = '''
import torch
import torch.nn.functional as F
def lsce(z, y, smoothing=0.1):
    """Equals F.cross_entropy(..., label_smoothing) without calling it."""
    logp = F.log_softmax(z, 1)
    return -(logp.gather(1, y[:, None])).mean()
'''


@pytest.mark.parametrize("sources, problem", [
    ([GOOD], None),
    ([GOOD, "print(F.cross_entropy(a, b))\nref = F.cross_entropy(a, b)\nce = F.cross_entropy\n"
            "loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)"], None),           # scratch comparisons
    ([GOOD, "class M(nn.Module):\n    def forward(self, z, y):\n        return F.cross_entropy(z, y)"], None),
    (["%time x = 1", GOOD], None),                                                     # IPython magic
    ([GOOD.replace("return -(logp", "return F.cross_entropy(z, y) + 0 * -(logp")], "uses cross_entropy"),
    (["ce = F.cross_entropy", "def lsce(z, y):\n    return ce(z, y)"], "built-in `ce`"),
    (["from torch.nn.functional import nll_loss as n\ndef lsce(z, y):\n    return n(z, y)"], "built-in `n`"),
    (["def h(z, y):\n    return F.nll_loss(z, y)\ndef lsce(z, y):\n    return h(z, y)"], "through `h`"),
    (["_c = F.cross_entropy\ntorch.logsumexp = lambda *a: _c(*a)", GOOD], "changes a library object"),
    (["_c = F.cross_entropy\nF.mine = lambda *a: _c(*a)\ndef lsce(z, y):\n    return F.mine(z, y)"],
     "changes a library object"),   # F imported by a locked cell, not by the student
    (["import functools\n_c = functools.partial(F.cross_entropy)", GOOD], "as a value"),
    (["H = []\nH.append(F.nll_loss)", GOOD], "as a value"),
    (["def lsce(z, y):\n    return getattr(F, 'cross_' + 'entropy')(z, y)"], "computed attribute name"),
    (["def lsce(z, y):\n    return vars(F)['nll_loss'](z, y)"], "vars"),
    (["import importlib", GOOD], "import importlib"),
    (["def lsce(z, y):\n    nll_loss = 1\n    return nll_loss"], "uses nll_loss"),  # as the hidden test reads it
    (["def lsce(:"], "does not parse"),
    (["x = 1"], "not defined"),
])
def test_builtin_loss_rules(sources, problem):
    found = static.builtin_loss_violation(sources, "lsce", ["import torch.nn.functional as F"])
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found, found


# ----------------------------------------------------------------------------- collecting submissions

def _nb(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    nbformat.write(nbformat.v4.new_notebook(), path)
    return path


def test_collect_folders_keeps_every_student(tmp_path):
    subs = tmp_path / "subs"
    for student in ("ann", "bob"):
        (subs / student).mkdir(parents=True)
        _nb(subs / student, "ps1.ipynb")
    (subs / "cid" / "ps1").mkdir(parents=True)
    _nb(subs / "cid" / "ps1", "ps1.ipynb")                 # nbgrader's submitted/ layout
    (subs / "dan").mkdir()
    _nb(subs / "dan", "ps1 (1).ipynb")                       # misnamed: a row, failed
    (subs / "eve").mkdir()                                   # empty: a row, failed
    (subs / ".ipynb_checkpoints").mkdir()
    found = collect.collect(subs, "ps1", tmp_path / "staging")
    assert [s.student_id for s in found] == ["ann", "bob", "cid", "dan", "eve"]
    assert [s.path is not None for s in found] == [True, True, True, False, False]
    assert "ps1 (1).ipynb" in found[3].problem and "no notebook" in found[4].problem


def _notebook_bytes(marker: str) -> bytes:
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell(marker, id="cell-1"))  # fixed id: same marker, same bytes
    return nbformat.writes(nb).encode()


def test_collect_lms_zip_latest_attempt_wins_and_nothing_is_dropped(tmp_path):
    archive = tmp_path / "subs" / "download.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ps1_ann_attempt_2026-01-01-10-00-00_ps1.ipynb", _notebook_bytes("ann old"))
        zf.writestr("ps1_ann_attempt_2026-01-02-10-00-00_ps1.ipynb", _notebook_bytes("ann new"))
        zf.writestr("ps1_bob_attempt_2026-01-01-09-00-00_ps1.ipynb", _notebook_bytes("bob"))
        zf.writestr("ps1_bob_attempt_2026-01-01-09-00-00_ps2.ipynb", _notebook_bytes("bob ps2"))  # another file
        zf.writestr("random name.ipynb", _notebook_bytes("who?"))       # cannot be attributed: a row
    found = {s.student_id: s for s in collect.collect(archive.parent, "ps1", tmp_path / "staging")}
    assert set(found) == {"ann", "bob", "unmatched-random_name"}
    assert b"ann new" in found["ann"].data and found["ann"].timestamp.startswith("2026-01-02")
    assert b"bob" in found["bob"].data and found["bob"].problem is None
    assert found["unmatched-random_name"].data is None and "regexp" in found["unmatched-random_name"].problem


def test_collect_lms_id_comes_from_the_lms_part_of_the_name(tmp_path):
    """A student's own upload name cannot carry another student's id (issue 12, item 7): the
    attacker's later "attempt" inside the file name neither replaces nor drops the victim's."""
    archive = tmp_path / "subs" / "download.zip"
    archive.parent.mkdir()
    forged = "ps1_mallory_attempt_2026-01-01-09-00-00_x_victim_attempt_2099-12-31-23-59-59_ps1.ipynb"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ps1_victim_attempt_2026-01-01-10-00-00_ps1.ipynb", _notebook_bytes("victim's own"))
        zf.writestr(forged, _notebook_bytes("mallory's forgery"))
    found = {s.student_id: s for s in collect.collect(archive.parent, "ps1")}
    assert b"victim's own" in found["victim"].data and found["victim"].problem is None
    assert found["mallory"].data is None and "x_victim_attempt_2099" in found["mallory"].problem
    # and nbgrader's documented greedy regexp, given explicitly, is what the default no longer does
    greedy = r".*_(?P<student_id>\w+)_attempt_(?P<timestamp>[0-9\-]+)_(?P<file_id>\w+)"
    fooled = {s.student_id: s for s in collect.collect(archive.parent, "ps1", regexp=greedy)}
    assert b"mallory's forgery" in fooled["victim"].data


def test_collect_zip_regexp_matches_like_nbgrader(tmp_path):
    """--zip-regexp is nbgrader's FileNameCollectorPlugin.named_regexp, which nbgrader matches
    against the extracted file's path: its ``.*/`` form works, and so does a base-name regexp."""
    archive = tmp_path / "subs" / "download.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ps1_ann_attempt_2026-01-01-09-00-00_ps1.ipynb", _notebook_bytes("ann"))
        zf.writestr("ps1_bob_attempt_2026-01-01-10-00-00_ps1.ipynb", _notebook_bytes("bob"))
    for regexp in (r".*/ps1_(?P<student_id>[A-Za-z0-9_-]+)_attempt_(?P<timestamp>[0-9\-]+)_(?P<file_id>\w+)\.ipynb",
                   r"ps1_(?P<student_id>[a-z]+)_attempt_(?P<timestamp>[0-9\-]+)_(?P<file_id>\w+)"):
        found = {s.student_id: s for s in collect.collect(archive.parent, "ps1", regexp=regexp)}
        assert set(found) == {"ann", "bob"}, (regexp, found)
        assert b"ann" in found["ann"].data and found["bob"].timestamp.startswith("2026-01-01")


def test_collect_lms_archive_inside_an_upload_is_attributed_by_its_lms_name(tmp_path):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("ps1_victim_attempt_2099-01-01-00-00-00_ps1.ipynb", _notebook_bytes("planted"))
        zf.writestr("work/ps1.ipynb", _notebook_bytes("mallory's notebook"))
    archive = tmp_path / "subs" / "download.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ps1_mallory_attempt_2026-01-01-09-00-00_work.zip", inner.getvalue())
        zf.writestr("ps1_victim_attempt_2026-01-01-10-00-00_ps1.ipynb", _notebook_bytes("victim's own"))
    found = {s.student_id: s for s in collect.collect(archive.parent, "ps1")}
    assert set(found) == {"mallory", "victim"}
    assert b"mallory's notebook" in found["mallory"].data
    assert b"victim's own" in found["victim"].data


def test_collect_reports_collisions(tmp_path):
    """Two different notebooks for one student id and one timestamp (here: a folder and an LMS
    entry, and two entries) give one failed row naming both; nobody is dropped silently."""
    subs = tmp_path / "subs"
    (subs / "ann").mkdir(parents=True)
    (subs / "ann" / "ps1.ipynb").write_bytes(_notebook_bytes("ann in a folder"))
    with zipfile.ZipFile(subs / "download.zip", "w") as zf:
        zf.writestr("ps1_ann_attempt_2026-01-01-10-00-00_ps1.ipynb", _notebook_bytes("ann in the zip"))
        zf.writestr("ps1_bob_attempt_2026-01-01-10-00-00_ps1.ipynb", _notebook_bytes("bob 1"))
        zf.writestr("dup/ps1_bob_attempt_2026-01-01-10-00-00_ps1.ipynb", _notebook_bytes("bob 2"))
        zf.writestr("copy/ps1_cid_attempt_2026-01-01-10-00-00_ps1.ipynb", _notebook_bytes("cid"))
        zf.writestr("ps1_cid_attempt_2026-01-01-10-00-00_ps1.ipynb", _notebook_bytes("cid"))  # same bytes
    found = {s.student_id: s for s in collect.collect(subs, "ps1")}
    # ann: the zip's timestamped attempt is later than the folder's (none): the latest wins
    assert b"ann in the zip" in found["ann"].data
    assert found["bob"].data is None and found["bob"].problem.startswith("collision: 2 different notebooks")
    assert "dup/ps1_bob" in found["bob"].problem
    assert found["cid"].problem is None and b"cid" in found["cid"].data   # identical copies: no collision


@pytest.mark.parametrize("name, content", [
    ("download.zip", b"this is not a zip file at all"),
    ("download.gz", b"\x1f\x8b\x08\x00broken gzip"),
    ("download.zip", b"PK\x03\x04" + b"\x00" * 40),  # a zip's magic, then nothing
])
def test_collect_bad_archive_is_a_failed_row_not_a_crash(tmp_path, name, content):
    subs = tmp_path / "subs"
    (subs / "ann").mkdir(parents=True)
    (subs / "ann" / "ps1.ipynb").write_bytes(_notebook_bytes("ann"))
    (subs / name).write_bytes(content)
    found = {s.student_id: s for s in collect.collect(subs, "ps1")}
    bad = found.pop(f"bad-archive-{name}")
    assert bad.problem.startswith(f"bad archive {name}: "), bad.problem
    assert set(found) == {"ann"} and found["ann"].problem is None


def test_collect_gzipped_notebook_and_tarball(tmp_path):
    import gzip
    import tarfile

    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "ps1_ann_attempt_2026-01-01-10-00-00_ps1.ipynb.gz").write_bytes(gzip.compress(_notebook_bytes("ann")))
    with tarfile.open(subs / "all.tar.gz", "w:gz") as tar:
        payload = _notebook_bytes("bob")
        info = tarfile.TarInfo("ps1_bob_attempt_2026-01-01-10-00-00_ps1.ipynb")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    found = {s.student_id: s for s in collect.collect(subs, "ps1")}
    assert b"ann" in found["ann"].data and b"bob" in found["bob"].data


def test_collect_refuses_a_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        collect.collect(tmp_path / "nope", "ps1", tmp_path / "staging")


# ----------------------------------------------------------------------------- record and replay

SOURCE = [
    ("setup", {}, "import torch"),
    ("double", {"solution": True, "grade": False, "grade_id": "double", "locked": False},
     "def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION"),
    ("test_double", {"grade": True, "grade_id": "test_double", "locked": True, "points": 2, "solution": False},
     "_x = torch.arange(4.0)\n_want = 2 * _x\n_before = _x.clone()\n_got = double(_x)\n"
     "assert isinstance(_got, torch.Tensor), 'return a tensor'\n"
     "assert torch.equal(_got, _want), f'double gave {_got.tolist()}'\n"
     "assert torch.equal(_x, _before), 'double changed its input'"),
    ("test_grad", {"grade": True, "grade_id": "test_grad", "locked": True, "points": 1, "solution": False},
     "_x = torch.ones(3, requires_grad=True)\n(_g,) = torch.autograd.grad((double(_x) * torch.arange(3.0)).sum(), _x)\n"
     "assert torch.equal(_g, 2 * torch.arange(3.0)), f'gradient {_g.tolist()}'"),
    ("q1", {"solution": True, "grade": False, "grade_id": "q1", "locked": False},
     "q1 = None\n### BEGIN SOLUTION\nq1 = 'b'\n### END SOLUTION"),
    ("test_q1", {"grade": True, "grade_id": "test_q1", "locked": True, "points": 1, "solution": False},
     "assert isinstance(q1, str), 'q1 is a letter'\n### BEGIN HIDDEN TESTS\nassert q1 == 'b', 'wrong letter'\n### END HIDDEN TESTS"),
]


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    nb = nbformat.v4.new_notebook()
    for cell_id, meta, source in SOURCE:
        cell = nbformat.v4.new_code_cell(source)
        cell.id = cell_id
        if meta:
            cell.metadata["nbgrader"] = {"schema_version": 3, "task": False, **meta}
        nb.cells.append(cell)
    path = tmp_path_factory.mktemp("src") / "toy.ipynb"
    nbformat.write(nb, path)
    recorded = verifier.record(verifier.SourceAssignment("toy", path))
    recorded.save(path.with_suffix(".pt"))
    return verifier.load_plan(recorded.assignment, path.with_suffix(".pt"))


def _answers(plan, grade_id, fn=None, q1="b", mutate=False):
    """What an honest kernel would report for ``fn`` (plain data), computed here."""
    test = plan.tests[grade_id]
    results = {"value:q1": {"value": q1}, "sig:double": {"params": [("x", 1, False, None)]}}
    for index, event in enumerate(test["events"]):
        args = [a.clone() if isinstance(a, torch.Tensor) else a for a in event["args"]]
        grads = [args[i].requires_grad_(True) for where, i in event["grad"]]
        out = fn(*args)
        result = {"value": out.detach().clone(), "args_after": [a.detach().clone() for a in args]}
        if mutate:
            result["args_after"] = [a.detach().clone() + 1 for a in args]
        if grads:
            result["requires_grad"] = out.requires_grad
        if grads and out.requires_grad:
            result["vjps"] = [[g.clone() for g in torch.autograd.grad(out, grads, grad_outputs=v, retain_graph=True)]
                              for v in event["vjps"]]
        results[str(index)] = result
    return results


def test_record_notes_the_questions(plan):
    assert plan.kinds == {"double": "function", "q1": "value"}
    (event,) = plan.tests["test_double"]["events"]
    assert event["target"] == "double" and torch.equal(event["args"][0], torch.arange(4.0))
    (grad_event,) = plan.tests["test_grad"]["events"]
    assert grad_event["grad"] == [("a", 0)] and torch.equal(grad_event["vjps"][0], torch.arange(3.0))
    assert plan.tests["test_q1"]["values"] == ["q1"]


def test_replay_passes_correct_answers_and_fails_wrong_ones(plan):
    ok = verifier.replay(plan, "test_double", _answers(plan, "test_double", lambda x: 2 * x), None, {})
    assert (ok.score, ok.max_score, ok.message) == (2.0, 2.0, "")
    wrong = verifier.replay(plan, "test_double", _answers(plan, "test_double", lambda x: 3 * x), None, {})
    assert wrong.score == 0 and "double gave [0.0, 3.0, 6.0, 9.0]" in wrong.message  # the test's message
    mutated = verifier.replay(plan, "test_double", _answers(plan, "test_double", lambda x: 2 * x, mutate=True), None, {})
    assert mutated.score == 0 and "changed its input" in mutated.message


def test_replay_gradients(plan):
    good = verifier.replay(plan, "test_grad", _answers(plan, "test_grad", lambda x: 2 * x), None, {})
    assert good.score == 1.0, good.message
    detached = verifier.replay(plan, "test_grad", _answers(plan, "test_grad", lambda x: (2 * x).detach()), None, {})
    assert detached.score == 0


def test_replay_questions_and_non_plain_answers(plan):
    assert verifier.replay(plan, "test_q1", {"value:q1": {"value": "b"}}, None, {}).score == 1
    assert verifier.replay(plan, "test_q1", {"value:q1": {"value": "a"}}, None, {}).message == "AssertionError: wrong letter"
    liar = {"value:q1": {"value": {"__kind__": "unsupported", "type": "__main__._Sure"}}}
    assert verifier.replay(plan, "test_q1", liar, None, {}).score == 0
    subclass = _answers(plan, "test_double", lambda x: 2 * x)
    subclass["0"]["value"] = {"__kind__": "unsupported", "type": "__main__._Agreeable"}
    assert verifier.replay(plan, "test_double", subclass, None, {}).message == "AssertionError: return a tensor"


def test_replay_without_answers_fails_with_the_reason(plan):
    verdict = verifier.replay(plan, "test_double", {}, "the kernel died", {})
    assert verdict.score == 0 and verdict.message == "the kernel died"
    interrupted = verifier.replay(plan, "test_double", {"0": {"interrupted": True}}, None, {})
    assert interrupted.score == 0 and "time limit" in interrupted.message


def test_record_refuses_a_test_that_fails_on_its_own_solution(tmp_path):
    nb = nbformat.v4.new_notebook()
    answer = nbformat.v4.new_code_cell("def f():\n    return 1")
    answer.metadata["nbgrader"] = {"solution": True, "grade": False, "grade_id": "f", "locked": False, "schema_version": 3}
    test = nbformat.v4.new_code_cell("assert f() == 2, 'nope'")
    test.metadata["nbgrader"] = {"solution": False, "grade": True, "grade_id": "test_f", "locked": True, "points": 1,
                                 "schema_version": 3}
    nb.cells = [answer, test]
    nbformat.write(nb, tmp_path / "bad.ipynb")
    with pytest.raises(verifier.SetupError, match="test_f fails on the source notebook's own solution"):
        verifier.record(verifier.SourceAssignment("bad", tmp_path / "bad.ipynb"))


# The probe's answers (plain data only, bounded): tests/test_verdict.py (test_load_bounded_*),
# since answers come from execute replies, not from notebook outputs.


# ----------------------------------------------------------------------------- the sandbox

def test_sandbox_command_isolates_the_kernel(tmp_path):
    status = sandbox.probe()
    if not status.available:
        pytest.skip(status.reason)
    cmd = sandbox.command(["python", "-V"], tmp_path, sandbox.Limits())
    assert "--unshare-net" in cmd or "--unshare-all" in cmd
    assert "--clearenv" in cmd and any(a.startswith("--as=") for a in cmd)
    roots = {cmd[i + 1] for i, a in enumerate(cmd) if a == "--ro-bind"}
    repo = Path(__file__).resolve().parents[1]
    assert str(repo / "utils") in roots
    assert not {str(repo), str(repo / "source"), str(repo / "autograder"), str(repo / "build")} & roots


def test_limits_reject_nonsense():
    with pytest.raises(ValueError, match="memory_bytes"):
        sandbox.Limits(memory_bytes=0)


def test_sandbox_arguments_for_root_and_for_a_user(tmp_path):
    """Root: no user namespace, the kernel switches to its worker's own uid with RLIMIT_NPROC.
    A user: a real user namespace (``--disable-userns`` needs ``--unshare-user``: bwrap 0.8 and
    0.11 refuse it after ``--unshare-all`` alone), no capability, no RLIMIT_NPROC (it would count
    every process of the user). Both: the sandbox's root read-only."""
    user = sandbox.command(["python", "-V"], tmp_path, sandbox.Limits(),
                           _status=sandbox.SandboxStatus(True, "", "/x/bwrap", False))
    assert {"--unshare-all", "--unshare-user", "--disable-userns"} <= set(user)
    assert "--cap-add" not in user and not any(a.startswith("--nproc=") for a in user)
    assert user[user.index("--remount-ro") + 1] == "/"
    root = sandbox.command(["python", "-V"], tmp_path, sandbox.Limits(),
                           _status=sandbox.SandboxStatus(True, "", "/x/bwrap", True))
    assert "--unshare-user" not in root and "--unshare-ipc" in root and "--unshare-net" in root
    uid = sandbox.kernel_uid()
    assert uid >= sandbox.UID_BASE and f"--reuid={uid}" in root and "--no-new-privs" in root
    assert any(a.startswith("--nproc=") for a in root)
    assert root[root.index("--remount-ro") + 1] == "/"


def test_no_sandbox_command_is_confined_by_landlock(tmp_path):
    """--no-sandbox: the kernel's command goes through the Landlock launcher when the kernel has
    Landlock (the behaviour itself: tests/test_sandbox.py::test_no_sandbox_a_vandal_changes_no_other_row)."""
    cmd = sandbox.command(["python", "-V"], tmp_path, sandbox.Limits(), use_sandbox=False)
    if sandbox.landlock_abi():
        rules = dict((p, k) for p, k in __import__("json").loads(cmd[4]))
        assert rules[str(tmp_path)] == "write" and set(rules.values()) == {"read", "write", "dev"}
        assert str(Path(sandbox.REPO)) not in rules and str(Path(sandbox.REPO) / "source") not in rules
    else:
        assert "bwrap" not in " ".join(cmd)
    assert cmd[-2:] == ["python", "-V"] and any(a.startswith("--as=") for a in cmd)
