"""The run's journal, ``OUT/results.jsonl``: one JSON line per recorded result, appended and
fsynced before the grader moves on, so an interrupted run (Ctrl-C, SIGKILL, a killed worker, a
power cut) loses nothing it had recorded, and the next run grades only what is missing.

Each line holds ``key`` (what the result depends on: the student, the notebook's bytes, its timestamp, the
grader's and the assignment's version, the grading options; see :func:`submission_key`) and
the result itself. A line cut short by a crash is ignored when read back (and the next append
starts on a fresh line). ``grades.csv``, ``problems.csv`` and ``details.jsonl`` are rebuilt
from the journal at the end of every run. A lock (``OUT/.lock``, a POSIX record lock that dies
with the process holding it) keeps two runs from sharing one output folder.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
from pathlib import Path

from .gradebook import atomic_write

NAME = "results.jsonl"


def submission_key(version: str, student_id: str, data: bytes | None, problem: str | None,
                   timestamp: str | None) -> str:
    """Two students handing in the same bytes are two keys (the same student again: one)."""
    digest = hashlib.sha256()
    for part in (version, student_id, "" if timestamp is None else timestamp, problem or ""):
        digest.update(part.encode("utf-8") + b"\0")
    digest.update(b"-" if data is None else hashlib.sha256(data).digest())
    return digest.hexdigest()


class Busy(RuntimeError):
    pass


@contextlib.contextmanager
def lock(out: Path):
    """Hold ``OUT/.lock`` for the run; a second run on the same folder fails at once."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise Busy(f"another grade run is using {out} (lock {out / '.lock'})") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


class Journal:
    def __init__(self, out: Path):
        self.path = Path(out) / NAME
        self.handle = None

    def read(self) -> dict[str, dict]:
        """``{key: record}`` of every complete line (the last record of a key wins)."""
        records = {}
        if not self.path.exists():
            return records
        with open(self.path, "rb") as handle:
            for line in handle:
                if not line.endswith(b"\n"):
                    break  # cut short by a crash
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and "key" in record:
                    records[record["key"]] = record
        return records

    def open(self) -> "Journal":
        self.handle = open(self.path, "ab")
        if self.handle.tell():
            with open(self.path, "rb") as check:
                check.seek(-1, os.SEEK_END)
                if check.read(1) != b"\n":
                    self._write(b"\n")  # end a line cut short by a crash
        return self

    def _write(self, data: bytes) -> None:
        self.handle.write(data)
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def append(self, record: dict) -> None:
        self._write(json.dumps(record, sort_keys=True).encode("utf-8") + b"\n")

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def compact(self, keep: list[dict]) -> None:
        """Rewrite the journal with ``keep`` only (atomically)."""
        self.close()
        atomic_write(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))
