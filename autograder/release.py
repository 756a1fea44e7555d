"""Regenerate release/ from source/ with nbgrader: ``python -m autograder.release`` (``make release``).

Every folder source/<name>/ holding a notebook is an assignment. nbgrader's
``generate_assignment`` runs in a throw-away copy of the course (no log at the root); writing the
course's own release/ also records the assignments in the course's gradebook (its ``db_url``), so
that release/ and the gradebook agree (``--no-gradebook`` skips it); the student notebooks are then normalised
(nbformat's canonical JSON: sorted keys, one-space indent, no outputs, no execution counts) so
that regenerating from the same source gives byte-identical files.

    python -m autograder.release                       # all assignments into release/
    python -m autograder.release --out /tmp/r ps1_smoothing
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
_IGNORE = shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "*.pyc", ".DS_Store")


def assignments(course_root: Path = REPO) -> list[str]:
    """Names of the assignments in ``course_root/source`` (folders that hold a notebook)."""
    source = Path(course_root) / "source"
    if not source.is_dir():
        return []
    return sorted(p.name for p in source.iterdir() if p.is_dir() and any(p.glob("*.ipynb")))


def normalise(path: Path) -> None:
    """Rewrite a released notebook in canonical form: no outputs, no execution counts."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
    nbformat.validate(nb)
    path.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")


def _alembic_head() -> str:
    """The gradebook schema's revision, read in-process (nbgrader runs ``alembic heads`` for it)."""
    from alembic.script import ScriptDirectory
    from nbgrader.dbutil import ALEMBIC_DIR

    return ScriptDirectory(ALEMBIC_DIR).get_current_head()


@contextlib.contextmanager
def nbgrader_runs_here():
    """Let nbgrader create gradebooks from this interpreter, without an activated venv.

    A new gradebook gets stamped with the schema revision that nbgrader asks the ``alembic``
    command for, looked up on PATH: with ``.venv/bin/python`` and no activated venv it is not
    found. Here the revision is read with alembic's Python API instead (also ~1 s faster), and
    this interpreter's bin/ goes first on PATH for anything else nbgrader starts.
    """
    import nbgrader.api

    old_path, old_lookup = os.environ.get("PATH", ""), nbgrader.api.get_alembic_version
    bindir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bindir + os.pathsep + old_path if old_path else bindir
    nbgrader.api.get_alembic_version = _alembic_head
    try:
        yield
    finally:
        os.environ["PATH"] = old_path
        nbgrader.api.get_alembic_version = old_lookup


def _quiet_nbgrader_log() -> None:
    """nbgrader logs through the "traitlets" logger: show its warnings and errors, not its chatter."""
    logger = logging.getLogger("traitlets")
    logger.setLevel(logging.WARNING)
    if not any(getattr(h, "_course_release", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[nbgrader %(levelname)s] %(message)s"))
        handler._course_release = True
        logger.addHandler(handler)


def generate_in_course(course: Path, names: list[str], config=None) -> None:
    """Run nbgrader generate_assignment for ``names`` inside the course folder ``course``.

    ``config`` defaults to the course's own nbgrader_config.py. The gradebook is the course's.
    """
    from nbgrader.converters import GenerateAssignment
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config.loader import PyFileConfigLoader

    if config is None:
        config = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
        config.CourseDirectory.root = str(course)
    with nbgrader_runs_here():
        for name in names:
            coursedir = CourseDirectory(config=config)
            coursedir.assignment_id = name
            app = GenerateAssignment(coursedir=coursedir, config=config)
            app.force = True
            app.create_assignment = True
            app.start()  # raises NbGraderException on failure


def generate(out_dir: Path | str | None = None, names: list[str] | None = None, course_root: Path = REPO,
             gradebook: bool | None = None) -> list[Path]:
    """Write the student version of each assignment to ``out_dir/<name>/``; return the files written.

    ``names`` defaults to every assignment in source/; then folders of ``out_dir`` without a
    source are removed too, so that release/ mirrors source/.

    ``gradebook`` (default: when ``out_dir`` is the course's own release/) also records the
    assignments in the course's gradebook (``CourseDirectory.db_url``), as ``nbgrader
    generate_assignment --force`` does: the committed release/ and the gradebook then agree, and
    ``nbgrader autograde`` / the course's grader never meet "No assignment with ID". Duedates and
    submissions already there are kept.
    """
    course_root = Path(course_root).resolve()
    own_release = out_dir is None or Path(out_dir).resolve() == course_root / "release"
    out_dir = Path(out_dir) if out_dir is not None else course_root / "release"
    if gradebook is None:
        gradebook = own_release
    every = assignments(course_root)
    names = list(names) if names else every
    unknown = sorted(set(names) - set(every))
    if unknown:
        raise ValueError(f"no assignment {unknown} in {course_root / 'source'} (have: {every})")
    _quiet_nbgrader_log()
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="course-release-") as tmp:
        course = Path(tmp)
        shutil.copy2(course_root / "nbgrader_config.py", course / "nbgrader_config.py")
        for name in names:
            shutil.copytree(course_root / "source" / name, course / "source" / name, ignore=_IGNORE)
        config = None
        if gradebook:
            from traitlets.config.loader import PyFileConfigLoader

            from .gradebook import course_target

            target = course_target(course_root)
            config = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
            config.CourseDirectory.root = str(course)
            config.CourseDirectory.db_url = target.db_url
            config.CourseDirectory.course_id = target.course_id
        generate_in_course(course, names, config)
        if gradebook:
            print(f"recorded {', '.join(names)} in the course's gradebook {target.describe()}")
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            dest = out_dir / name
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(course / "release" / name, dest, ignore=_IGNORE)
            for path in sorted(dest.rglob("*")):
                if path.suffix == ".ipynb":
                    normalise(path)
                if path.is_file():
                    written.append(path)
    if names == every:
        for stale in sorted(p for p in out_dir.iterdir() if p.is_dir() and p.name not in every):
            shutil.rmtree(stale)
            print(f"removed {stale} (no source/{stale.name})")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder.release", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="assignments to release (default: all in source/)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: release/)")
    parser.add_argument("--course-root", type=Path, default=REPO, help="the course (default: this repository)")
    parser.add_argument("--no-gradebook", action="store_true",
                        help="do not record the assignments in the course's gradebook (recorded by default "
                             "when writing the course's own release/)")
    args = parser.parse_args(argv)
    written = generate(args.out, args.names or None, course_root=args.course_root,
                       gradebook=False if args.no_gradebook else None)
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
