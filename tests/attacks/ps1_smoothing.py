"""ps1_smoothing: correct answers in other styles, and the generic attacks on the grader."""
from __future__ import annotations

import copy
import json

import nbformat

from bank import ps1_smoothing as bank

from . import ALL, Case, Context, cell, solution, submission

A = "ps1_smoothing"

# Every answer below is written out in full (never edited out of the reference solution), so
# that the cases stay right when the solution's wording changes.

# A one_hot that validates its input like the solution but returns zeros: the "wrong answer"
# that the attacks below try to get marks for.
VALIDATING_ZEROS = '''
def one_hot(targets, num_classes):
    """Validates like the solution; the values are wrong (all zeros)."""
    if not isinstance(targets, torch.Tensor) or targets.ndim != 1:
        raise ValueError("targets must be a 1-D tensor")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError("targets must hold integers")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError("num_classes must be an int >= 1")
    if targets.numel() and (targets.min() < 0 or targets.max() >= num_classes):
        raise ValueError("class index out of range")
    return torch.zeros(len(targets), num_classes, device=targets.device)
'''

INT64_ONE_HOT = VALIDATING_ZEROS.replace(
    "    return torch.zeros(len(targets), num_classes, device=targets.device)",
    "    return F.one_hot(targets.long(), num_classes)  # int64: a mistake")
LOOPS_ON_2D = VALIDATING_ZEROS.replace(
    "    if not isinstance(targets, torch.Tensor) or targets.ndim != 1:",
    "    while targets.ndim != 1:  # a bug: loops forever on a 2-D target\n        pass\n"
    "    if not isinstance(targets, torch.Tensor):").replace(
    "    return torch.zeros(len(targets), num_classes, device=targets.device)",
    "    return F.one_hot(targets.long(), num_classes).float()")
ACCEPTS_2D = VALIDATING_ZEROS.replace(
    "    if not isinstance(targets, torch.Tensor) or targets.ndim != 1:\n        raise ValueError(\"targets must be a 1-D tensor\")\n",
    "").replace(
    "    return torch.zeros(len(targets), num_classes, device=targets.device)",
    "    return F.one_hot(targets.long().reshape(-1), num_classes).float()")
assert "int64" in INT64_ONE_HOT and "while" in LOOPS_ON_2D and "ndim" not in ACCEPTS_2D

WRONG_SUMS = '''
def smooth_labels(targets, num_classes, smoothing, mode="uniform"):
    """The uniform mode is right; 'others' gives the other classes eps/K: rows sum to 1 - eps/K."""
    if mode not in ("uniform", "others"):
        raise ValueError(f"unknown mode {mode!r}")
    smoothing = float(smoothing)
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError("smoothing must lie in [0, 1]")
    if mode == "others" and num_classes < 2:
        raise ValueError("others needs two classes")
    hard = one_hot(targets, num_classes)
    if mode == "uniform":
        return hard * (1 - smoothing) + smoothing / num_classes
    return hard * (1 - smoothing) + (1 - hard) * smoothing / num_classes
'''


def styles() -> list[Case]:
    loops = {
        "one_hot": '''
def one_hot(targets, num_classes):
    """Built row by row with Python loops."""
    if not isinstance(targets, torch.Tensor) or targets.dim() != 1:
        raise ValueError("targets must be a 1-D tensor of class indices")
    if targets.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool) or targets.is_complex():
        raise ValueError(f"targets must be integers, not {targets.dtype}")
    if type(num_classes) is not int or num_classes < 1:
        raise ValueError("num_classes must be a positive int")
    rows = []
    for index in targets.tolist():
        if not 0 <= index < num_classes:
            raise ValueError(f"class index {index} is not in [0, {num_classes})")
        rows.append([1.0 if k == index else 0.0 for k in range(num_classes)])
    return torch.tensor(rows, dtype=torch.float32, device=targets.device).reshape(len(rows), num_classes)
''',
        "smooth_labels": '''
def smooth_labels(targets, num_classes, smoothing, mode="uniform"):
    """Loops again: every entry written explicitly."""
    if mode not in ("uniform", "others"):
        raise ValueError("mode must be 'uniform' or 'others'")
    if not (0.0 <= smoothing <= 1.0):
        raise ValueError("smoothing must lie in [0, 1]")
    if mode == "others" and num_classes < 2:
        raise ValueError("'others' needs at least 2 classes")
    hard = one_hot(targets, num_classes)
    out = torch.empty(hard.shape, dtype=torch.float32, device=hard.device)
    for i in range(hard.shape[0]):
        for k in range(num_classes):
            if mode == "uniform":
                out[i, k] = (1 - smoothing) * hard[i, k] + smoothing / num_classes
            else:
                out[i, k] = 1 - smoothing if hard[i, k] == 1 else smoothing / (num_classes - 1)
    return out
''',
    }
    float64 = {
        "one_hot": '''
def one_hot(targets, num_classes):
    """Comparison with arange, in float64, cast at the end."""
    if not torch.is_tensor(targets) or targets.ndim != 1:
        raise ValueError("targets must be 1-D")
    if torch.is_floating_point(targets) or targets.dtype == torch.bool or torch.is_complex(targets):
        raise ValueError("targets must be integer class indices")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError("num_classes must be an int >= 1")
    if targets.numel() and not ((targets >= 0).all() and (targets < num_classes).all()):
        raise ValueError("a class index is out of range")
    classes = torch.arange(num_classes, device=targets.device)
    return (targets.unsqueeze(1) == classes).to(torch.float64).to(torch.float32)
''',
        "smooth_labels": '''
def smooth_labels(targets, num_classes, smoothing, mode="uniform"):
    """torch.where between two constants, computed in float64."""
    import math
    if mode not in {"uniform", "others"}:
        raise ValueError(f"unknown mode {mode}")
    if math.isnan(smoothing) or smoothing < 0 or smoothing > 1:
        raise ValueError("smoothing must be in [0, 1]")
    if mode == "others" and num_classes == 1:
        raise ValueError("no other class")
    hard = one_hot(targets, num_classes).double()
    if mode == "uniform":
        on, off = 1 - smoothing + smoothing / num_classes, smoothing / num_classes
    else:
        on, off = 1 - smoothing, smoothing / (num_classes - 1)
    return torch.where(hard > 0.5, on, off).to(torch.float32)
''',
    }
    scatter = {
        "smooth_labels": '''
def smooth_labels(targets, num_classes, smoothing, mode="uniform"):
    """A full tensor of the off value, then scatter_ of the on value."""
    if mode not in ("uniform", "others"):
        raise ValueError("bad mode")
    if not 0 <= smoothing <= 1:
        raise ValueError("bad smoothing")
    if mode == "others" and num_classes < 2:
        raise ValueError("others needs K >= 2")
    one_hot(targets, num_classes)  # validation only
    off = smoothing / num_classes if mode == "uniform" else smoothing / (num_classes - 1)
    on = 1 - smoothing + off if mode == "uniform" else 1 - smoothing
    out = torch.full((len(targets), num_classes), off, dtype=torch.float32, device=targets.device)
    return out.scatter_(1, targets.long().unsqueeze(1), on)
''',
    }
    warns = {
        "smooth_labels": "import warnings\n\n" + solution(A, "smooth_labels").replace(
            '    """', '    """', 1) + '''

_smooth_labels = smooth_labels


def smooth_labels(*args, **kwargs):
    """The solution, but it warns on every call (stderr): still full marks."""
    warnings.warn("smooth_labels: a harmless UserWarning", UserWarning)
    return _smooth_labels(*args, **kwargs)
''',
    }
    noisy = {"one_hot": solution(A, "one_hot") + '''

_quiet_one_hot = one_hot


def one_hot(targets, num_classes):
    """The solution, printing 20 kB per call (the grader truncates the output)."""
    print("debug " * 3500)
    return _quiet_one_hot(targets, num_classes)
'''}
    questions = {"q1": "q1 = 101.0", "q2": 'q2 = " B "', "q4": "q4 = 2 * 0.1"}  # ps1's answer keys (assignments helper)
    return [
        Case("style-loops", submission(A, loops), why="loops"),
        Case("style-float64-arange-where", submission(A, float64), why="float64, arange, where"),
        Case("style-scatter", submission(A, scatter), why="scatter_"),
        Case("style-warns", submission(A, warns), why="UserWarning on stderr"),
        Case("style-noisy", submission(A, noisy), why="large output"),
        Case("style-answer-formats", submission(A, questions), why="float for an int, spaces and case, arithmetic"),
    ]


def attacks(ctx: Context) -> list[Case]:
    out: list[Case] = []

    # 1. comparison functions replaced in the kernel
    patch = VALIDATING_ZEROS + '''
import builtins, math
import numpy
torch.equal = lambda *a, **k: True
torch.allclose = lambda *a, **k: True
builtins.all = lambda *a, **k: True
math.isclose = lambda *a, **k: True
numpy.allclose = lambda *a, **k: True
'''
    out.append(Case("attack-patch-comparisons", submission(A, {"one_hot": patch}),
                    loses=["test_one_hot_values"], status="flagged", fools_kernel=["test_one_hot_values"]))

    # 2. a tensor subclass whose comparisons always agree
    liar = '''
class _Agreeable(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.equal, torch.allclose, torch.Tensor.equal, torch.Tensor.allclose):
            return True
        return super().__torch_function__(func, types, args, kwargs or {})

''' + VALIDATING_ZEROS.replace("return torch.zeros(len(targets), num_classes, device=targets.device)",
                               "return torch.zeros(len(targets), num_classes, device=targets.device).as_subclass(_Agreeable)")
    out.append(Case("attack-tensor-subclass", submission(A, {"one_hot": liar}),
                    loses=["test_one_hot_values"], status="flagged", fools_kernel=["test_one_hot_values"]))

    # 3. a torch.Tensor method patched: float64 row sums always look like ones
    tensor_patch = WRONG_SUMS + '''

_real_sum = torch.Tensor.sum


def _sum(self, *args, **kwargs):
    result = _real_sum(self, *args, **kwargs)
    if self.dtype == torch.float64 and self.dim() == 2 and (kwargs.get("dim") == 1 or args[:1] == (1,)):
        return torch.ones_like(result)
    return result


torch.Tensor.sum = _sum
'''
    out.append(Case("attack-patch-tensor-method", submission(A, {"smooth_labels": tensor_patch}),
                    loses=["test_smooth_labels_sums_to_one", "test_smooth_labels_others"], status="flagged",
                    fools_kernel=["test_smooth_labels_sums_to_one"]))

    # 4. sys.modules["torch"] swapped for a module whose comparisons lie
    swap = VALIDATING_ZEROS + '''
import sys, types
_fake = types.ModuleType("torch")
_fake.__dict__.update(sys.modules["torch"].__dict__)
_fake.equal = lambda *a, **k: True
_fake.allclose = lambda *a, **k: True
sys.modules["torch"] = _fake
'''
    out.append(Case("attack-swap-sys-modules", submission(A, {"one_hot": swap}),
                    loses=["test_one_hot_values"], status="flagged", fools_kernel=["test_one_hot_values"]))

    # 5. the expected value read out of the calling test's frame
    frame = VALIDATING_ZEROS.replace("    return torch.zeros(", '''    import inspect
    caller = inspect.currentframe().f_back
    for scope in (caller.f_locals, caller.f_globals):
        want = scope.get("_want")
        if isinstance(want, torch.Tensor) and tuple(want.shape) == (len(targets), num_classes):
            return want.clone()
    return torch.zeros(''')
    out.append(Case("attack-read-caller-frame", submission(A, {"one_hot": frame}),
                    loses=["test_one_hot_values"], status="flagged", fools_kernel=["test_one_hot_values"]))

    # 6. a pre_run_cell hook that reads the hidden test's answer key and sets the answer
    hook = '''q2 = "a"


def _peek(info):
    import re
    match = re.search(r'_answer == "([a-d])"', info.raw_cell or "")
    name = re.search(r"assert isinstance\\((q\\d+), str\\)", info.raw_cell or "")
    if match and name:
        globals()[name.group(1)] = match.group(1)


get_ipython().events.register("pre_run_cell", _peek)
'''
    out.append(Case("attack-hook-reads-hidden-tests", submission(A, {"q2": hook, "q3": 'q3 = "b"'}),
                    loses=["test_q2", "test_q3"], status="flagged", fools_kernel=["test_q2", "test_q3"]))

    # 7. a str subclass that equals everything
    sure = '''
class _Sure(str):
    def __eq__(self, other):
        return True
    __hash__ = str.__hash__
    def strip(self, *args):
        return self
    def lower(self):
        return self


q3 = _Sure("x")
'''
    out.append(Case("attack-str-subclass", submission(A, {"q3": sure}),
                    loses=["test_q3"], status="flagged", fools_kernel=["test_q3"]))

    # 8. os._exit in the kernel: what comes after it is lost, what came before stands
    exit_cell = solution(A, "q4") + "\nimport os\nos._exit(0)\n"
    out.append(Case("attack-os-exit", submission(A, {"q4": exit_cell}), loses=["test_q4"], status="failed"))

    # 9. an infinite loop on some inputs: costs the problems that call it, not the run
    out.append(Case("attack-infinite-loop", submission(A, {"one_hot": LOOPS_ON_2D}), loses=["test_one_hot_2d_target"]))

    # 10. a loop that swallows the interrupt: the kernel is killed, the run goes on
    stubborn = solution(A, "q4") + '''
import time
while True:
    try:
        time.sleep(0.2)
    except BaseException:
        pass
'''
    out.append(Case("attack-uninterruptible-loop", submission(A, {"q4": stubborn}), loses=["test_q4"],
                    status="failed"))

    # 10b. a memory bomb: the address-space limit turns it into a MemoryError in that cell only
    bomb = solution(A, "q4") + "\n_hog = bytearray(64 * 2**30)\n"
    out.append(Case("attack-memory-bomb", submission(A, {"q4": bomb})))

    # 11. test cells emptied (and a wrong answer): nbgrader restores them from the gradebook
    wrong_int64 = INT64_ONE_HOT
    emptied = submission(A, {"one_hot": wrong_int64})
    for c in emptied.cells:
        if c.get("metadata", {}).get("nbgrader", {}).get("grade"):
            c.source = ""
    out.append(Case("attack-empty-test-cells", emptied, loses=["test_one_hot_values"]))

    # 12. a test cell edited, its points inflated
    edited = submission(A, bank.WRONG["others_instead_of_uniform"]["replace"])
    target = cell(edited, "test_smooth_labels_uniform")
    target.source = "assert True"
    target.metadata.nbgrader["points"] = 100
    cell(edited, "test_one_hot_values").metadata.nbgrader["points"] = 50
    out.append(Case("attack-edit-test-inflate-points", edited, loses=["test_smooth_labels_uniform"]))

    # 13. a test cell deleted, another one turned into an ordinary (ungraded) cell
    deleted = submission(A, {"one_hot": ACCEPTS_2D})
    deleted.cells = [c for c in deleted.cells if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") != "test_one_hot_2d_target"]
    plain = cell(deleted, "test_one_hot_errors")
    plain.metadata.pop("nbgrader")
    plain.source = "pass"
    out.append(Case("attack-delete-test-cells", deleted, loses=["test_one_hot_2d_target"]))

    # 14. a bonus grade cell of its own
    bonus = submission(A)
    extra = nbformat.v4.new_code_cell("print('free points')")
    extra.metadata["nbgrader"] = {"grade": True, "grade_id": "test_bonus", "locked": True, "points": 50,
                                  "schema_version": 3, "solution": False, "task": False}
    bonus.cells.append(extra)
    out.append(Case("attack-bonus-grade-cell", bonus, status=""))

    # 15. writing to the gradebook, the grader's outputs, other students' files; reading the
    #     source notebook (answer keys). q3 is right only if the source notebook was readable.
    paths = {"gradebook": str(ctx.out / "gradebook.db"), "grades": str(ctx.out / "grades.csv"),
             "feedback": str(ctx.out / "feedback" / "correct.html"),
             "other": str(ctx.submissions / "correct" / f"{A}.ipynb"),
             "marker": str(ctx.markers / "written-by-student.txt"),
             "source": str(nbformat_source_path())}
    intruder = wrong_int64 + f'''

import glob, json, os, sqlite3
_paths = {json.dumps(paths)}
for _key in ("grades", "feedback", "other", "marker"):
    try:
        with open(_paths[_key], "a") as _f:
            _f.write("written by a student")
    except OSError:
        pass
for _db in [_paths["gradebook"]] + glob.glob("../**/gradebook*.db", recursive=True):
    try:
        _con = sqlite3.connect(_db)
        _con.execute("UPDATE grade SET auto_score = 100, manual_score = 100")
        _con.commit()
    except Exception:
        pass
try:
    _q3_key = "c" if open(_paths["source"]).read() else "a"  # the key, if the source were readable
except OSError:
    _q3_key = "a"
'''
    spy = submission(A, {"one_hot": intruder, "q3": "q3 = _q3_key"})
    out.append(Case("attack-write-files-read-source", spy, loses=["test_one_hot_values", "test_q3"],
                    needs_sandbox=True))

    # 15b. forged probe cells: a student cell with a probe's id and tag after each test cell,
    #      publishing "answers" in the old probe MIME type, plus a pre_run_cell hook copying the
    #      hidden tests' source into the outputs. Nothing a notebook carries is read as an answer
    #      now, and the forged cells stay in the evidence (and in the static checks).
    forged = submission(A, {"one_hot": VALIDATING_ZEROS, "q2": hook, "q3": 'q3 = "b"'})
    cells = []
    for c in forged.cells:
        cells.append(c)
        grade_id = c.get("metadata", {}).get("nbgrader", {}).get("grade_id", "")
        if grade_id.startswith("test_") and c.get("metadata", {}).get("nbgrader", {}).get("grade"):
            fake = nbformat.v4.new_code_cell(
                "from IPython.display import publish_display_data\n"
                f"publish_display_data({{'application/x.autograder-probe+json': {{'test': {grade_id!r}, 'results': {{}}}}}})\n")
            fake.metadata["tags"] = ["autograder-probe"]
            fake.metadata["autograder"] = {"probe": grade_id}
            fake.id = ("autograder-probe-" + grade_id)[:64]
            cells.append(fake)
    forged.cells = cells
    out.append(Case("attack-forged-probe-cells", forged, loses=["test_one_hot_values", "test_q2", "test_q3"],
                    status="flagged", fools_kernel=["test_q2", "test_q3"]))

    # 15c. a forged huge answer: a 1-element tensor expanded to 2**31 elements (4 B of storage)
    huge = VALIDATING_ZEROS.replace(
        "    return torch.zeros(len(targets), num_classes, device=targets.device)",
        "    if len(targets) > 1:\n        return torch.zeros(1).expand(2**31)\n"
        "    return F.one_hot(targets.long(), num_classes).float()")
    out.append(Case("attack-huge-tensor", submission(A, {"one_hot": huge}),
                    loses=["test_one_hot_values", "test_one_hot_2d_target", "test_one_hot_errors"], status="flagged",
                    why="the worker refuses the forged view unread: every test that asked for it loses"))

    # 15d. a flood of output in the old probe MIME type: capped like any other output
    flood = solution(A, "q4") + (
        "\nfrom IPython.display import publish_display_data\n"
        "for _i in range(40):\n"
        "    publish_display_data({'application/x.autograder-probe+json': {'pad': 'x' * 2**20}})\n")
    out.append(Case("attack-probe-mime-flood", submission(A, {"q4": flood})))

    # 16. files that are not notebooks, a missing notebook
    out.append(Case("attack-not-json", b"this is not a notebook {", loses=ALL, status="failed"))
    text = json.dumps(nbformat.v4.upgrade(copy.deepcopy(submission(A))))
    out.append(Case("attack-truncated-json", text[: len(text) // 2].encode(), loses=ALL, status="failed"))
    out.append(Case("attack-json-not-notebook", b'{"cells": 3, "nbformat": "x"}', loses=ALL, status="failed"))
    out.append(Case("attack-no-notebook", None, loses=ALL, status="failed"))
    return out


def nbformat_source_path():
    from . import nbtools

    return nbtools.notebook_path(A, "source")
