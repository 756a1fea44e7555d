"""The grader, end to end: the REAL ``python -m autograder grade`` command on a bank of submissions.

For each assignment one batch is graded (module-scoped, shared by every assertion): the
reference solution, correct answers in other styles, one wrong answer per misconception of
tests/bank, and the attacks of tests/attacks. Then a subset is graded again, from an LMS-style
zip, with a different number of workers, and must give identical rows.
"""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from attacks import ALL, Context, cases, nbtools

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "build" / "test-grader"
ASSIGNMENTS = nbtools.available("release")
CELL_TIMEOUT = 10  # the infinite-loop attack costs two of these (the probe and the test)
RERUN = ["correct", "stub", "attack-patch-comparisons", "attack-os-exit"]


def grade(assignment: str, submissions: Path, out: Path, workers: int, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "autograder", "grade", assignment, "--submissions", str(submissions),
           "--out", str(out), "--workers", str(workers), "--timeout", str(CELL_TIMEOUT), "--private", "--force", *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def sandboxed() -> bool:
    from autograder import sandbox

    return sandbox.probe().available


class Batch:
    def __init__(self, assignment: str):
        self.assignment = assignment
        root = BUILD / assignment
        shutil.rmtree(root, ignore_errors=True)
        self.ctx = Context(out=root / "out", submissions=root / "submissions", markers=root / "markers")
        self.ctx.markers.mkdir(parents=True)
        self.cases = {c.student_id: c for c in cases(assignment, self.ctx)}
        self.checked = {s for s, c in self.cases.items() if not c.needs_sandbox or sandboxed()}
        for case in self.cases.values():
            case.write(self.ctx.submissions, assignment)
        self.hashes = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in self.ctx.submissions.rglob("*") if p.is_file()}
        self.points = nbtools.test_points(nbtools.load(assignment))
        # without a working sandbox the grader refuses unless told --no-sandbox (then it warns);
        # the expectations that hold only inside bubblewrap are left out of `checked`
        self.proc = grade(assignment, self.ctx.submissions, self.ctx.out, 2,
                          *(() if sandboxed() else ("--no-sandbox",)))
        out = self.ctx.out
        self.rows = {r["student_id"]: r for r in read_csv(out / "grades.csv")} if (out / "grades.csv").exists() else {}
        self.problems = read_csv(out / "problems.csv") if (out / "problems.csv").exists() else []
        self.details = {}
        if (out / "details.jsonl").exists():
            for line in (out / "details.jsonl").read_text().splitlines():
                record = json.loads(line)
                self.details[record["student_id"]] = record

    def expected(self, student: str) -> dict[str, float]:
        case = self.cases[student]
        lost = set(self.points) if case.loses == ALL else set(case.loses)
        return {g: (0.0 if g in lost else p) for g, p in self.points.items()}

    def scores(self, student: str) -> dict[str, float]:
        return {p["grade_id"]: float(p["score"]) for p in self.problems if p["student_id"] == student}


@pytest.fixture(scope="module", params=ASSIGNMENTS)
def batch(request) -> Batch:
    result = Batch(request.param)
    assert result.proc.returncode == 0, f"grade failed:\n{result.proc.stdout[-3000:]}\n{result.proc.stderr[-5000:]}"
    return result


def test_every_submission_gets_exactly_one_row(batch):
    assert sorted(batch.rows) == sorted(batch.cases)
    assert len(batch.problems) == len(batch.cases) * len(batch.points)
    for row in batch.rows.values():
        assert float(row["max_score"]) == sum(batch.points.values()), row  # points from the source
    assert "submissions in" in batch.proc.stdout  # the summary table
    assert (batch.ctx.out / "histogram.png").stat().st_size > 1000


def test_scores_per_problem(batch):
    wrong = []
    for student in batch.checked:
        want, got = batch.expected(student), batch.scores(student)
        if want != got:
            diff = {g: (got.get(g), w) for g, w in want.items() if got.get(g) != w}
            wrong.append(f"{student}: got/expected {diff}")
        assert float(batch.rows[student]["score"]) == sum(got.values())
    assert not wrong, "\n".join(wrong)


def test_status(batch):
    wrong = []
    for student, case in batch.cases.items():
        if student not in batch.checked:
            continue
        status = batch.rows[student]["status"]
        want = case.status
        if want and not (status == want if want == "graded" else status.startswith(want + ":")):
            wrong.append(f"{student}: status {status!r}, expected {want!r}")
    assert not wrong, "\n".join(wrong)


def test_attacks_fool_the_kernel_but_not_the_grader(batch):
    """Each attack marked fools_kernel really passes nbgrader's in-kernel test; the verifier says 0."""
    checked = 0
    for student, case in batch.cases.items():
        for grade_id in case.fools_kernel:
            verdict = batch.details[student]["verdicts"][grade_id]
            assert verdict["kernel_score"] == batch.points[grade_id], (student, grade_id, verdict)
            assert verdict["score"] == 0, (student, grade_id, verdict)
            assert grade_id in batch.rows[student]["status"], batch.rows[student]
            checked += 1
    assert checked or batch.assignment not in ("ps1_smoothing", "ps2_losses", "ps3_calibration")


def test_student_code_cannot_reach_other_files(batch):
    if not sandboxed():
        pytest.skip("no bubblewrap sandbox here: student code has the grader's rights (the grader warns)")
    assert not list(batch.ctx.markers.iterdir())
    for path, digest in batch.hashes.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"{path} was modified"


def test_gradebook_holds_the_verified_scores(batch):
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{batch.ctx.out / 'gradebook.db'}") as gb:
        for student, row in batch.rows.items():
            submission = gb.find_submission(batch.assignment, student)
            assert submission.score == pytest.approx(float(row["score"])), student
    export = read_csv(batch.ctx.out / "nbgrader_export.csv")
    assert {r["student_id"] for r in export} == set(batch.rows)


def test_feedback_shows_messages_not_hidden_tests(batch):
    source = nbtools.load(batch.assignment)
    hidden = []
    for cell in source.cells:
        if "BEGIN HIDDEN TESTS" in cell.source:
            body = cell.source.split("### BEGIN HIDDEN TESTS", 1)[1].split("### END HIDDEN TESTS", 1)[0]
            hidden += [line.strip() for line in body.splitlines() if len(line.strip()) > 30 and "assert" not in line]
    assert hidden
    for student, case in batch.cases.items():
        page = batch.ctx.out / "feedback" / f"{student}.html"
        if case.notebook is None or isinstance(case.notebook, bytes):
            continue
        text = page.read_text()
        # a hidden line that the student's own notebook also holds (the visible set-up cell's
        # `import torch.nn.functional as F`, an answer written like the reference) reveals nothing
        own = {line.strip() for cell in case.notebook.cells for line in cell.source.splitlines()}
        leaked = [line for line in hidden if line in text and line not in own]
        assert not leaked, f"{student}: hidden test code in the feedback: {leaked[:3]}"
        assert "verified by the grader" in text
    import html

    wrong = next(s for s in batch.cases if s.startswith("wrong-"))
    lost = batch.cases[wrong].loses[0]
    message = batch.details[wrong]["verdicts"][lost]["message"]
    page = html.unescape((batch.ctx.out / "feedback" / f"{wrong}.html").read_text())
    assert message.startswith("AssertionError: ")
    assert message[len("AssertionError: "):][:40] in page


def test_second_run_from_a_zip_with_one_worker_gives_identical_rows(batch, tmp_path):
    """LMS download (nbgrader zip_collect naming), --workers 1: the same rows as the batch."""
    subset = [s for s in RERUN if s in batch.cases]
    archive = tmp_path / "download.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for student in subset:
            case = batch.cases[student]
            name = f"{batch.assignment}_{student}_attempt_2026-01-30-15-00-00_{batch.assignment}.ipynb"
            src = batch.ctx.submissions / student / f"{batch.assignment}.ipynb"
            if src.exists():
                zf.write(src, name)
            elif case.notebook is not None:
                raise AssertionError(student)
    folder = tmp_path / "subs"
    folder.mkdir()
    shutil.copy(archive, folder / archive.name)
    regexp = rf".*/{batch.assignment}_(?P<student_id>[A-Za-z0-9_-]+)_attempt_(?P<timestamp>[0-9\-]+)_(?P<file_id>\w+)\.ipynb"
    proc = grade(batch.assignment, folder, tmp_path / "out", 1, "--zip-regexp", regexp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["student_id"]: r for r in read_csv(tmp_path / "out" / "grades.csv")}
    expected = {s for s in subset if batch.cases[s].notebook is not None}
    assert set(rows) == expected
    for student in expected:
        assert rows[student] == batch.rows[student]
    again = [p for p in read_csv(tmp_path / "out" / "problems.csv")]
    assert again == [p for p in batch.problems if p["student_id"] in expected]


def test_sandbox_is_used_or_warned(batch):
    """With a working sandbox every submission ran in it (run.json); without one the batch ran
    only because --no-sandbox was given, and the grader said so (tests/test_sandbox.py proves the
    refusal, and fails under CI=true where no sandbox can start)."""
    manifest = json.loads((batch.ctx.out / "run.json").read_text())
    ran = manifest["submissions"]
    assert set(ran) == set(batch.rows)
    if sandboxed():
        assert "sandbox disabled" not in batch.proc.stderr and manifest["requested"] is True
        started = {s: r for s, r in ran.items() if r.get("kernel") != "none started"}
        assert started and all(r["sandboxed"] is True for r in started.values()), started
    else:
        assert "WARNING: sandbox disabled (--no-sandbox)" in batch.proc.stderr
        assert manifest["requested"] is False and not any(r["sandboxed"] for r in ran.values())


def test_submission_timeout_and_no_sandbox_mode(tmp_path):
    """A submission that sleeps past --submission-timeout is cut off (failed: timeout) and still
    gets its row; --no-sandbox grades with a warning."""
    assignment = ASSIGNMENTS[0]
    answers = nbtools.solution_sources(assignment)
    questions = [g for g in answers if g.startswith("q")]
    slow = {g: answers[g] + "\nimport time\ntime.sleep(5)" for g in questions}
    subs = tmp_path / "subs"
    for student, nb in (("sleeper", nbtools.build_submission(assignment, slow)),):
        (subs / student).mkdir(parents=True)
        nbtools.nbformat.write(nb, subs / student / f"{assignment}.ipynb")
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", assignment, "--submissions", str(subs),
                           "--out", str(tmp_path / "out"), "--workers", "1", "--timeout", "20", "--private",
                           "--submission-timeout", "10"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = read_csv(tmp_path / "out" / "grades.csv")
    assert row["student_id"] == "sleeper" and row["status"].startswith("failed: timeout"), row
    assert float(row["score"]) < sum(nbtools.test_points(nbtools.load(assignment)).values())

    shutil.rmtree(subs / "sleeper")
    (subs / "honest").mkdir()
    nbtools.nbformat.write(nbtools.build_submission(assignment), subs / "honest" / f"{assignment}.ipynb")
    proc = grade(assignment, subs, tmp_path / "out2", 1, "--no-sandbox")
    assert proc.returncode == 0 and "sandbox disabled" in proc.stderr
    (row,) = read_csv(tmp_path / "out2" / "grades.csv")
    assert row["status"] == "graded" and float(row["score"]) == float(row["max_score"])
