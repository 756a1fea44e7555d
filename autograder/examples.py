"""Example submissions, graded: ``python -m autograder.examples --out build/example_submissions``.

For every assignment with a release notebook, three submissions are built from it:

* ``correct``: every answer cell filled with the source notebook's solution;
* ``wrong``: the same with one classic mistake (ps1: the "others" target where PyTorch's
  uniform one was asked; ps2: the mean over all N targets instead of the kept ones; ps3: an
  unweighted ECE), each written out in full; another assignment gets its first answer cell
  left as the stub;
* ``stub``: the release notebook untouched, as a student who did nothing would hand it in;

written to ``OUT/<assignment>/<student>/<assignment>.ipynb`` and graded with the course's grader
into ``build/grades/<assignment>`` as a private run (its own gradebook there: the example
students never reach the course's gradebook or feedback/). ``make course`` runs this.
The exit status is 1 when a result is not what it must be (correct: full marks and ``graded``;
stub: 0; wrong: fewer points than correct), so a broken assignment or grader stops the build.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
_MARKER = re.compile(r"^\s*###\s*(BEGIN|END)\s+SOLUTION\s*$")

WRONG = {
    "ps1_smoothing": ("others-instead-of-uniform", "smooth_labels", '''
def smooth_labels(targets, num_classes, smoothing, mode="uniform"):
    """The tutorial form for both modes: 1 - eps on the true class, eps / (K - 1) elsewhere."""
    if mode not in ("uniform", "others"):
        raise ValueError(f"unknown mode {mode!r}")
    if not 0 <= smoothing <= 1:
        raise ValueError("smoothing must lie in [0, 1]")
    if num_classes < 2 and mode == "others":
        raise ValueError("'others' needs two classes")
    hard = one_hot(targets, num_classes)
    return hard * (1 - smoothing) + (1 - hard) * smoothing / max(num_classes - 1, 1)
'''),
    "ps2_losses": ("mean-over-all-targets", "label_smoothing_cross_entropy", '''
def label_smoothing_cross_entropy(logits, targets, smoothing=0.1, reduction="mean", ignore_index=-100):
    """By hand, but "mean" divides by N, ignored targets included (the classic mistake)."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError("unknown reduction")
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError("smoothing must lie in [0, 1]")
    if logits.ndim != 2 or targets.ndim != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError("logits [N, K] and targets [N] expected")
    if targets.is_floating_point() or targets.dtype == torch.bool:
        raise ValueError("targets must be integers")
    log_p = torch.log_softmax(logits, dim=1)
    keep = targets != ignore_index
    safe = torch.where(keep, targets, torch.zeros_like(targets)).long()
    nll = -log_p.gather(1, safe.unsqueeze(1)).squeeze(1)
    per_sample = ((1 - smoothing) * nll - smoothing * log_p.mean(dim=1)) * keep
    if reduction == "none":
        return per_sample
    return per_sample.sum() if reduction == "sum" else per_sample.sum() / len(targets)
'''),
    "ps3_calibration": ("unweighted-ece", "expected_calibration_error", None),
}


def _is_answer(cell) -> bool:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return cell.cell_type == "code" and bool(meta.get("solution")) and not meta.get("grade")


def solutions(assignment: str, root: Path = REPO) -> dict[str, str]:
    """The source notebook's answers, solution markers removed."""
    nb = nbformat.read(root / "source" / assignment / f"{assignment}.ipynb", as_version=4)
    return {c.metadata.nbgrader["grade_id"]: "\n".join(line for line in c.source.splitlines() if not _MARKER.match(line))
            for c in nb.cells if _is_answer(c)}


def build(assignment: str, answers: dict[str, str] | None, root: Path = REPO) -> nbformat.NotebookNode:
    """The release notebook with the given answer cells' sources (None: the untouched stub)."""
    nb = nbformat.read(root / "release" / assignment / f"{assignment}.ipynb", as_version=4)
    for cell in nb.cells:
        if answers is not None and _is_answer(cell):
            grade_id = cell.metadata.nbgrader["grade_id"]
            if grade_id in answers:
                cell.source = answers[grade_id]
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def wrong_answers(assignment: str, root: Path = REPO) -> tuple[str, dict[str, str]]:
    """A plausible wrong submission: the solution with one classic mistake."""
    answers = solutions(assignment, root)
    name, grade_id, source = WRONG.get(assignment, ("first-answer-missing", None, None))
    if grade_id is None or grade_id not in answers:
        first = next(iter(answers))
        release = build(assignment, None, root)
        stub = next(c.source for c in release.cells if _is_answer(c) and c.metadata.nbgrader["grade_id"] == first)
        return "first-answer-missing", {**answers, first: stub}
    if source is None:  # ps3: the solution, then an unweighted ECE defined over it
        source = answers[grade_id] + UNWEIGHTED
    return name, {**answers, grade_id: source}


UNWEIGHTED = '''


def expected_calibration_error(probs, labels, n_bins=15):
    """ECE with every non-empty bin counting the same (the classic mistake)."""
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).float()
    gaps = []
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = (conf > lo) & (conf <= hi) if b else (conf >= lo) & (conf <= hi)
        if inside.any():
            gaps.append((correct[inside].mean() - conf[inside].mean()).abs())
    return float(torch.stack(gaps).mean()) if gaps else 0.0
'''


def write_examples(out: Path, assignments: list[str], root: Path = REPO) -> dict[str, Path]:
    folders = {}
    for assignment in assignments:
        folder = out / assignment
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        for student, nb in (("correct", build(assignment, solutions(assignment, root), root)),
                            ("wrong-" + wrong_answers(assignment, root)[0],
                             build(assignment, wrong_answers(assignment, root)[1], root)),
                            ("stub", build(assignment, None, root))):
            target = folder / student
            target.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, target / f"{assignment}.ipynb")
        folders[assignment] = folder
    return folders


def assignments_with_release(root: Path = REPO) -> list[str]:
    source = root / "source"
    return sorted(p.name for p in source.iterdir()
                  if (p / f"{p.name}.ipynb").exists() and (root / "release" / p.name / f"{p.name}.ipynb").exists()) \
        if source.is_dir() else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder.examples", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "build" / "example_submissions")
    parser.add_argument("--grades", type=Path, default=REPO / "build" / "grades",
                        help="where the graded results go (one folder per assignment)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("names", nargs="*", help="assignments (default: every one with a release notebook)")
    args = parser.parse_args(argv)
    from .cli import _skip_slow_optional_imports

    _skip_slow_optional_imports()
    from . import grading, report

    names = args.names or assignments_with_release()
    if not names:
        print("no assignments with a release notebook: run `make release` first", file=sys.stderr)
        return 1
    folders = write_examples(args.out, names)
    problems = []
    for assignment, folder in folders.items():
        # private: the example students stay out of the course's gradebook and feedback/
        outcome = grading.grade(grading.Options(assignment=assignment, submissions=folder,
                                                out=args.grades / assignment, workers=args.workers,
                                                private=True))
        print(report.summary(outcome))
        print()
        rows = {r["student_id"]: r for r in outcome.rows}
        full = f"{outcome.max_score:g}"
        if rows["correct"]["score"] != full or rows["correct"]["status"] != "graded":
            problems.append(f"{assignment}: the correct example got {rows['correct']}")
        if rows["stub"]["score"] != "0":
            problems.append(f"{assignment}: the stub got {rows['stub']}")
        wrong = next(r for s, r in rows.items() if s.startswith("wrong-"))
        if float(wrong["score"]) >= outcome.max_score:
            problems.append(f"{assignment}: the wrong example got full marks: {wrong}")
    for problem in problems:
        print(f"UNEXPECTED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
