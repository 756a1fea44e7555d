"""nbgrader's own autograde run, in a sandboxed kernel: in-kernel scores and the feedback notebook.

The course's ``nbgrader_config.py`` decides the preprocessors, as for ``nbgrader autograde``;
the Execute preprocessor runs its kernel in the sandbox (:mod:`autograder.kernels`) with output
caps; SaveAutoGrades and AssignLatePenalties are left to the main process (which writes the
gradebook with the verified scores). Nothing this kernel prints or displays is read as an
answer: the verdicts come from the probe kernel (:mod:`autograder.probe`). The in-kernel scores
only flag a submission where they differ from the verified ones.

Defends against: unbounded cell output (every output, whatever its MIME type, counts towards
``max_cell_output`` per cell). Test: ``tests/test_grader.py`` (``style-noisy``,
``attack-probe-mime-flood``).
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import nbformat
from nbgrader import utils as nbutils

from . import feedback, kernels


def load_course_config(course_root: str):
    from traitlets.config import Config
    from traitlets.config.loader import PyFileConfigLoader

    path = Path(course_root) / "nbgrader_config.py"
    if not path.exists():
        return Config()
    return PyFileConfigLoader(path.name, path=str(path.parent)).load_config()


def _class(item):
    if isinstance(item, str):
        import importlib

        module, _, name = item.rpartition(".")
        return getattr(importlib.import_module(module), name)
    return item


def capped_execute(base):
    """The configured Execute preprocessor, with a per-cell cap on the size of all outputs."""

    class CappedExecute(base):
        max_cell_output = 1 << 20

        def start_submission(self):
            self.executed: set[int] = set()
            self._sizes: dict[int, int] = {}

        def on_cell_executed(self, **kwargs):
            super().on_cell_executed(**kwargs)
            self.executed.add(kwargs["cell_index"])

        def output(self, outs, msg, display_id, cell_index):
            content = msg.get("content", {})
            size = len(json.dumps(content, default=str))
            used = self._sizes.get(cell_index, 0)
            self._sizes[cell_index] = used + size
            if used + size > self.max_cell_output:
                if used <= self.max_cell_output:
                    outs.append(nbformat.v4.new_output(
                        "stream", name="stdout",
                        text=f"\n[autograder] output of this cell truncated at {self.max_cell_output} bytes\n"))
                return None
            return super().output(outs, msg, display_id, cell_index)

    return CappedExecute


class NbgraderRun:
    """The preprocessors of one worker (built once) and the run of one submission."""

    def __init__(self, settings, slot: str):
        from nbgrader.preprocessors import (
            AssignLatePenalties, CheckCellMetadata, ClearOutput, DeduplicateIds, Execute,
            OverwriteCells, OverwriteKernelspec, SaveAutoGrades)

        self.settings = settings
        self.config = load_course_config(settings.course_root)
        self.config.Execute.timeout = settings.cell_timeout
        self.config.OverwriteCells.add_missing_cells = True
        self.db_path = Path(settings.work_dir) / f"gradebook-{slot}.db"
        shutil.copyfile(settings.db_template, self.db_path)
        sanitize = self.config.Autograde.get("sanitize_preprocessors", None) or [
            ClearOutput, DeduplicateIds, OverwriteKernelspec, OverwriteCells, CheckCellMetadata]
        self.sanitize = [_class(p)(config=self.config) for p in sanitize]
        autograde = self.config.Autograde.get("autograde_preprocessors", None) or [
            Execute, "nbgrader.preprocessors.IgnorePattern",
            "nbconvert.preprocessors.ClearMetadataPreprocessor", "nbgrader.preprocessors.LimitOutput",
            SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]
        self.execute = None
        self.before: list = []
        self.after: list = []
        for item in map(_class, autograde):
            if issubclass(item, Execute):
                self.execute = capped_execute(item)(config=self.config)
            elif issubclass(item, (SaveAutoGrades, AssignLatePenalties)):
                continue  # the main process writes the gradebook, with the verified scores
            else:
                (self.before if self.execute is None else self.after).append(item(config=self.config))
        if self.execute is None:
            self.execute = capped_execute(Execute)(config=self.config)
        self.execute.timeout = settings.cell_timeout
        self.execute.shutdown_kernel = "immediate"
        self.execute.max_cell_output = settings.max_cell_output
        self.feedback = feedback.exporter(self.config) if settings.write_feedback else None

    def resources(self, student_id: str) -> dict:
        return {"nbgrader": {"student": student_id, "assignment": self.settings.assignment,
                             "notebook": self.settings.assignment, "db_url": f"sqlite:///{self.db_path}"},
                "metadata": {"path": "."}, "unique_key": self.settings.assignment}

    def run(self, nb, resources, source: "kernels.Kernels"):
        """Execute ``nb`` with its tests; (executed notebook, in-kernel score per test, failure)."""
        for pp in self.before:
            nb, resources = pp(nb, resources)
        pristine = copy.deepcopy(nb)
        for attempt in range(2):
            work = source.workdir()
            resources["metadata"]["path"] = str(work)
            km = source.manager(work, nb.metadata.get("kernelspec", {}).get("name", "python3"))
            self.execute.start_submission()
            failure = kernels.run_notebook(self.execute, nb, resources, km, self.settings.submission_timeout)
            source.stop(km, failed=failure is not None)
            if failure is None or not failure.startswith(kernels.COULD_NOT_START) or attempt:
                break
            nb = copy.deepcopy(pristine)  # no student code ran: the sandbox failed; once more
        for pp in self.after:
            nb, resources = pp(nb, resources)
        scores = {}
        for index, cell in enumerate(nb.cells):
            if nbutils.is_grade(cell) and not nbutils.is_solution(cell):
                grade_id = cell.metadata.nbgrader["grade_id"]
                if index in self.execute.executed:
                    score, _ = nbutils.determine_grade(cell)
                    scores[grade_id] = float(score) if score is not None else 0.0
                else:
                    scores.setdefault(grade_id, 0.0)
        return nb, scores, failure
