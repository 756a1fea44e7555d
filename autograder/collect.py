"""Finding the submissions: a folder per student, or LMS zip downloads.

Two layouts are accepted under ``--submissions DIR`` (both at once too):

* ``DIR/<student_id>/<ASSIGNMENT>.ipynb`` (also nbgrader's ``DIR/<student_id>/<ASSIGNMENT>/<ASSIGNMENT>.ipynb``);
* LMS downloads, following nbgrader's ``zip_collect`` naming: every archive (``.zip``, ``.gz``,
  ``.tar.gz``) in DIR (or DIR itself being one) holds one entry per upload, named by the LMS
  ``<ASSIGNMENT>_<student_id>_attempt_<timestamp>_<the student's own file name>``, e.g.
  ``ps1_smoothing_bitdiddle_attempt_2016-01-30-15-00-00_ps1_smoothing.ipynb``. The regexp comes
  from ``--zip-regexp``, else :func:`default_regexp`; it must provide ``student_id`` and ``file_id`` and may provide
  ``timestamp``. The default is matched against the start of the entry's base name; a
  ``--zip-regexp`` is matched as nbgrader's ``FileNameCollectorPlugin.named_regexp`` is, against
  the start of the extracted file's path (here ``/extracted/<entry name>``, so that nbgrader's
  documented ``.*/...`` and ``.*_...`` forms work), else against the base name.

What it defends against (a student who controls the name and content of their own upload):

* taking another student's id with an upload named ``..._victim_attempt_2099-..._ps1.ipynb``:
  the default regexp is anchored at the start of the name on the LMS's own prefix
  (``<ASSIGNMENT>_``), with a non-greedy student id, so the first ``_attempt_<timestamp>_``, the
  LMS's, decides; the student's file name is only ``file_id``. An archive uploaded by a student
  (an entry that is itself an archive) is attributed by its own LMS entry name, never by the
  names inside it;
* silent loss: two different notebooks claiming one student id with the same timestamp (or a
  folder and an LMS entry) give one row ``failed: collision: ...`` naming both; a file the regexp
  cannot attribute, a student folder without the notebook, an upload not named
  ``<ASSIGNMENT>.ipynb``, or an archive that is not one (corrupt, or not a zip/gzip at all) each
  give a ``failed: ...`` row, never an exception that stops the run;
* archive tricks: entries are read into memory, never extracted to disk (no path traversal), and
  each notebook is capped at :data:`MAX_NOTEBOOK_BYTES` (no decompression bomb).

When a student has several attempts, the latest timestamp wins (as in ``zip_collect``).
Tests: ``tests/test_grader_units.py`` (``test_collect_*``).
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

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
    origin: str | None = None   # where it came from, for messages (archive and entry, or the path)


#: a notebook larger than this is a ``failed: invalid notebook`` row, not read into memory
MAX_NOTEBOOK_BYTES = 50 << 20


def load(found: list[Submission]) -> list[Submission]:
    """Read every notebook into memory (the main process, before any kernel starts)."""
    out = []
    for sub in found:
        if sub.path is None or sub.problem or sub.data is not None:
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


def _from_archives(archives: list[Path], assignment: str, regexp: str | None) -> list[Submission]:
    """Every upload of the LMS downloads ``archives``, attributed by the LMS's entry names."""
    pattern = re.compile(regexp or default_regexp(assignment))
    candidates: list[Submission] = []
    for archive in archives:
        try:
            entries = _entries(archive)
        except BadArchive as exc:
            candidates.append(Submission(safe_id("bad-archive-" + archive.name), None,
                                         f"bad archive {archive.name}: {exc}", origin=archive.name))
            continue
        for name, read in entries:
            base = name.rsplit("/", 1)[-1]
            parts = name.split("/")
            if not base or "__MACOSX" in parts or ".ipynb_checkpoints" in parts or base.startswith("._"):
                continue
            origin = f"{archive.name}:{name}"
            match = pattern.match(base) if regexp is None else (pattern.match(f"/extracted/{name.lstrip('/')}")
                                                                 or pattern.match(base))
            info = match.groupdict() if match else {}
            if not info.get("student_id") or info.get("file_id") is None:
                if base.endswith(".ipynb") or _is_archive_name(base):
                    if regexp is None and "_attempt_" in base and not base.startswith(assignment + "_"):
                        continue  # another assignment's upload in the same download
                    candidates.append(Submission(safe_id("unmatched-" + Path(base).stem), None,
                                                 f"cannot tell the student from the file name {base!r} "
                                                 f"(regexp {pattern.pattern!r})", origin=origin))
                continue
            student, stamp, file_id = safe_id(info["student_id"]), info.get("timestamp") or "", info["file_id"]
            candidates.append(_upload(student, stamp, file_id, read, assignment, origin))
    return candidates


def _upload(student: str, stamp: str, file_id: str, read, assignment: str, origin: str) -> Submission:
    """One student's upload: the notebook itself, or an archive holding ``<assignment>.ipynb``."""
    wanted = f"{assignment}.ipynb"
    try:
        if _is_archive_name(file_id):
            # a student's own archive: its inner names attribute nothing, only hold the notebook
            inner = _entries_of_bytes(read(), file_id)
            found = [(n, r) for n, r in inner if n.rsplit("/", 1)[-1] == wanted and "__MACOSX" not in n]
            if len(found) != 1:
                listed = ", ".join(n for n, _ in inner if n.endswith(".ipynb"))[:300] or "no notebook"
                return Submission(student, None, f"no single {wanted} in the uploaded archive {file_id!r} "
                                                 f"({listed})", timestamp=stamp or None, origin=origin)
            data = found[0][1]()
        else:
            if Path(file_id).name != wanted and Path(file_id).stem != assignment:
                return Submission(student, None, f"no {wanted} in the submission (found: {file_id})",
                                  timestamp=stamp or None, origin=origin)
            data = read()
    except BadArchive as exc:
        return Submission(student, None, f"bad archive {file_id!r}: {exc}", timestamp=stamp or None, origin=origin)
    except TooLarge as exc:
        return Submission(student, None, f"invalid notebook: {exc}", timestamp=stamp or None, origin=origin)
    except Exception as exc:  # an entry that cannot be read back (truncated archive...)
        return Submission(student, None, f"bad archive entry {origin!r}: {type(exc).__name__}: {exc}",
                          timestamp=stamp or None, origin=origin)
    return Submission(student, None, data=data, timestamp=stamp or None, origin=origin)


class BadArchive(ValueError):
    pass


class TooLarge(ValueError):
    pass


def _is_archive_name(name: str) -> bool:
    return name.endswith(ARCHIVES)


def _capped(handle, what: str) -> bytes:
    data = handle.read(MAX_NOTEBOOK_BYTES + 1)
    if len(data) > MAX_NOTEBOOK_BYTES:
        raise TooLarge(f"{what} is larger than {MAX_NOTEBOOK_BYTES} bytes")
    return data


def _entries(path: Path):
    """``[(entry name, read())]`` of an archive file (read() returns the bytes, capped)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadArchive(exc.strerror or str(exc)) from exc
    return _entries_of_bytes(data, path.name)


def _entries_of_bytes(data: bytes, name: str):
    import gzip
    import io
    import tarfile
    import zipfile

    try:
        if name.endswith(".zip"):
            if not zipfile.is_zipfile(io.BytesIO(data)):
                raise BadArchive("not a zip file")
            archive = zipfile.ZipFile(io.BytesIO(data))
            bad = archive.testzip()
            if bad is not None:
                raise BadArchive(f"corrupt entry {bad!r}")
            return [(info.filename, lambda info=info: _capped(archive.open(info), info.filename))
                    for info in archive.infolist() if not info.is_dir()]
        # .gz: a gzipped tar, or one gzipped file named like the archive without .gz
        try:
            tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")
            members = tar.getmembers()
            return [(m.name, lambda m=m: _capped(tar.extractfile(m), m.name)) for m in members if m.isfile()]
        except tarfile.ReadError:
            pass
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as handle:
            content = _capped(handle, name)
        return [(name[: -len(".gz")], lambda: content)]
    except BadArchive:
        raise
    except TooLarge as exc:
        raise BadArchive(str(exc)) from exc
    except Exception as exc:  # zlib.error, BadZipFile, TarError, EOFError...: whatever the bytes do
        raise BadArchive(f"{type(exc).__name__}: {exc}") from exc


def default_regexp(assignment: str) -> str:
    """The LMS's name, anchored on its own prefix: ``<assignment>_<student>_attempt_<timestamp>_<file>``."""
    return (rf"{re.escape(assignment)}_(?P<student_id>\w+?)_attempt_(?P<timestamp>[0-9][0-9\-]*)"
            rf"_(?P<file_id>.+)\Z")


def _resolve(found: list[Submission]) -> list[Submission]:
    """One row per student id: the latest attempt; a collision (two different notebooks with the
    same id and timestamp, or a folder and an archive entry) is a failed row naming both."""
    by_id: dict[str, list[Submission]] = {}
    for sub in found:
        by_id.setdefault(sub.student_id, []).append(sub)
    out = []
    for student, subs in sorted(by_id.items()):
        real = [s for s in subs if not s.problem]
        if not real:
            out.append(max(subs, key=lambda s: s.timestamp or ""))
            continue
        latest = max(s.timestamp or "" for s in real)
        top = [s for s in real if (s.timestamp or "") == latest]
        contents = {s.data if s.data is not None else ("path", s.path) for s in top}
        if len(contents) > 1:
            names = ", ".join(sorted(s.origin or s.path or "?" for s in top))
            out.append(Submission(student, None, f"collision: {len(top)} different notebooks claim student id "
                                                 f"{student!r} ({names}); grade them after telling them apart",
                                  timestamp=latest or None))
        else:
            out.append(top[0])
    return out


def collect(submissions: Path, assignment: str, staging: Path | None = None,
            regexp: str | None = None) -> list[Submission]:
    """Every submission under ``submissions`` (see the module docstring), sorted by student id,
    each notebook read into memory. ``staging`` is unused (archives are read in memory)."""
    submissions = Path(submissions)
    if submissions.is_file():
        if not _is_archive_name(submissions.name):
            raise ValueError(f"--submissions must be a folder or a .zip/.gz file, got {submissions}")
        found = _from_archives([submissions], assignment, regexp)
    elif submissions.is_dir():
        found = _from_folders(submissions, assignment)
        archives = sorted(p for p in submissions.iterdir() if p.is_file() and _is_archive_name(p.name))
        if archives:
            found += _from_archives(archives, assignment, regexp)
    else:
        raise ValueError(f"--submissions {submissions} does not exist")
    for sub in found:
        if sub.origin is None and sub.path is not None:
            sub.origin = sub.path
    return load(_resolve(load(found)))
