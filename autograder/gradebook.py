"""The record step: the grader's verified results into nbgrader's own places.

For each graded submission the main process (never a worker, never student code) writes:

* the course's gradebook, through nbgrader's :class:`nbgrader.api.Gradebook` and the course's
  ``CourseDirectory.db_url`` (SQLite at the course root by default, PostgreSQL or any other
  SQLAlchemy URL when the course configures one): the student, the submission with its timestamp,
  the verified score of every test cell as ``auto_score``, ``needs_manual_grade`` on the test
  cells the grader could not vouch for, the verifier's message for every failed test and the
  flag's reason as the ``auto_comment`` of the answer cell it belongs to, and nbgrader's late
  penalty (the course's ``LateSubmissionPlugin`` against the assignment's ``duedate``, exactly as
  ``AssignLatePenalties`` computes it). Formgrader, ``nbgrader export`` and late penalties then
  work unchanged;
* ``autograded/<student>/<assignment>/<assignment>.ipynb`` and
  ``feedback/<student>/<assignment>/<assignment>.html``, each folder with the submission's
  ``timestamp.txt`` and ``submission_secret.txt``, where ``nbgrader release_feedback`` looks for
  them (students get the page with ``fetch_feedback``).

The course's configuration is read the way nbgrader reads it: ``nbgrader_config.py`` in every
Jupyter config directory (``~/.jupyter`` included), then the course root's.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

NOTES_FILES = ("timestamp.txt", "submission_secret.txt")


# --------------------------------------------------------------------------- configuration
def course_config(root: Path):
    """nbgrader's configuration for the course at ``root``: ``nbgrader_config.py`` of every
    Jupyter config directory (lowest priority first), then the course root's own."""
    from jupyter_core.paths import jupyter_config_path
    from traitlets.config import Config
    from traitlets.config.loader import PyFileConfigLoader

    config = Config()
    root = Path(root).resolve()
    paths = [Path(p) for p in reversed(jupyter_config_path())] + [root]
    seen = set()
    for folder in paths:
        path = (folder / "nbgrader_config.py").resolve()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        config.merge(PyFileConfigLoader(path.name, path=str(path.parent)).load_config())
    config.CourseDirectory.root = str(root)
    return config


def course_directory(root: Path, config=None):
    from nbgrader.coursedir import CourseDirectory

    config = config if config is not None else course_config(root)
    return CourseDirectory(config=config)


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a run records: a gradebook (``db_url``, ``course_id``) and the folder that gets
    ``autograded/`` and ``feedback/`` (the course root, or ``--out`` for a private run)."""

    db_url: str
    course_id: str
    root: Path
    autograded: str = "autograded"
    feedback: str = "feedback"
    private: bool = False

    def describe(self) -> str:
        return _redact(self.db_url)


def course_target(root: Path, db_url: str | None = None) -> Target:
    coursedir = course_directory(root)
    return Target(db_url=db_url or coursedir.db_url, course_id=coursedir.course_id, root=Path(coursedir.root),
                  autograded=coursedir.autograded_directory, feedback=coursedir.feedback_directory)


def private_target(out: Path, course_id: str) -> Target:
    return Target(db_url=f"sqlite:///{Path(out).resolve() / 'gradebook.db'}", course_id=course_id,
                  root=Path(out).resolve(), private=True)


def submitted_directory(root: Path) -> Path:
    """The course's ``submitted/`` (``CourseDirectory.submitted_directory``), where ``nbgrader
    collect`` puts ``<student>/<assignment>/<assignment>.ipynb`` and ``timestamp.txt``."""
    coursedir = course_directory(root)
    return Path(coursedir.root) / coursedir.submitted_directory


def _redact(url: str) -> str:
    """A database URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


# --------------------------------------------------------------------------- timestamps
def parse_timestamp(text: str | None) -> datetime.datetime | None:
    """nbgrader's ``timestamp.txt`` format (``2026-01-30 15:00:00.000000 UTC``) or an LMS file
    name's ``2026-01-30-15-00-00``, as naive UTC (nbgrader's convention); None when absent."""
    from nbgrader.utils import parse_utc

    if text is None or not str(text).strip():
        return None
    text = str(text).strip()
    try:
        return parse_utc(text)
    except (ValueError, OverflowError):
        pass
    for fmt in ("%Y-%m-%d-%H-%M-%S", "%Y%m%d%H%M%S", "%Y-%m-%d-%H%M%S"):
        try:
            return datetime.datetime.strptime(text, fmt)
        except ValueError:
            continue
    raise ValueError(f"unreadable submission timestamp {text!r}")


def format_timestamp(when: datetime.datetime) -> str:
    """What ``nbgrader submit`` writes to ``timestamp.txt``."""
    return when.strftime("%Y-%m-%d %H:%M:%S.%f UTC")


def submission_notes(notebook_path: str | None) -> dict[str, str]:
    """``timestamp.txt`` and ``submission_secret.txt`` next to a submitted notebook (nbgrader's
    exchange writes both), read by the main process."""
    found = {}
    if notebook_path:
        folder = Path(notebook_path).parent
        for name in NOTES_FILES:
            path = folder / name
            if path.is_file() and path.stat().st_size < 4096:
                found[name] = path.read_text(encoding="utf-8", errors="replace")
    return found


# --------------------------------------------------------------------------- the assignment
@contextlib.contextmanager
def _nbgrader_env():
    """nbgrader runs ``alembic`` from PATH when it creates a gradebook; chatter goes to stderr."""
    from .release import nbgrader_runs_here

    cwd = os.getcwd()
    with nbgrader_runs_here(), contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        from sqlalchemy.exc import SAWarning

        warnings.simplefilter("ignore", SAWarning)
        try:
            yield
        finally:
            os.chdir(cwd)


def open_gradebook(target: Target):
    from nbgrader.api import Gradebook

    warnings.filterwarnings("ignore", module="nbgrader")
    with _nbgrader_env():
        return Gradebook(target.db_url, target.course_id)


def close(gb) -> None:
    """Close a gradebook and its connection pool (no connection may outlive it into a fork)."""
    gb.close()
    gb.engine.dispose()


def recorded_students(target: Target, assignment: str) -> set[str]:
    """Students whose submission of ``assignment`` holds automatic scores in the gradebook."""
    from nbgrader.api import Assignment, Grade, SubmittedAssignment, SubmittedNotebook

    gb = open_gradebook(target)
    try:
        query = (gb.db.query(SubmittedAssignment.student_id).join(Assignment)
                 .join(SubmittedNotebook, SubmittedNotebook.assignment_id == SubmittedAssignment.id)
                 .join(Grade, Grade.notebook_id == SubmittedNotebook.id)
                 .filter(Assignment.name == assignment, Grade.auto_score.isnot(None)))
        return {row[0] for row in query.distinct()}
    finally:
        close(gb)


def _structure(gb, assignment: str) -> dict | None:
    """``{notebook: {grade cell: points}}`` of an assignment in a gradebook, None if absent."""
    from nbgrader.api import MissingEntry

    try:
        found = gb.find_assignment(assignment)
    except MissingEntry:
        return None
    return {nb.name: {c.name: float(c.max_score) for c in nb.grade_cells} for nb in found.notebooks}


def ensure_assignment(target: Target, course_root: Path, assignment: str, template_db: Path) -> str | None:
    """Make the gradebook hold the assignment exactly as nbgrader's ``generate_assignment``
    records it from ``source/`` (notebook, grade cells and points, checksums): added when
    missing, updated when the points or cells differ from the template the grader built; the
    duedate and existing submissions are kept. Returns what was done, or None."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{template_db}") as gb:
        want = _structure(gb, assignment)
    gb = open_gradebook(target)
    try:
        have = _structure(gb, assignment)
    finally:
        close(gb)
    if have == want:
        return None
    generate_into(target, course_root, assignment)
    return ("added" if have is None else "updated") + f" assignment {assignment} in the gradebook {target.describe()}"


def generate_into(target: Target, course_root: Path, assignment: str) -> None:
    """nbgrader's ``generate_assignment --force`` recording into ``target``'s gradebook; its
    student version goes to a throw-away folder (the committed release/ is not touched)."""
    from nbgrader.converters import GenerateAssignment

    config = course_config(course_root)
    config.CourseDirectory.db_url = target.db_url
    config.CourseDirectory.course_id = target.course_id
    with tempfile.TemporaryDirectory(prefix="autograder-release-") as tmp, _nbgrader_env():
        config.CourseDirectory.release_directory = str(Path(tmp) / "release")
        coursedir = course_directory(course_root, config)
        coursedir.assignment_id = assignment
        app = GenerateAssignment(coursedir=coursedir, config=config)
        app.force = True
        app.create_assignment = True
        app.start()


# --------------------------------------------------------------------------- per-submission
def _answer_of(grade_id: str, answers: list[str]) -> str | None:
    """The answer cell a test cell belongs to: ``test_<answer>...`` (the longest such name)."""
    matches = [a for a in answers if grade_id == f"test_{a}" or grade_id.startswith(f"test_{a}_")]
    return max(matches, key=len) if matches else None


class Recorder:
    """Writes one result at a time into the target gradebook (one connection for the run)."""

    def __init__(self, target: Target, assignment: str, config=None):
        from nbgrader.preprocessors import AssignLatePenalties

        self.target, self.assignment = target, assignment
        self.config = config
        self.gb = open_gradebook(target)
        pipeline = config.Autograde.get("autograde_preprocessors", None) if config is not None else None
        names = {getattr(p, "__name__", str(p).rsplit(".", 1)[-1]) for p in pipeline} if pipeline else {"AssignLatePenalties"}
        # nbgrader's own late-penalty step, with the course's configured plugin
        self.late = AssignLatePenalties(config=config) if "AssignLatePenalties" in names else None
        if self.late is not None:
            self.late.init_plugin()

    def close(self) -> None:
        close(self.gb)

    def record(self, result: dict, disputed: set, timestamp: datetime.datetime | None) -> dict:
        """Scores, flags, comments, timestamp and late penalty of one submission; returns
        ``{"late_seconds": ..., "late_penalty": ...}``."""
        gb, student = self.gb, result["student_id"]
        try:
            gb.update_or_create_student(student)
            submission = gb.update_or_create_submission(self.assignment, student)
            if timestamp is not None:  # as nbgrader's autograde: no timestamp keeps the old one
                submission.timestamp = timestamp
            notebook = gb.find_submission_notebook(self.assignment, self.assignment, student)
            verdicts = result["verdicts"]
            needs_look = result["status"] != "graded"
            flag_all = needs_look and not disputed
            for grade in notebook.grades:
                verdict = verdicts.get(grade.name)
                if verdict is None:
                    continue  # a manually graded cell: untouched
                grade.auto_score = float(verdict["score"])
                grade.needs_manual_grade = grade.name in disputed or flag_all
            self._comments(notebook, result, disputed)
            gb.db.commit()
            info = {"late_seconds": float(submission.total_seconds_late), "late_penalty": None}
            notebook.late_submission_penalty = None
            if self.late is not None and submission.total_seconds_late > 0:
                penalty = self.late.plugin_inst.late_submission_penalty(
                    student, notebook.score, submission.total_seconds_late)
                if penalty is not None:
                    penalty = min(max(0.0, float(penalty)), float(notebook.score))
                    notebook.late_submission_penalty = penalty
                    info["late_penalty"] = penalty
            gb.db.commit()
            return info
        except BaseException:
            gb.db.rollback()
            raise

    @staticmethod
    def _comments(notebook, result: dict, disputed: set) -> None:
        comments = list(notebook.comments)
        if not comments:
            return
        answers = [c.name for c in comments]
        lines: dict[str, list[str]] = {name: [] for name in answers}
        unplaced = []
        for grade_id, verdict in result["verdicts"].items():
            text = None
            if grade_id in disputed:
                text = f"{grade_id}: needs manual grade: " + (
                    "the grader could not verify this test" if verdict.get("unverifiable") else
                    f"nbgrader's in-kernel test gave {verdict.get('kernel_score')} points, "
                    f"the independent check {verdict['score']:g}") + f" ({verdict.get('message') or ''})".rstrip(" ()")
            elif verdict["score"] < verdict["max_score"]:
                text = f"{grade_id} ({verdict['score']:g}/{verdict['max_score']:g}): {verdict.get('message') or 'failed'}"
            if text is None:
                continue
            owner = _answer_of(grade_id, answers)
            (lines[owner] if owner else unplaced).append(text)
        status = result["status"]
        head = [] if status == "graded" else [("needs manual grade: " if status.startswith(("flagged", "failed")) else "") + status]
        for index, comment in enumerate(comments):
            text = (head if index == 0 else []) + lines[comment.name] + (unplaced if index == 0 else [])
            comment.auto_comment = "\n".join(text) if text else None


# --------------------------------------------------------------------------- files
def atomic_write(path: Path, data: str | bytes) -> None:
    """Write to a temporary name in the same folder, fsync, then rename: a reader (or a crash)
    sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def submission_paths(target: Target, student: str, assignment: str) -> tuple[Path, Path]:
    """The folders of one submission in ``autograded/`` and ``feedback/`` (nbgrader's layout)."""
    def folder(step: str) -> Path:
        return target.root / step / student / assignment
    return folder(target.autograded), folder(target.feedback)


def write_submission(target: Target, assignment: str, result: dict, notes: dict[str, str],
                     timestamp: datetime.datetime | None) -> Path | None:
    """The autograded notebook and the feedback page of one submission, each folder with the
    submission's ``timestamp.txt`` and ``submission_secret.txt``. Returns the page's path."""
    student = result["student_id"]
    autograded, feedback = submission_paths(target, student, assignment)
    extra = dict(notes)
    if "timestamp.txt" not in extra and timestamp is not None:
        extra["timestamp.txt"] = format_timestamp(timestamp)
    notebook = result.get("autograded")
    page = result.get("feedback_html")
    if notebook is not None:
        for name, text in extra.items():
            atomic_write(autograded / name, text)
        atomic_write(autograded / f"{assignment}.ipynb", notebook)
    if page is not None:
        for name, text in extra.items():
            atomic_write(feedback / name, text)
        atomic_write(feedback / f"{assignment}.html", page)
        return feedback / f"{assignment}.html"
    return None


def link_or_copy(src: Path, dest: Path) -> None:
    """``dest`` becomes the same file as ``src`` (a hard link; a copy across file systems)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.link")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def export(target: Target, assignment: str, dest: Path) -> None:
    """nbgrader's own CSV export (``CsvExportPlugin``) of this assignment, written atomically."""
    from nbgrader.plugins.export import CsvExportPlugin

    gb = open_gradebook(target)
    try:
        tmp = dest.with_name(f".{dest.name}.tmp")
        CsvExportPlugin(to=str(tmp), assignment=[assignment]).export(gb)
        os.replace(tmp, dest)
    finally:
        close(gb)
