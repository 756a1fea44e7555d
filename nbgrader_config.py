"""nbgrader configuration of the course. The repository root is the course root.

Assignments live in source/<name>/<name>.ipynb; `python -m autograder.release` (`make release`)
writes the student versions to release/. Grading adds preprocessors from
autograder/nbgrader_ext.py: a warning printed by a correct answer does not cost points, no false
"checksum has changed" warnings, and feedback shows the tests' verdicts, never hidden test code.
"""
from nbconvert.preprocessors import ClearMetadataPreprocessor, CSSHTMLHeaderPreprocessor
from nbgrader.preprocessors import (
    AssignLatePenalties,
    CheckCellMetadata,
    ClearOutput,
    DeduplicateIds,
    Execute,
    GetGrades,
    IgnorePattern,
    LimitOutput,
    OverwriteKernelspec,
    SaveAutoGrades,
)

# The course's extensions. nbgrader catches any exception raised in this file, logs it and goes on
# with its stock pipelines (stock feedback shows hidden tests), so a failed import must not raise
# here: the names become dotted paths that nbgrader imports when a command needs them, and that
# command (autograde, generate_feedback, formgrader's buttons, the course's grader) stops with
# "No module named 'autograder'" and exit status 1. tests/test_feedback.py proves it.
try:
    from autograder.nbgrader_ext import (
        OverwriteCellsHiddenAware,
        SafeFeedback,
        StderrIsNotFailure,
    )
except ImportError as _exc:
    import sys as _sys

    _sys.stderr.write(
        f"nbgrader_config.py: ERROR: cannot import autograder.nbgrader_ext ({_exc}).\n"
        "  autograde and generate_feedback will refuse to run: without the course's extensions nbgrader's\n"
        "  stock feedback would show the hidden tests. Install the course package in this environment\n"
        "  (pip install -e <course root>) or run nbgrader from the course root.\n")
    _sys.stderr.flush()
    OverwriteCellsHiddenAware, SafeFeedback, StderrIsNotFailure = (
        f"autograder.nbgrader_ext.{_name}" for _name in ("OverwriteCellsHiddenAware", "SafeFeedback", "StderrIsNotFailure"))

c = get_config()  # noqa: F821 (provided by traitlets when it loads this file)



def _instructors_course_id():
    """The course id of the instructor's own Jupyter config (~/.jupyter/nbgrader_config.py and the
    other Jupyter config folders), if one sets it: nbgrader reads this file last, so without this
    lookup the id below would always win, and JupyterLab's Assignment List and formgrader would
    not see the instructor's course in the exchange."""
    from pathlib import Path

    from jupyter_core.paths import jupyter_config_path
    from traitlets.config.loader import PyFileConfigLoader

    here = Path(__file__).resolve()
    for folder in jupyter_config_path():  # highest priority first
        path = Path(folder) / "nbgrader_config.py"
        if path.is_file() and path.resolve() != here:
            found = PyFileConfigLoader(path.name, path=str(path.parent)).load_config()
            if "course_id" in found.CourseDirectory:
                return found.CourseDirectory.course_id
    return None


c.CourseDirectory.course_id = _instructors_course_id() or "label-smoothing-pytorch"

# A cell that runs longer than this is interrupted and fails (each test cell takes well under 2 s).
c.Execute.timeout = 60

# nbgrader's default autograde pipeline, with StderrIsNotFailure right after execution.
c.Autograde.autograde_preprocessors = [
    Execute,
    StderrIsNotFailure,
    IgnorePattern,
    ClearMetadataPreprocessor,
    LimitOutput,
    SaveAutoGrades,
    AssignLatePenalties,
    CheckCellMetadata,
]

# nbgrader's sanitize step, with OverwriteCells minus the false "checksum has changed" warnings of
# nbgrader #1961 (real edits of locked cells are still reported and restored).
c.Autograde.sanitize_preprocessors = [
    ClearOutput,
    DeduplicateIds,
    OverwriteKernelspec,
    OverwriteCellsHiddenAware,
    CheckCellMetadata,
]

# Feedback: the grades and the tests' messages; no test cell's source or outputs, no student HTML
# (SafeFeedback renders the page body with autograder/feedback.py, bounded in time and memory).
c.GenerateFeedback.preprocessors = [
    GetGrades,
    SafeFeedback,
    CSSHTMLHeaderPreprocessor,
]

# Validate fails when any cell raises, the visible (ungraded) check cells included: an untouched
# stub or a wrong answer must not see "Success!". Grades and points are unchanged.
c.Validator.validate_all = True
