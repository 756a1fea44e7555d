"""nbgrader configuration of the course. The repository root is the course root.

Assignments live in source/<name>/<name>.ipynb; `python -m autograder.release` (`make release`)
writes the student versions to release/. Grading adds two preprocessors from
autograder/nbgrader_ext.py: a warning printed by a correct answer does not cost points, and
feedback shows the tests' messages without the hidden test code.
"""
from nbconvert.preprocessors import ClearMetadataPreprocessor, CSSHTMLHeaderPreprocessor
from nbgrader.preprocessors import (
    AssignLatePenalties,
    CheckCellMetadata,
    ClearHiddenTests,
    Execute,
    GetGrades,
    IgnorePattern,
    LimitOutput,
    SaveAutoGrades,
)

from autograder.nbgrader_ext import StderrIsNotFailure, TrimTracebacks

c = get_config()  # noqa: F821 (provided by traitlets when it loads this file)

c.CourseDirectory.course_id = "label-smoothing-pytorch"

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

# Feedback: the grades, the tests' messages, and no hidden test code.
c.GenerateFeedback.preprocessors = [
    GetGrades,
    ClearHiddenTests,
    TrimTracebacks,
    CSSHTMLHeaderPreprocessor,
]
