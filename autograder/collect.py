"""Finding the submissions: a folder per student, or LMS zip downloads.

Two layouts are accepted under ``--submissions DIR`` (both at once too):

* ``DIR/<student_id>/<ASSIGNMENT>.ipynb`` (also nbgrader's ``DIR/<student_id>/<ASSIGNMENT>/<ASSIGNMENT>.ipynb``);
* LMS downloads, following nbgrader's ``zip_collect`` conventions: every archive (``.zip``,
  ``.gz``) in DIR (or DIR itself being a ``.zip`` file) is extracted with nbgrader's
  ``ExtractorPlugin`` (archives inside archives too), and every extracted ``.ipynb`` is
  attributed with nbgrader's ``FileNameCollectorPlugin``: its ``named_regexp`` must provide the
  ``student_id`` and ``file_id`` groups and may provide ``timestamp``; the file counts for this
  assignment when ``file_id`` without extension is the assignment name. The regexp comes from
  ``--zip-regexp``, else from ``FileNameCollectorPlugin.named_regexp`` in ``nbgrader_config.py``,
  else nbgrader's documented example ``.*_(?P<student_id>\\w+)_attempt_(?P<timestamp>[0-9\\-]+)_(?P<file_id>\\w+)``,
  i.e. files named like ``ps1_smoothing_bitdiddle_attempt_2016-01-30-15-00-00_ps1_smoothing.ipynb``.
  When a student has several attempts, the latest timestamp wins (as in ``zip_collect``).

Nothing is dropped: a student folder without the notebook, or an extracted notebook whose name
the regexp cannot attribute, still gets a row (``failed: ...``).
"""
from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

DEFAULT_REGEXP = r".*_(?P<student_id>\w+)_attempt_(?P<timestamp>[0-9\-]+)_(?P<file_id>\w+)"
ARCHIVES = (".zip", ".gz")
_SAFE = re.compile(r"[^A-Za-z0-9._@+~-]")


@dataclasses.dataclass
class Submission:
    """One row of the run. ``data`` is the notebook's bytes, read by the main process before any
    student code runs (:func:`load`): what is graded cannot be changed afterwards by another
    submission's kernel, sandboxed or not."""

    student_id: str
    path: str | None
    problem: str | None = None
    data: bytes | None = None
    timestamp: str | None = None


#: a notebook larger than this is a ``failed: invalid notebook`` row, not read into memory
MAX_NOTEBOOK_BYTES = 50 << 20


def load(found: list[Submission]) -> list[Submission]:
    """Read every notebook into memory (the main process, before any kernel starts)."""
    out = []
    for sub in found:
        if sub.path is None or sub.problem:
            out.append(sub)
            continue
        try:
            size = Path(sub.path).stat().st_size
            if size > MAX_NOTEBOOK_BYTES:
                out.append(dataclasses.replace(sub, problem=f"invalid notebook: file too large ({size} bytes)"))
                continue
            out.append(dataclasses.replace(sub, data=Path(sub.path).read_bytes()))
        except OSError as exc:
            out.append(dataclasses.replace(sub, problem=f"cannot read the notebook: {exc.strerror or exc}"))
    return out


def safe_id(raw: str) -> str:
    """A student id usable as a file name and a CSV field."""
    cleaned = _SAFE.sub("_", raw.strip()).strip(".") or "unnamed"
    return cleaned[:120]


def _from_folders(root: Path, assignment: str) -> list[Submission]:
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.name == "__extracted__":
            continue
        candidates = [folder / f"{assignment}.ipynb", folder / assignment / f"{assignment}.ipynb"]
        found = next((c for c in candidates if c.is_file()), None)
        student = safe_id(folder.name)
        if found is not None:
            out.append(Submission(student, str(found)))
        else:
            others = sorted(p.name for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
            listed = f" (found: {', '.join(others[:5])})" if others else " (the folder has no notebook)"
            out.append(Submission(student, None, f"no {assignment}.ipynb in the submission{listed}"))
    return out


def _from_archives(archives: list[Path], assignment: str, staging: Path, regexp: str) -> list[Submission]:
    from nbgrader.plugins.zipcollect import ExtractorPlugin, FileNameCollectorPlugin

    archive_dir = staging / "archives"
    extracted = staging / "extracted"
    for path in (archive_dir, extracted):
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
    for archive in archives:
        shutil.copyfile(archive, archive_dir / archive.name)
    ExtractorPlugin(zip_ext=list(ARCHIVES)).extract(str(archive_dir), str(extracted))
    collector = FileNameCollectorPlugin(named_regexp=regexp)
    best: dict[str, tuple[str, str]] = {}
    unmatched = []
    for path in sorted(extracted.rglob("*.ipynb")):
        if ".ipynb_checkpoints" in path.parts or "__MACOSX" in path.parts:
            continue
        info = collector.collect(str(path))
        if not info or "student_id" not in info or "file_id" not in info:
            unmatched.append(path)
            continue
        if Path(info["file_id"]).stem != assignment and Path(info["file_id"]).name != assignment:
            continue
        student = safe_id(info["student_id"])
        stamp = info.get("timestamp") or ""
        if student not in best or stamp >= best[student][0]:
            best[student] = (stamp, str(path))
    out = [Submission(s, p, timestamp=t or None) for s, (t, p) in sorted(best.items())]
    for path in unmatched:
        out.append(Submission(safe_id("unmatched-" + path.stem), None,
                              f"cannot tell the student from the file name {path.name!r} "
                              f"(regexp {regexp!r})"))
    return out


def collect(submissions: Path, assignment: str, staging: Path, regexp: str | None = None) -> list[Submission]:
    """Every submission under ``submissions`` (see the module docstring), sorted by student id."""
    submissions = Path(submissions)
    regexp = regexp or DEFAULT_REGEXP
    if submissions.is_file():
        if submissions.suffix not in ARCHIVES:
            raise ValueError(f"--submissions must be a folder or a .zip file, got {submissions}")
        found = _from_archives([submissions], assignment, staging, regexp)
    elif submissions.is_dir():
        found = _from_folders(submissions, assignment)
        archives = sorted(p for p in submissions.iterdir() if p.is_file() and p.suffix in ARCHIVES)
        if archives:
            found += _from_archives(archives, assignment, staging, regexp)
    else:
        raise ValueError(f"--submissions {submissions} does not exist")
    # one row per student id; two different notebooks under one id both stay (suffix ~2, ~3, ...)
    seen: dict[str, Submission] = {}
    for sub in found:
        previous = seen.get(sub.student_id)
        if previous is None:
            seen[sub.student_id] = sub
        elif previous.path is None:
            seen[sub.student_id] = sub if sub.path is not None else previous
        elif sub.path is not None and sub.path != previous.path:
            n = 2
            while f"{sub.student_id}~{n}" in seen:
                n += 1
            seen[f"{sub.student_id}~{n}"] = dataclasses.replace(sub, student_id=f"{sub.student_id}~{n}")
    return load([seen[k] for k in sorted(seen)])
