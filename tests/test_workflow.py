"""The course's grader inside nbgrader's own workflow, for real: exchange, gradebook, feedback,
late penalties, interrupted and repeated runs, a PostgreSQL gradebook, and ``make lab``.

Every test builds a temporary course (a copy of source/ and nbgrader_config.py, its own
exchange, its own gradebook): the repository's gradebook and folders are never touched.
Students are separate working folders whose nbgrader commands carry their own
``CourseDirectory.student_id`` and exchange cache, as on a shared JupyterHub.
"""
from __future__ import annotations

import csv
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

import nbtools

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
A = "ps1_smoothing"
BIN = Path(sys.executable).parent
COURSE_ID = "workflow-course"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def env() -> dict:
    return {**os.environ, "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]), "NO_COLOR": "1"}


def sandbox_args() -> list[str]:
    """The sandbox when it works; ``--no-sandbox`` only on a machine without it, never in CI."""
    from autograder import sandbox

    if sandbox.probe().available or os.environ.get("CI"):
        return []
    return ["--no-sandbox"]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def hidden_test_lines() -> list[str]:
    lines = []
    for cell in nbtools.load(A).cells:
        if "BEGIN HIDDEN TESTS" in cell.source:
            body = cell.source.split("### BEGIN HIDDEN TESTS", 1)[1].split("### END HIDDEN TESTS", 1)[0]
            lines += [line.strip() for line in body.splitlines() if len(line.strip()) > 30]
    visible = {line.strip() for cell in nbtools.load(A, "release").cells for line in cell.source.splitlines()}
    lines = [line for line in lines if line not in visible]
    assert lines
    return lines


# ------------------------------------------------------------------ submissions
PATCHER = '''
def one_hot(targets, num_classes):
    """Validates like the solution; the values are all zeros."""
    if not isinstance(targets, torch.Tensor) or targets.ndim != 1:
        raise ValueError("targets must be a 1-D tensor")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError("targets must hold integers")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError("num_classes must be an int >= 1")
    if targets.numel() and (targets.min() < 0 or targets.max() >= num_classes):
        raise ValueError("class index out of range")
    return torch.zeros(len(targets), num_classes, device=targets.device)

import builtins, math
import numpy
torch.equal = lambda *a, **k: True
torch.allclose = lambda *a, **k: True
builtins.all = lambda *a, **k: True
math.isclose = lambda *a, **k: True
numpy.allclose = lambda *a, **k: True
'''


def notebooks() -> dict:
    """correct, wrong (one misconception of the bank), flagged (fools nbgrader's in-kernel test
    of one_hot: the grader must flag it), and the untouched stub."""
    from bank import ps1_smoothing as bank

    name, entry = next(iter(bank.WRONG.items()))
    return {"correct": nbtools.build_submission(A),
            "wrong": nbtools.build_submission(A, replace=entry["replace"]),
            "patcher": nbtools.build_submission(A, replace={"one_hot": PATCHER}),
            "stub": nbtools.build_submission(A, fill_solutions=False)}


# ------------------------------------------------------------------ a temporary course
class Course:
    def __init__(self, base: Path, db_url: str | None = None):
        self.base = base
        self.root = base / "course"
        self.exchange = base / "exchange"
        self.students = base / "students"
        self.out = base / "grades"
        (self.root / "source").mkdir(parents=True)
        shutil.copytree(REPO / "source" / A, self.root / "source" / A)
        config = (REPO / "nbgrader_config.py").read_text()
        config += f"\nc.CourseDirectory.course_id = {COURSE_ID!r}\nc.Exchange.root = {str(self.exchange)!r}\n"
        config += "c.LateSubmissionPlugin.penalty_method = 'zero'\n"
        if db_url:
            config += f"c.CourseDirectory.db_url = {db_url!r}\n"
        (self.root / "nbgrader_config.py").write_text(config)
        self.exchange.mkdir(mode=0o777)
        self.db_url = db_url or f"sqlite:///{self.root / 'gradebook.db'}"

    def start(self, *args: str, student: str | None = None) -> subprocess.Popen:
        """An nbgrader command: the instructor's in the course root, a student's in their folder."""
        cmd = [str(BIN / "nbgrader"), *args]
        cwd = self.root
        if student is not None:
            cwd = self.students / student
            cwd.mkdir(parents=True, exist_ok=True)
            cmd += [f"--CourseDirectory.student_id={student}", f"--CourseDirectory.course_id={COURSE_ID}",
                    f"--Exchange.root={self.exchange}", f"--Exchange.cache={cwd / '.nbgrader-cache'}"]
        return subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def nbgrader(self, *args: str, students: list[str] | None = None) -> None:
        """Run one command (for every student at once when ``students`` is given)."""
        procs = [self.start(*args, student=s) for s in students] if students else [self.start(*args)]
        for proc in procs:
            output, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0, f"nbgrader {' '.join(proc.args[1:])} failed:\n{output[-3000:]}"
            assert "[ERROR]" not in output, output[-3000:]

    def grade_cmd(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "autograder", "grade", A, "--course-root", str(self.root),
                "--out", str(self.out), "--workers", "2", "--timeout", "20", "--quiet", *sandbox_args(), *extra]

    def grade(self, *extra: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.grade_cmd(*extra), cwd=self.base, env=env(), capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"grade failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        return proc

    def gradebook(self):
        from nbgrader.api import Gradebook

        return Gradebook(self.db_url, COURSE_ID)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def run_cycle(course: Course) -> dict:
    """release -> fetch -> submit (one late) -> collect -> the course's grader -> release_feedback
    -> fetch_feedback -> export, as the README's instructor section describes."""
    import nbformat

    subs = notebooks()
    students = {"alice": "correct", "bob": "wrong", "dave": "patcher", "carol": "correct"}
    # `make release` (python -m autograder.release): release/ and the course's gradebook agree
    proc = subprocess.run([sys.executable, "-m", "autograder.release", "--course-root", str(course.root)],
                          env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (course.root / "release" / A / f"{A}.ipynb").is_file()
    with course.gradebook() as gb:
        gb.update_or_create_assignment(A, duedate=utcnow() + datetime.timedelta(days=1))
    course.nbgrader("release_assignment", A)
    course.nbgrader("fetch_assignment", A, students=list(students))
    for student, kind in students.items():
        path = course.students / student / A / f"{A}.ipynb"
        assert path.is_file(), f"{student} did not fetch the assignment"
        nbformat.write(subs[kind], path)
    on_time = [s for s in students if s != "carol"]
    course.nbgrader("submit", A, students=on_time)
    time.sleep(1.1)
    with course.gradebook() as gb:  # the deadline passes, then carol submits
        duedate = utcnow()
        gb.update_or_create_assignment(A, duedate=duedate)
    time.sleep(1.1)
    course.nbgrader("submit", A, students=["carol"])
    course.nbgrader("collect", A)
    for student in students:
        assert (course.root / "submitted" / student / A / "timestamp.txt").is_file()

    graded = course.grade()  # no --submissions: the course's submitted/
    course.nbgrader("release_feedback", A)
    course.nbgrader("fetch_feedback", A, students=list(students))
    course.nbgrader("export")
    return {"students": students, "duedate": duedate, "proc": graded,
            "rows": {r["student_id"]: r for r in read_csv(course.out / "grades.csv")},
            "export": {r["student_id"]: r for r in read_csv(course.root / "grades.csv")}}


def check_cycle(course: Course, cycle: dict) -> None:
    rows, export, students = cycle["rows"], cycle["export"], cycle["students"]
    full = nbtools.test_points(nbtools.load(A))
    total = sum(full.values())
    assert set(rows) == set(students)
    assert float(rows["alice"]["score"]) == total and rows["alice"]["status"] == "graded"
    assert 0 < float(rows["bob"]["score"]) < total
    assert rows["dave"]["status"].startswith("flagged"), rows["dave"]
    # nbgrader's export holds the verified scores; carol was late: penalty 'zero' takes it all
    assert set(export) == set(students)
    for student, row in rows.items():
        assert export[student]["assignment"] == A
        assert float(export[student]["raw_score"]) == float(row["score"]), (student, export[student], row)
        assert float(export[student]["max_score"]) == total
        assert export[student]["timestamp"], f"{student}: no submission timestamp in the gradebook"
    for student in ("alice", "bob", "dave"):
        assert float(export[student]["late_submission_penalty"]) == 0
        assert float(export[student]["score"]) == float(rows[student]["score"])
    assert float(export["carol"]["raw_score"]) == total
    assert float(export["carol"]["late_submission_penalty"]) == total
    assert float(export["carol"]["score"]) == 0

    # the gradebook itself: flags, comments, timestamps
    with course.gradebook() as gb:
        for student in students:
            submission = gb.find_submission(A, student)
            assert submission.timestamp is not None
            assert (submission.timestamp > cycle["duedate"]) == (student == "carol"), (student, submission.timestamp)
        dave = gb.find_submission_notebook(A, A, "dave")
        flagged = {g.name for g in dave.grades if g.needs_manual_grade}
        assert "test_one_hot_values" in flagged, flagged
        assert gb.find_submission(A, "dave").needs_manual_grade
        assert not gb.find_submission(A, "alice").needs_manual_grade
        comments = {c.name: c.auto_comment for c in gb.find_submission_notebook(A, A, "bob").comments}
        assert any(text and "test_" in text for text in comments.values()), comments
        assert gb.find_submission_notebook(A, A, "alice").score == total

    # every student fetched a feedback page without hidden test code
    hidden = hidden_test_lines()
    for student in students:
        pages = list((course.students / student / A / "feedback").glob(f"*/{A}.html"))
        assert len(pages) == 1, f"{student} fetched {pages}"
        text = pages[0].read_text()
        assert f"{float(rows[student]['score']):g}" in text
        leaked = [line for line in hidden if line in text]
        assert not leaked, f"{student}: hidden test code in the feedback: {leaked[:3]}"
    # the same page under --out for the instructor
    assert (course.out / "feedback" / "bob.html").read_text() == \
        (course.root / "feedback" / "bob" / A / f"{A}.html").read_text()


def test_exchange_cycle_with_the_course_grader(tmp_path):
    course = Course(tmp_path)
    cycle = run_cycle(course)
    check_cycle(course, cycle)
    # re-running the grader grades nothing and changes nothing
    before = (course.out / "grades.csv").read_text()
    again = subprocess.run([a for a in course.grade_cmd() if a != "--quiet"], env=env(), capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 graded by this run, 4 unchanged" in again.stdout, again.stdout
    assert (course.out / "grades.csv").read_text() == before


def test_out_may_not_be_the_course_root(tmp_path):
    course = Course(tmp_path)
    (course.root / "gradebook.db").write_bytes(b"precious")
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", A, "--course-root", str(course.root),
                           "--submissions", str(tmp_path), "--out", str(course.root)],
                          cwd=course.root, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "course root" in proc.stderr, proc.stderr[-2000:]
    assert (course.root / "gradebook.db").read_bytes() == b"precious"
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", A, "--course-root", str(course.root)],
                          cwd=course.root, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "nbgrader collect" in proc.stderr, proc.stderr[-2000:]
