"""Student feedback: nbgrader's feedback page, with the verified scores and no hidden test code.

The page is nbgrader's own ``feedback`` HTML template, built with the course's
``GenerateFeedback.preprocessors`` (``ClearHiddenTests`` and the course's ``TrimTracebacks`` that
reduces a failing test's traceback to its message, see nbgrader issue #917), except that
``GetGrades`` (which reads the gradebook) is replaced by :class:`InjectGrades`, which puts the
verified scores straight into the notebook: the workers build feedback in parallel, while only
the main process writes the gradebook. Each test cell also gets one line saying what the grader
verified ("3 / 3 points" or "0 / 3 points: <the test's message>").
"""
from __future__ import annotations

import html
import os

import nbformat
from nbconvert.exporters import HTMLExporter
from nbgrader import utils
from nbgrader.preprocessors import GetGrades, NbGraderPreprocessor
from traitlets import Dict
from traitlets.config import Config


class InjectGrades(NbGraderPreprocessor):
    """GetGrades' job without a database: scores from ``resources['autograder']``."""

    scores = Dict()

    def preprocess(self, nb, resources):
        info = resources["autograder"]
        resources["nbgrader"]["score"] = info["score"]
        resources["nbgrader"]["max_score"] = info["max_score"]
        resources["nbgrader"]["late_penalty"] = 0
        return super().preprocess(nb, resources)

    def preprocess_cell(self, cell, resources, index):
        info = resources["autograder"]
        if utils.is_solution(cell) or utils.is_task(cell):
            cell.metadata.nbgrader["comment"] = None
        if utils.is_grade(cell):
            grade_id = cell.metadata.nbgrader["grade_id"]
            verdict = info["verdicts"].get(grade_id)
            if verdict is not None:
                cell.metadata.nbgrader["score"] = verdict["score"]
                cell.metadata.nbgrader["points"] = verdict["max_score"]
                if cell.cell_type == "code":
                    cell.outputs.append(verdict_output(verdict))
        return cell, resources


class TrimHiddenTracebacks(NbGraderPreprocessor):
    """Test cells' errors keep one line, ``ErrorType: message``: a traceback would quote the
    hidden test code (nbgrader issue #917). Always applied, whatever the course config says."""

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "code" and utils.is_grade(cell) and not utils.is_solution(cell):
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    output["traceback"] = [f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"]
        return cell, resources


def verdict_output(verdict: dict) -> nbformat.NotebookNode:
    score, max_score = verdict["score"], verdict["max_score"]
    ok = score >= max_score
    text = f"{'passed' if ok else 'failed'}: {score:g} / {max_score:g} points (verified by the grader)"
    if not ok and verdict.get("message"):
        text += f"\n{verdict['message']}"
    color = "#1a7f37" if ok else "#cf222e"
    body = html.escape(text).replace("\n", "<br>")
    return nbformat.v4.new_output(
        "display_data",
        data={"text/html": f'<div style="border-left:4px solid {color};padding:2px 8px">{body}</div>',
              "text/plain": text})


def exporter(config: Config) -> HTMLExporter:
    """nbgrader's feedback exporter (template, paths), with the course's preprocessors."""
    import nbgrader

    base = os.path.dirname(nbgrader.__file__)
    cfg = Config(config)
    if "template_name" not in cfg.HTMLExporter:
        cfg.HTMLExporter.template_name = "feedback"
    cfg.HTMLExporter.extra_template_basedirs = [
        os.path.join(base, "server_extensions", "formgrader", "templates")]
    cfg.HTMLExporter.extra_template_paths = [
        os.path.join(base, "server_extensions", "formgrader", "static", "node_modules",
                     "bootstrap", "dist", "css")]
    exp = HTMLExporter(config=cfg)
    exp._preprocessors = []
    configured = cfg.GenerateFeedback.get("preprocessors", None)
    if not configured:
        from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
        from nbgrader.preprocessors import ClearHiddenTests

        configured = [GetGrades, ClearHiddenTests, CSSHTMLHeaderPreprocessor]
    from nbgrader.preprocessors import ClearHiddenTests

    classes = []
    for pp in configured:
        if isinstance(pp, str):
            import importlib

            module, _, name = pp.rpartition(".")
            pp = getattr(importlib.import_module(module), name)
        classes.append(InjectGrades if pp is GetGrades else pp)
    if InjectGrades not in classes:
        classes.insert(0, InjectGrades)
    if ClearHiddenTests not in classes:
        classes.insert(1, ClearHiddenTests)
    classes.append(TrimHiddenTracebacks)
    for pp in classes:
        exp.register_preprocessor(pp, enabled=True)
    return exp


def render(exp: HTMLExporter, nb, student_id: str, assignment: str, verdicts: dict,
           score: float, max_score: float) -> str:
    resources = {"nbgrader": {"student": student_id, "assignment": assignment,
                              "notebook": assignment, "db_url": None},
                 "autograder": {"verdicts": verdicts, "score": score, "max_score": max_score},
                 "unique_key": assignment}
    body, _ = exp.from_notebook_node(nb, resources=resources)
    return body
