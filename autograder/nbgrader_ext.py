"""nbgrader preprocessors that the course's ``nbgrader_config.py`` plugs into nbgrader.

* :class:`StderrIsNotFailure` (autograde): stock nbgrader scores a test cell 0 as soon as the cell
  writes anything to stderr, so a correct answer that happens to trigger a warning (a torch
  ``UserWarning``, say) would lose the points. It runs right after execution and turns stderr
  *stream* outputs of graded test cells into stdout ones: the text stays visible, and only real
  errors (``error`` outputs, a failed assert) still cost points.
* :class:`TrimTracebacks` (feedback): a failing hidden test shows a traceback that quotes the
  hidden test code. It leaves the error type and message ("AssertionError: ... gave the 'others'
  convention ..."), which is what the tests' messages are written for.
* :class:`OverwriteCellsHiddenAware` (autograde's sanitize step, and the course's grader):
  nbgrader's ``OverwriteCells`` compares each locked cell with the gradebook's checksum, which was
  taken *with* the hidden tests, so every test cell with hidden tests warns "Attribute 'checksum'
  for cell ... has changed!" on every submission (nbgrader #1961): 14 false alarms per ps1
  submission that bury real tampering. This subclass restores, before the check, exactly the
  cells whose source is the released text (the gradebook's source with the hidden region removed);
  any other change to a locked cell is still reported and restored by nbgrader's own code.
  Tests: ``tests/test_feedback.py::test_no_false_checksum_warnings_but_tampering_reported`` and
  ``::test_nbgrader_autograde_has_no_false_checksum_warnings``.
* :class:`SafeFeedback` (``nbgrader generate_feedback``, formgrader's feedback button): replaces
  the notebook by one raw HTML cell holding :func:`autograder.feedback.notebook_html` (verdicts
  for test cells, never their source or outputs; sanitised student content; bounded time and
  memory), so nbgrader's own feedback shows no hidden test and runs no student HTML.
  Test: ``::test_nbgrader_generate_feedback_is_safe``.

What holds if this module cannot be imported: ``nbgrader_config.py`` names these classes by
dotted path, so the command that needs them fails (see the comment there), it never falls back to
stock behaviour. Test: ``::test_missing_course_package_stops_nbgrader``.
"""
from __future__ import annotations

import copy

import nbformat
from nbconvert.exporters.exporter import ResourcesDict
from nbformat.notebooknode import NotebookNode
from nbgrader import utils
from nbgrader.api import MissingEntry
from nbgrader.preprocessors import ClearHiddenTests, NbGraderPreprocessor, OverwriteCells


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


class OverwriteCellsHiddenAware(OverwriteCells):
    """``OverwriteCells`` without nbgrader #1961's false "checksum has changed" warnings."""

    def released_source(self, source: str) -> str | None:
        """What ``generate_assignment`` gave students for a locked cell of this source (hidden
        test region removed, with the course's delimiters), or None if it cannot be computed."""
        clear = ClearHiddenTests(parent=self)
        cell = nbformat.v4.new_code_cell(source)
        try:
            clear._remove_hidden_test_region(cell)
        except RuntimeError:
            return None
        return cell.source

    def preprocess_cell(self, cell: NotebookNode, resources: ResourcesDict, cell_index: int):
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id is not None:
            try:
                source_cell = self.gradebook.find_source_cell(grade_id, self.notebook_id, self.assignment_id)
            except MissingEntry:
                source_cell = None  # nbgrader's own code reports it
            if (source_cell is not None and source_cell.locked and cell.cell_type == source_cell.cell_type
                    and cell.source != source_cell.source
                    and cell.source == self.released_source(source_cell.source)):
                cell.source = source_cell.source  # the released text: not a change
        return super().preprocess_cell(cell, resources, cell_index)


class SafeFeedback(NbGraderPreprocessor):
    """nbgrader's feedback, made safe: the cells become one raw HTML cell built by
    :mod:`autograder.feedback` (verdicts from the gradebook via ``GetGrades``, which must run
    before this preprocessor). Replaces ``ClearHiddenTests`` + ``TrimTracebacks`` for feedback."""

    def preprocess(self, nb: NotebookNode, resources: ResourcesDict):
        from . import feedback

        verdicts = {}
        for cell in nb.cells:
            meta = cell.get("metadata", {}).get("nbgrader", {})
            if utils.is_grade(cell) and meta.get("grade_id"):
                verdicts[meta["grade_id"]] = {"score": meta.get("score") or 0.0,
                                              "max_score": meta.get("points") or 0.0,
                                              "message": meta.get("comment") or ""}
        body, problem = feedback._bounded(lambda: feedback.notebook_html(copy.deepcopy(nb), verdicts, markdown=False),
                                          feedback.exporter(self.config))
        if body is None:
            body = f"<p>The notebook could not be shown here ({problem}).</p>"
        # tex2jax_ignore: the template's MathJax leaves the student's text alone
        body = f'<div class="tex2jax_ignore">{feedback.summary_html(verdicts)}\n{body}</div>'
        cell = nbformat.v4.new_raw_cell(body, metadata={"raw_mimetype": "text/html"})
        nb.cells = [cell]
        return nb, resources
