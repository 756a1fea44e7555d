"""What the instructor sees: a summary table on the terminal and a histogram of the scores."""
from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path


def histogram(scores: list[float], max_score: float, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    top = max(max_score, max(scores, default=0.0))
    bins = [i - 0.5 for i in range(int(top) + 2)]
    ax.hist(scores, bins=bins, color="#4c72b0", edgecolor="white")
    ax.set_xlabel(f"score (out of {max_score:g})")
    ax.set_ylabel("submissions")
    ax.set_title(f"{title}: {len(scores)} submissions")
    ax.set_xlim(-0.5, top + 0.5)
    ax.yaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def summary(outcome) -> str:
    rows, problems = outcome.rows, outcome.problems
    lines = []
    scores = [float(r["score"]) for r in rows]
    kinds = Counter(r["status"].split(":")[0] for r in rows)
    lines.append(f"{len(rows)} submissions in {outcome.seconds:.1f} s  |  "
                 + ", ".join(f"{kinds.get(k, 0)} {k}" for k in ("graded", "flagged", "failed")))
    reused = getattr(outcome, "reused", 0)
    if reused:
        lines.append(f"{getattr(outcome, 'graded', 0)} graded by this run, {reused} unchanged since an earlier run "
                     "(results kept; --force grades them again)")
    if scores:
        lines.append(f"score out of {outcome.max_score:g}: mean {statistics.mean(scores):.2f}, "
                     f"median {statistics.median(scores):g}, min {min(scores):g}, max {max(scores):g}")
    by_problem: dict[str, list[tuple[float, float]]] = {}
    for p in problems:
        by_problem.setdefault(p["grade_id"], []).append((float(p["score"]), float(p["max_score"])))
    if by_problem:
        width = max(len(g) for g in by_problem)
        lines.append("")
        lines.append(f"{'test cell'.ljust(width)}  points  full marks")
        for grade_id, values in by_problem.items():
            full = sum(1 for s, m in values if s >= m)
            lines.append(f"{grade_id.ljust(width)}  {values[0][1]:>6g}  {full:>4d} / {len(values)}")
    width = max([len(r["student_id"]) for r in rows] + [10])
    lines.append("")
    lines.append(f"{'student'.ljust(width)}  {'score':>7}  status")
    for r in rows:
        lines.append(f"{r['student_id'].ljust(width)}  {r['score']:>3} / {r['max_score']:<3}  {r['status']}")
    lines.append("")
    for note in getattr(outcome, "notes", []):
        lines.append(note)
    lines.append(f"results in {outcome.out}: grades.csv, problems.csv, results.jsonl, feedback/<student>.html, "
                 f"nbgrader_export.csv, histogram.png")
    target = getattr(outcome, "target", None)
    if target is not None:
        lines.append(f"gradebook: {target.describe()}; autograded/ and feedback/<student>/<assignment>/ under "
                     f"{target.root}" + ("" if target.private else
                                        " (`nbgrader release_feedback` hands the pages to the students)"))
    return "\n".join(lines)
