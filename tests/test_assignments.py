"""The nbgrader assignments, graded for real: contract, validation, solution, stub, wrong answers.

Everything that needs nbgrader runs in a few child processes started together by the ``runs``
fixture (one per assignment, plus one that regenerates release/ into a temp folder), so that
their kernel start-ups overlap; each assignment's submissions are graded by ONE ``autograde``:

* ``solution``: the release notebook with the source solutions (full marks expected);
* ``stub``: the release notebook as handed out (zero on every test cell expected);
* ``warns``: the solution, with a ``UserWarning`` raised inside the first function (full marks);
* ``wrong-<name>`` / ``right-<name>``: the entries of tests/bank/<assignment>.py.
"""
from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

import nbtools
from conftest import REPO

pytestmark = pytest.mark.slow

TOTAL_POINTS = 20.0

# The assignments' contract (/work/prompts/assignments_contract.md): answer cells and test points.
CONTRACT = {
    "ps1_smoothing": {
        "answers": ["one_hot", "smooth_labels", "q1", "q2", "q3", "q4"],
        "tests": {
            "test_one_hot_values": 3, "test_one_hot_2d_target": 1, "test_one_hot_errors": 1,
            "test_smooth_labels_shapes": 1, "test_smooth_labels_sums_to_one": 2, "test_smooth_labels_uniform": 3,
            "test_smooth_labels_others": 2, "test_smooth_labels_negative": 1, "test_smooth_labels_errors": 1,
            "test_smooth_labels_no_mutation": 1,
            "test_q1": 1, "test_q2": 1, "test_q3": 1, "test_q4": 1,
        },
        "misconceptions": ["test_one_hot_2d_target", "test_smooth_labels_sums_to_one", "test_smooth_labels_uniform",
                           "test_smooth_labels_others", "test_smooth_labels_negative"],
    },
    "ps2_losses": {
        "answers": ["soft_cross_entropy", "label_smoothing_cross_entropy", "LabelSmoothingLoss", "q5", "q6", "q7", "q8"],
        "tests": {
            "test_soft_cross_entropy_values": 2, "test_soft_cross_entropy_stability": 2, "test_soft_cross_entropy_errors": 1,
            "test_label_smoothing_cross_entropy_values": 3, "test_label_smoothing_cross_entropy_gradients": 2,
            "test_label_smoothing_cross_entropy_ignore_index": 2, "test_label_smoothing_cross_entropy_no_builtin": 2,
            "test_LabelSmoothingLoss_module": 2,
            "test_q5": 1, "test_q6": 1, "test_q7": 1, "test_q8": 1,
        },
        "misconceptions": ["test_soft_cross_entropy_stability", "test_label_smoothing_cross_entropy_ignore_index",
                           "test_label_smoothing_cross_entropy_no_builtin"],
    },
    "ps3_calibration": {
        "answers": ["label_smoothing_grad", "expected_calibration_error", "fit_temperature", "precision_recall",
                    "q9", "q10", "q11", "q12"],
        "tests": {
            "test_label_smoothing_grad_values": 3, "test_label_smoothing_grad_mean_scale": 2,
            "test_expected_calibration_error_values": 2, "test_expected_calibration_error_weighted": 1,
            "test_expected_calibration_error_bins": 1, "test_fit_temperature": 3,
            "test_precision_recall_values": 2, "test_precision_recall_orientation": 1,
            "test_precision_recall_zero_division": 1,
            "test_q9": 1, "test_q10": 1, "test_q11": 1, "test_q12": 1,
        },
        "misconceptions": ["test_label_smoothing_grad_mean_scale", "test_expected_calibration_error_weighted",
                           "test_precision_recall_orientation"],
    },
}

PRESENT = nbtools.available("source")
WARNING_TEXT = "a UserWarning raised by a correct answer"


def bank(assignment: str) -> dict[str, dict[str, dict]]:
    """``{"wrong": WRONG, "right": RIGHT}`` of tests/bank/<assignment>.py (RIGHT is optional)."""
    module = importlib.import_module(f"bank.{assignment}")
    return {"wrong": dict(module.WRONG), "right": dict(getattr(module, "RIGHT", {}))}


def bank_cases() -> list[tuple[str, str, str]]:
    cases = []
    for assignment in PRESENT:
        try:
            entries = bank(assignment)
        except ModuleNotFoundError:
            continue
        cases += [(assignment, kind, name) for kind in ("wrong", "right") for name in entries[kind]]
    return cases


BANK_CASES = bank_cases()
HINT_CASES = [case for case in BANK_CASES if case[1] == "wrong" and "hint" in bank(case[0])["wrong"][case[2]]]


def warns_submission(assignment: str) -> tuple[nbformat.NotebookNode, str]:
    """The solution with ``warnings.warn(UserWarning)`` inside the first answer function."""
    for cell in nbtools.load(assignment, "source").cells:
        gid = nbtools.grade_id(cell)
        if not nbtools.is_answer(cell) or not re.search(rf"^def {re.escape(gid)}\(", cell.source, re.M):
            continue
        lines = cell.source.splitlines()
        at = next(i for i, line in enumerate(lines) if "### BEGIN SOLUTION" in line)
        indent = lines[at][: len(lines[at]) - len(lines[at].lstrip())]
        lines.insert(at + 1, f'{indent}warnings.warn("{gid}: {WARNING_TEXT}", UserWarning)')
        source = ("import warnings\n\nwarnings.simplefilter('always')  # show every warning, as a student's set-up may\n\n"
                  + nbtools.strip_solution_markers("\n".join(lines)))
        return nbtools.build_submission(assignment, replace={gid: source}), gid
    raise AssertionError(f"{assignment}: no answer cell defines a function named after its grade_id")


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """Start every nbgrader run at once: the release check, then one grading run per assignment."""
    release_out = tmp_path_factory.mktemp("release-check")
    regenerate = ("import sys, nbtools; nbtools.skip_slow_jsonschema_formats(); from autograder.release import main; "
                  f"sys.exit(main(['--out', {str(release_out)!r}]))")
    release = subprocess.Popen([sys.executable, "-c", regenerate], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))})
    grading, problems = {}, {}
    for assignment in PRESENT:
        if not nbtools.notebook_path(assignment, "release").exists():
            problems[assignment] = f"release/{assignment}/{assignment}.ipynb is missing: run `make release`"
            continue
        submissions = {"solution": nbtools.build_submission(assignment),
                       "stub": nbtools.build_submission(assignment, fill_solutions=False),
                       "warns": warns_submission(assignment)[0]}
        try:
            entries = bank(assignment)
        except ModuleNotFoundError:
            entries = {"wrong": {}, "right": {}}
        for kind, named in entries.items():
            for name, entry in named.items():
                submissions[f"{kind}-{name}"] = nbtools.build_submission(assignment, replace=entry["replace"])
        grading[assignment] = nbtools.start_autograde(
            assignment, submissions, tmp_path_factory.mktemp(f"grade-{assignment}"),
            validate={"source": nbtools.notebook_path(assignment, "source"),
                      "release": nbtools.notebook_path(assignment, "release")})
    yield {"release": (release, release_out), "grading": grading, "problems": problems}
    for run in grading.values():
        if run.process.poll() is None:
            run.process.kill()
    if release.poll() is None:
        release.kill()


def graded(runs, assignment: str) -> nbtools.GradingResult:
    if assignment in runs["problems"]:
        pytest.fail(runs["problems"][assignment])
    result = runs["grading"][assignment].result()
    assert not result.errors, f"nbgrader failed for {assignment}:\n" + "\n".join(result.errors) + "\n" + result.log()[-3000:]
    return result


def scores_of(result: nbtools.GradingResult, student: str) -> dict[str, tuple[float, float]]:
    assert student in result.scores, f"{student} was not graded; nbgrader log:\n{result.log()[-3000:]}"
    return result.scores[student]


def errors_by_cell(nb: nbformat.NotebookNode, cells=None) -> dict[str, str]:
    """``{cell id: 'Error: message'}`` for the executed code cells (``cells`` filters them)."""
    found = {}
    for cell in nb.cells:
        if cell.cell_type != "code" or (cells is not None and not cells(cell)):
            continue
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                found[nbtools.grade_id(cell) or cell.get("id")] = f"{output.ename}: {output.evalue}"
    return found


def is_check_cell(cell) -> bool:
    """Cells students run as they are: neither an answer nor a graded test."""
    return cell.cell_type == "code" and not nbtools.is_answer(cell) and not nbtools.is_test(cell)


# --------------------------------------------------------------------------- contract and hygiene


def test_every_contract_assignment_has_a_source():
    missing = [a for a in ("ps1_smoothing", "ps2_losses") if a not in PRESENT]
    assert not missing, f"source notebooks missing: {missing}"


@pytest.mark.parametrize("assignment", PRESENT)
@pytest.mark.parametrize("kind", ["source", "release"])
def test_cells_match_the_contract(assignment, kind):
    nb = nbtools.load(assignment, kind)
    contract = CONTRACT[assignment]
    assert nbtools.answer_ids(nb) == contract["answers"], f"{kind}: answer cells {nbtools.answer_ids(nb)} != contract {contract['answers']}"
    points = nbtools.test_points(nb)
    assert points == {k: float(v) for k, v in contract["tests"].items()}, f"{kind}: test cells and points differ from the contract: {points}"
    assert sum(points.values()) == TOTAL_POINTS
    for gid in points:
        assert any(gid.startswith(f"test_{name}") for name in contract["answers"]), f"{gid} does not start with test_<answer name>"
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader")
        if meta and meta.get("grade"):
            assert meta.get("locked") and cell.cell_type == "code", f"{meta['grade_id']}: a test cell must be a locked code cell"


@pytest.mark.parametrize("assignment", PRESENT)
@pytest.mark.parametrize("kind", ["source", "release"])
def test_notebook_format(assignment, kind):
    nb = nbtools.load(assignment, kind)
    assert (nb.nbformat, nb.nbformat_minor) == (4, 5)
    ids = [c.get("id") for c in nb.cells]
    assert all(i and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", i) for i in ids), f"unreadable or missing cell ids: {ids}"
    assert len(set(ids)) == len(ids), "duplicate cell ids"
    assert nb.metadata["kernelspec"]["name"] == "python3" and "language_info" in nb.metadata
    dirty = [c.id for c in nb.cells if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"cells with outputs: {dirty}"


@pytest.mark.parametrize("assignment", PRESENT)
def test_release_hides_solutions_and_hidden_tests(assignment):
    nb = nbtools.load(assignment, "release")
    text = "\n".join(c.source for c in nb.cells)
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
        assert marker not in text, f"release notebook still contains {marker!r}"
    for cell in nb.cells:
        if nbtools.is_answer(cell):
            assert "raise NotImplementedError()" in cell.source, f"{nbtools.grade_id(cell)}: the stub should raise NotImplementedError"
            if re.fullmatch(r"q\d+", nbtools.grade_id(cell)):
                assert cell.source.startswith(f"{nbtools.grade_id(cell)} = None"), f"{nbtools.grade_id(cell)}: the stub should leave it None"


@pytest.mark.parametrize("assignment", PRESENT)
def test_hidden_tests_use_seeded_randomness(assignment):
    """Grading is deterministic: random cases come from seeded generators (or derandomized hypothesis)."""
    for cell in nbtools.load(assignment, "source").cells:
        if not nbtools.is_test(cell):
            continue
        seeded_globally = "manual_seed(" in cell.source and "Generator" not in cell.source
        for line in cell.source.splitlines():
            if re.search(r"torch\.(rand|randn|randint|randperm|multinomial|normal|bernoulli)\(", line) and not seeded_globally:
                assert "generator=" in line, f"{nbtools.grade_id(cell)}: unseeded random draw: {line.strip()}"
            assert not re.search(r"\b(random|np\.random)\.(rand|random|randint|choice|shuffle)\(", line), f"{nbtools.grade_id(cell)}: global random state: {line.strip()}"
        if "@given" in cell.source or "hypothesis" in cell.source:
            assert "derandomize=True" in cell.source, f"{nbtools.grade_id(cell)}: hypothesis needs derandomize=True"


@pytest.mark.parametrize("assignment", PRESENT)
def test_bank_is_well_formed(assignment):
    entries = bank(assignment)
    source = nbtools.load(assignment, "source")
    answers, tests = set(nbtools.answer_ids(source)), set(nbtools.test_points(source))
    solutions = nbtools.solution_sources(assignment)
    assert entries["wrong"], "the bank has no WRONG entry"
    assert not set(entries["wrong"]) & set(entries["right"]), "a name is both WRONG and RIGHT"
    for kind, named in entries.items():
        for name, entry in named.items():
            assert re.fullmatch(r"[a-z0-9_]+", name), f"{name}: use snake_case names"
            assert entry["replace"] and set(entry["replace"]) <= answers, f"{name}: replace must name answer cells {sorted(answers)}"
            assert set(entry["loses"]) <= tests, f"{name}: unknown test cells {sorted(set(entry['loses']) - tests)}"
            assert bool(entry["loses"]) == (kind == "wrong"), f"{name}: WRONG entries lose points, RIGHT ones do not"
            for gid, text in entry["replace"].items():
                assert "NotImplementedError" not in text, f"{name}: {gid} is a stub, not a plausible answer"
                assert text.strip() != solutions[gid].strip(), f"{name}: {gid} is the reference solution itself"
                ast.parse(text)


@pytest.mark.parametrize("assignment", PRESENT)
def test_bank_covers_the_contract_misconceptions(assignment):
    lost = {cell for entry in bank(assignment)["wrong"].values() for cell in entry["loses"]}
    missing = [cell for cell in CONTRACT[assignment]["misconceptions"] if cell not in lost]
    assert not missing, f"no bank entry for the misconception(s) of {missing}"


# --------------------------------------------------------------------------- nbgrader, for real


@pytest.mark.parametrize("assignment", PRESENT)
def test_source_passes_nbgrader_validation(runs, assignment):
    assert graded(runs, assignment).validation["source"] == {}


@pytest.mark.parametrize("assignment", PRESENT)
def test_release_fails_nbgrader_validation(runs, assignment):
    """The handed-out notebook does not validate: its answer cells raise NotImplementedError."""
    found = graded(runs, assignment).validation["release"]
    assert found.get("failed"), f"nbgrader's Validator accepts the unanswered release notebook: {found}"


@pytest.mark.parametrize("assignment", PRESENT)
def test_solution_scores_full_marks(runs, assignment):
    result = graded(runs, assignment)
    scores = scores_of(result, "solution")
    assert set(scores) == set(CONTRACT[assignment]["tests"]), "the gradebook's test cells differ from the contract"
    lost = {gid: s for gid, s in scores.items() if s[0] != s[1]}
    assert not lost, f"the solution loses points: {lost}\n{errors_by_cell(result.autograded('solution'), nbtools.is_test)}"
    assert sum(s for s, _ in scores.values()) == TOTAL_POINTS


@pytest.mark.parametrize("assignment", PRESENT)
def test_solution_passes_its_check_cells(runs, assignment):
    errors = errors_by_cell(graded(runs, assignment).autograded("solution"), is_check_cell)
    assert not errors, f"check cells fail with the solution: {errors}"


@pytest.mark.parametrize("assignment", PRESENT)
def test_stub_scores_zero_everywhere(runs, assignment):
    scores = scores_of(graded(runs, assignment), "stub")
    assert set(scores) == set(CONTRACT[assignment]["tests"])
    earned = {gid: s for gid, s in scores.items() if s[0] != 0}
    assert not earned, f"the unanswered notebook earns points: {earned}"


@pytest.mark.parametrize("assignment", PRESENT)
def test_warning_in_a_correct_answer_keeps_full_marks(runs, assignment):
    result = graded(runs, assignment)
    scores = scores_of(result, "warns")
    lost = {gid: s for gid, s in scores.items() if s[0] != s[1]}
    assert not lost, f"a UserWarning costs points: {lost}"
    nb = result.autograded("warns")
    warned = [nbtools.grade_id(c) for c in nb.cells if nbtools.is_test(c)
              and any(WARNING_TEXT in o.get("text", "") for o in c.get("outputs", []))]
    assert warned, "the warning never showed in a test cell, so this test proves nothing"


@pytest.mark.parametrize("assignment,kind,name", BANK_CASES, ids=[f"{a}-{k}-{n}" for a, k, n in BANK_CASES])
def test_bank_entry_loses_exactly_its_cells(runs, assignment, kind, name):
    result = graded(runs, assignment)
    entry = bank(assignment)[kind][name]
    scores = scores_of(result, f"{kind}-{name}")
    assert set(scores) == set(CONTRACT[assignment]["tests"])
    wrong = {gid: s for gid, s in scores.items() if (s[0] == 0) != (gid in entry["loses"]) or (gid not in entry["loses"] and s[0] != s[1])}
    if wrong:
        errors = errors_by_cell(result.autograded(f"{kind}-{name}"), nbtools.is_test)
        pytest.fail(f"{name}: expected to lose exactly {entry['loses']}; unexpected scores {wrong}\nfailing test cells: {errors}")


@pytest.mark.parametrize("assignment,kind,name", HINT_CASES, ids=[f"{a}-{n}" for a, _, n in HINT_CASES])
def test_check_cells_tell_the_student_what_to_fix(runs, assignment, kind, name):
    """What a student reads when running the visible checks with this wrong answer."""
    hint = bank(assignment)[kind][name]["hint"]
    messages = errors_by_cell(graded(runs, assignment).autograded(f"{kind}-{name}"), is_check_cell)
    assert any(hint in m for m in messages.values()), f"{name}: no check cell says {hint!r}; they say {messages}"


def test_release_is_in_sync_with_source(runs):
    process, out = runs["release"]
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, f"python -m autograder.release failed:\n{output[-3000:]}"
    committed = {p.relative_to(REPO / "release"): p for p in (REPO / "release").rglob("*") if p.is_file()}
    fresh = {p.relative_to(out): p for p in Path(out).rglob("*") if p.is_file()}
    assert sorted(committed) == sorted(fresh), f"release/ holds {sorted(map(str, committed))}, regenerating gives {sorted(map(str, fresh))}: run `make release`"
    stale = [str(rel) for rel in fresh if fresh[rel].read_bytes() != committed[rel].read_bytes()]
    assert not stale, f"release/ is out of date for {stale}: run `make release`"


# --------------------------------------------------------------------------- the nbgrader extensions


def _test_cell(outputs):
    meta = {"grade": True, "solution": False, "locked": True, "grade_id": "test_x", "points": 2, "schema_version": 3}
    cell = nbformat.v4.new_code_cell("assert True", metadata={"nbgrader": meta})
    cell.outputs = [nbformat.from_dict(o) for o in outputs]
    return cell


def test_stderr_in_a_test_cell_does_not_zero_it():
    from nbgrader.utils import determine_grade

    from autograder.nbgrader_ext import StderrIsNotFailure

    warned = _test_cell([{"output_type": "stream", "name": "stderr", "text": "UserWarning: careful\n"}])
    assert determine_grade(warned) == (0, 2), "stock nbgrader zeroes a cell that writes to stderr (the premise)"
    cell, _ = StderrIsNotFailure().preprocess_cell(warned, {}, 0)
    assert determine_grade(cell) == (2, 2) and cell.outputs[0].text == "UserWarning: careful\n"
    failed = _test_cell([{"output_type": "stream", "name": "stderr", "text": "w\n"},
                         {"output_type": "error", "ename": "AssertionError", "evalue": "wrong", "traceback": []}])
    cell, _ = StderrIsNotFailure().preprocess_cell(failed, {}, 0)
    assert determine_grade(cell) == (0, 2), "an error must still fail the cell"


def test_feedback_tracebacks_are_trimmed():
    from autograder.nbgrader_ext import TrimTracebacks

    cell = _test_cell([{"output_type": "error", "ename": "AssertionError", "evalue": "mode='uniform' gave ...",
                        "traceback": ["Traceback", "_hidden = secret_reference(...)", "AssertionError: mode='uniform' gave ..."]}])
    cell, _ = TrimTracebacks().preprocess_cell(cell, {}, 0)
    assert cell.outputs[0].traceback == ["AssertionError: mode='uniform' gave ..."]


def test_config_plugs_the_extensions_in():
    from nbgrader.preprocessors import Execute
    from traitlets.config.loader import PyFileConfigLoader

    from autograder.nbgrader_ext import SafeFeedback, StderrIsNotFailure

    config = PyFileConfigLoader("nbgrader_config.py", path=str(REPO)).load_config()
    pipeline = config.Autograde.autograde_preprocessors
    assert pipeline[pipeline.index(Execute) + 1] is StderrIsNotFailure
    assert SafeFeedback in config.GenerateFeedback.preprocessors  # replaces ClearHiddenTests + TrimTracebacks
