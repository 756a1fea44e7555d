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
from attacks.ps1_smoothing import VALIDATING_ZEROS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
A = "ps1_smoothing"
BIN = Path(sys.executable).parent
COURSE_ID = "workflow-course"
PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
             default=Path("/usr/lib/postgresql/15/bin"))  # Debian's layout


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
# the attack bank's zeros-returning one_hot, with nbgrader's comparisons patched to always agree
PATCHER = VALIDATING_ZEROS + '''
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
        started = time.monotonic()
        procs = [self.start(*args, student=s) for s in students] if students else [self.start(*args)]
        for proc in procs:
            output, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0, f"nbgrader {' '.join(proc.args[1:])} failed:\n{output[-3000:]}"
            assert "[ERROR]" not in output, output[-3000:]
        print(f"[{time.monotonic() - started:6.1f} s] nbgrader {args[0]} x{len(procs)}")

    def grade_cmd(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "autograder", "grade", A, "--course-root", str(self.root),
                "--out", str(self.out), "--workers", "2", "--timeout", "20", "--quiet", *sandbox_args(), *extra]

    def grade(self, *extra: str) -> subprocess.CompletedProcess:
        started = time.monotonic()
        proc = subprocess.run(self.grade_cmd(*extra), cwd=self.base, env=env(), capture_output=True, text=True,
                              timeout=600)
        print(f"[{time.monotonic() - started:6.1f} s] grade {' '.join(extra)}")
        assert proc.returncode == 0, f"grade failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        return proc

    def gradebook(self):
        from nbgrader.api import Gradebook

        return Gradebook(self.db_url, COURSE_ID)


@pytest.fixture
def base():
    """A temporary folder the sandbox's per-worker uids can traverse (pytest's tmp_path is 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="workflow-"))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


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


def test_exchange_cycle_with_the_course_grader(base):
    course = Course(base)
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


# ------------------------------------------------------------------ interrupted runs
def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def journal_lines(out: Path) -> list[dict]:
    path = out / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


BATCH = {"s1": "correct", "s2": "wrong", "s3": "patcher", "s4": "stub", "s5": "correct"}


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """A folder of submissions and the results of one uninterrupted run on it."""
    import nbformat

    base = Path(tempfile.mkdtemp(prefix="workflow-batch-"))
    os.chmod(base, 0o755)
    subs = base / "submissions"
    kinds = notebooks()
    for student, kind in BATCH.items():
        (subs / student).mkdir(parents=True)
        nbformat.write(kinds[kind], subs / student / f"{A}.ipynb")
    reference = Course(base / "reference")
    reference.grade("--submissions", str(subs))
    rows = {r["student_id"]: r for r in read_csv(reference.out / "grades.csv")}
    assert rows["s1"]["status"] == "graded" and float(rows["s1"]["score"]) == float(rows["s1"]["max_score"]), rows
    yield subs, results_of(reference)
    shutil.rmtree(base, ignore_errors=True)


def results_of(course: Course) -> dict:
    with course.gradebook() as gb:
        scores = {s.student.id: s.score for s in gb.find_assignment(A).submissions}
    return {"grades": (course.out / "grades.csv").read_text(), "problems": (course.out / "problems.csv").read_text(),
            "gradebook": scores}


def interrupted_then_rerun(tmp_path: Path, subs: Path, reference: dict, kill) -> None:
    course = Course(tmp_path)
    proc = subprocess.Popen(course.grade_cmd("--submissions", str(subs)), env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    started, family = time.monotonic(), []
    try:
        while len(journal_lines(course.out)) < 1:
            assert proc.poll() is None, f"the run ended before it could be interrupted:\n{proc.stderr.read()[-3000:]}"
            assert time.monotonic() - started < 400, "no result recorded in time"
            time.sleep(0.2)
        family = descendants(proc.pid)
        kill(proc)
        try:
            proc.wait(timeout=240)
        except subprocess.TimeoutExpired:
            proc.kill()  # a run that cannot go on after losing a worker counts as interrupted too
            proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_all(family + descendants(proc.pid))
    done = len(journal_lines(course.out))
    rerun = subprocess.run([a for a in course.grade_cmd("--submissions", str(subs)) if a != "--quiet"], env=env(),
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert results_of(course) == reference
    students = [r["student_id"] for r in journal_lines(course.out)]
    assert sorted(students) == sorted(BATCH), students  # every row exactly once
    if done < len(BATCH):
        assert f"{len(BATCH) - done} graded by this run, {done} unchanged" in rerun.stdout, rerun.stdout
    third = subprocess.run([a for a in course.grade_cmd("--submissions", str(subs)) if a != "--quiet"], env=env(),
                           capture_output=True, text=True, timeout=600)
    assert third.returncode == 0 and f"0 graded by this run, {len(BATCH)} unchanged" in third.stdout, third.stdout
    assert results_of(course) == reference


def test_sigkill_of_the_grade_command_loses_nothing(base, batch):
    subs, reference = batch
    interrupted_then_rerun(base, subs, reference, lambda proc: os.kill(proc.pid, signal.SIGKILL))


def test_sigkill_of_a_worker_loses_nothing(base, batch):
    subs, reference = batch

    def kill_worker(proc):
        workers = [p for p in descendants(proc.pid) if cmdline(p) == cmdline(proc.pid)]
        assert workers, "no worker process found"
        os.kill(workers[0], signal.SIGKILL)

    interrupted_then_rerun(base, subs, reference, kill_worker)


# ------------------------------------------------------------------ PostgreSQL
@pytest.fixture
def postgres():
    """A PostgreSQL server of the test's own (Debian's postgresql 15), on a unix socket."""
    if not (PG_BIN / "initdb").exists():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (.ci/run installs it)")
        pytest.skip("PostgreSQL is not installed here (apt-get install postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="pg-"))
    prefix = []
    if os.getuid() == 0:  # postgres refuses to run as root
        user = "postgres" if subprocess.run(["id", "postgres"], capture_output=True).returncode == 0 else "nobody"
        shutil.chown(folder, user)
        os.chmod(folder, 0o700)
        prefix = ["runuser", "-u", user, "--"]
    data = folder / "data"

    def run(*cmd):
        proc = subprocess.run(prefix + list(cmd), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    run(str(PG_BIN / "initdb"), "-D", str(data), "-U", "grader", "--auth=trust", "-E", "UTF8")
    run(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
        f"-k {folder} -c listen_addresses=''", "start")
    try:
        run(str(PG_BIN / "createdb"), "-h", str(folder), "-U", "grader", "gradebook")
        yield f"postgresql+psycopg2://grader@/gradebook?host={folder}"
    finally:
        subprocess.run(prefix + [str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def test_exchange_cycle_with_a_postgresql_gradebook(base, postgres):
    course = Course(base, db_url=postgres)
    cycle = run_cycle(course)
    check_cycle(course, cycle)
    assert not (course.root / "gradebook.db").exists(), "SQLite was used instead of PostgreSQL"
    import sqlalchemy

    engine = sqlalchemy.create_engine(postgres)
    with engine.connect() as db:
        flagged = db.execute(sqlalchemy.text(
            "select count(*) from grade join submitted_notebook n on grade.notebook_id = n.id "
            "join submitted_assignment s on n.assignment_id = s.id where s.student_id = 'dave' "
            "and grade.needs_manual_grade")).scalar()
    engine.dispose()
    assert flagged >= 1


# ------------------------------------------------------------------ make lab
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_make_lab_uses_the_instructors_jupyter_config(tmp_path):
    """`make lab` as root, on a free port, with the instructor's ~/.jupyter (exchange root and
    course id): the server answers, formgrader is loaded, and the Assignment List sees the course."""
    home = tmp_path / "home"
    exchange = tmp_path / "exchange"
    released = exchange / "instructors-course" / "outbound" / A
    released.mkdir(parents=True)
    shutil.copy(REPO / "release" / A / f"{A}.ipynb", released)  # as release_assignment leaves it
    (home / ".jupyter").mkdir(parents=True)
    (home / ".jupyter" / "nbgrader_config.py").write_text(
        f"c = get_config()\nc.Exchange.root = {str(exchange)!r}\nc.CourseDirectory.course_id = 'instructors-course'\n")
    port, token = free_port(), "workflow-test-token"
    lab_env = {k: v for k, v in env().items() if not k.startswith(("JUPYTER_", "IPYTHONDIR", "MPLCONFIGDIR"))}
    lab_env["HOME"] = str(home)
    args = f"--no-browser --port {port} --ServerApp.ip=127.0.0.1 --IdentityProvider.token={token}"
    proc = subprocess.Popen(["make", "-s", "lab", f"LAB_ARGS={args}"], cwd=REPO, env=lab_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        answer = None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api", timeout=5) as response:
                    answer = json.loads(response.read())
                    break
            except OSError:
                time.sleep(1)
        assert answer and "version" in answer, f"no answer from /api; make lab said:\n{_drain(proc)}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/formgrader?token={token}", timeout=30) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/courses?token={token}", timeout=60) as response:
            courses = json.loads(response.read())
        assert courses.get("success") and "instructors-course" in courses.get("value", []), courses
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = proc.stdout.read()
    assert "nbgrader.server_extensions.formgrader" in output, output[-3000:]


def _drain(proc) -> str:
    if proc.poll() is None:
        return "(still running)"
    return proc.stdout.read()[-3000:]
