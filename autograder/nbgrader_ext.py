"""nbgrader preprocessors that the course's ``nbgrader_config.py`` plugs into nbgrader.

* :class:`StderrIsNotFailure` (autograde): stock nbgrader scores a test cell 0 as soon as the cell
  writes anything to stderr, so a correct answer that happens to trigger a warning (a torch
  ``UserWarning``, say) would lose the points. It runs right after execution and turns stderr
  *stream* outputs of graded test cells into stdout ones: the text stays visible, and only real
  errors (``error`` outputs, a failed assert) still cost points.
* :class:`TrimTracebacks` (feedback): a failing hidden test shows a traceback that quotes the
  hidden test code. Together with nbgrader's ``ClearHiddenTests`` it leaves students the error
  type and message ("AssertionError: ... gave the 'others' convention ..."), which is what the
  tests' messages are written for.
"""
from __future__ import annotations

from nbconvert.exporters.exporter import ResourcesDict
from nbformat.notebooknode import NotebookNode
from nbgrader import utils
from nbgrader.preprocessors import NbGraderPreprocessor


def _is_test_cell(cell: NotebookNode) -> bool:
    """A graded, autograded code cell (not an answer cell)."""
    return cell.cell_type == "code" and utils.is_grade(cell) and not utils.is_solution(cell)


class StderrIsNotFailure(NbGraderPreprocessor):
    """In graded test cells, move stderr stream output to stdout so that it does not zero the cell."""

    def preprocess_cell(self, cell: NotebookNode, resources: ResourcesDict, index: int):
        if _is_test_cell(cell):
            for output in cell.get("outputs", []):
                if output.output_type == "stream" and output.name == "stderr":
                    output.name = "stdout"
        return cell, resources


class TrimTracebacks(NbGraderPreprocessor):
    """In graded test cells, replace each error's traceback by one line: ``ErrorType: message``."""

    def preprocess_cell(self, cell: NotebookNode, resources: ResourcesDict, index: int):
        if _is_test_cell(cell):
            for output in cell.get("outputs", []):
                if output.output_type == "error":
                    output.traceback = [f"{output.ename}: {output.evalue}"]
        return cell, resources
