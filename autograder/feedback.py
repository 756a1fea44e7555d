"""Student feedback: one self-contained HTML page per submission, built from the verified verdicts.

What it defends against (issue 12, items 4, 5, 8 and 10), and the test that proves each:

* **Hidden tests in the page.** A test cell contributes its verdict and message (from the
  verifier) and nothing of its own: neither its source (which holds the hidden tests once nbgrader
  restored it) nor its outputs (a student's IPython hook can print the hidden source while the test
  runs). Kernel outputs are shown only for cells that ran *before* the first test cell, when no
  hidden code had reached the kernel, and only ``stream`` and ``error`` outputs: a
  ``display_data``/``execute_result`` can be rewritten later by ``update_display_data`` (same
  ``display_id``), from a cell that runs after the hidden tests.
  ``tests/test_feedback.py::test_hook_printing_hidden_tests_never_reaches_the_page``,
  ``::test_display_update_after_tests_is_not_shown``, ``::test_real_batch``.
* **Script in the instructor's browser (XSS).** Nothing the student wrote reaches the page as
  HTML: code and outputs are escaped text; markdown goes through mistune with raw HTML escaped and
  unsafe URLs neutralised, then through bleach with a small allowlist (no ``img``, no ``style``,
  no event handler, ``href`` only http/https/mailto). ``text/html``, SVG, JavaScript, widget and
  every other rich output is never rendered. The page carries a Content-Security-Policy
  (``default-src 'none'``; inline styles and ``data:`` images only) as a second line.
  ``::test_xss_markdown_and_outputs_are_inert``.
* **Unbounded work on student content.** Every cell's source and outputs are capped before
  rendering, and the whole render runs in a forked child under a wall-clock limit and an address
  space limit (``RLIMIT_AS``). On timeout, crash or memory exhaustion the student still gets a page
  with every verdict and a line saying why the notebook is not shown; :func:`render` never raises.
  ``::test_quadratic_markdown_is_bounded``, ``::test_render_timeout_still_gives_verdicts``.
* **"BEGIN HIDDEN TESTS" in an answer.** Nothing here parses hidden-test delimiters (nbgrader's
  ``ClearHiddenTests`` raised on such an answer and the row became ``failed: grader error``).
  ``::test_begin_hidden_tests_in_an_answer``.

:func:`exporter` and :func:`render` keep the signatures ``worker.py`` calls. The same page body
serves nbgrader's own ``generate_feedback`` through
:class:`autograder.nbgrader_ext.SafeFeedback`.
"""
from __future__ import annotations

import dataclasses
import html
import os
import re
import resource
import select
import signal
import time

import bleach
import mistune
from nbgrader import utils

# Size caps (characters) applied before anything is rendered.
MAX_SOURCE = 20_000        # a code cell's source shown
MAX_MARKDOWN = 20_000      # a markdown cell rendered as markdown; above it, shown as escaped text
MAX_MARKDOWN_TOTAL = 200_000  # markdown rendered per page; cells beyond it are shown as escaped text
MAX_OUTPUT_TEXT = 20_000   # text of one cell's outputs
MAX_MESSAGE = 4_000        # a verdict message
MAX_CELLS = 400            # cells shown
MAX_PAGE = 8 << 20         # bytes of the page the child may send back

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

_TAGS = ["p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "em", "strong", "del", "code", "pre",
         "ul", "ol", "li", "blockquote", "a", "table", "thead", "tbody", "tr", "th", "td"]
_ATTRIBUTES = {"a": ["href", "title"], "th": ["align"], "td": ["align"], "ol": ["start"]}
_PROTOCOLS = ["http", "https", "mailto"]
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")

_markdown = mistune.create_markdown(escape=True, plugins=["strikethrough", "table"])
_cleaner = bleach.Cleaner(tags=_TAGS, attributes=_ATTRIBUTES, protocols=_PROTOCOLS, strip=True,
                          strip_comments=True)


@dataclasses.dataclass(frozen=True)
class Renderer:
    """How feedback pages are made: limits of the forked render (seconds, extra address space)."""

    timeout: float = 10.0
    memory: int = 1 << 30


def exporter(config=None) -> Renderer:
    """The renderer the worker keeps; ``c.CourseFeedback.timeout`` / ``.memory`` (bytes) in
    the course config change its limits."""
    section = config["CourseFeedback"] if config is not None and "CourseFeedback" in config else {}
    kwargs = {}
    if "timeout" in section:
        kwargs["timeout"] = float(section["timeout"])
    if "memory" in section:
        kwargs["memory"] = int(section["memory"])
    return Renderer(**kwargs)


def render(exp: Renderer, nb, student_id: str, assignment: str, verdicts: dict,
           score: float, max_score: float) -> str:
    """The feedback page. Never raises: a render that fails, runs out of time or memory gives a
    page with the verdicts only, saying why."""
    exp = exp if isinstance(exp, Renderer) else Renderer()
    try:
        body, problem = _bounded(lambda: notebook_html(nb, verdicts), exp)
    except Exception as exc:  # fork failed, say
        body, problem = None, f"{type(exc).__name__}"
    if body is None:
        body = (f'<p class="problem">Your notebook could not be shown here ({html.escape(problem)}); '
                "the verdicts above are complete.</p>")
    return page(student_id, assignment, verdicts, score, max_score, body)


# --------------------------------------------------------------------------- the page


def page(student_id: str, assignment: str, verdicts: dict, score: float, max_score: float, body: str) -> str:
    title = f"{assignment}: feedback for {student_id}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style></head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        f'<p class="score">Score: {_num(score)} / {_num(max_score)}</p>\n'
        f"{summary_html(verdicts)}\n<h2>Your notebook</h2>\n{body}\n</body></html>\n")


def summary_html(verdicts: dict) -> str:
    # only tags that nbconvert's clean_html keeps (SafeFeedback's page goes through it)
    rows = "".join(
        f"<tr class=\"{'pass' if _ok(v) else 'fail'}\"><td><code>{html.escape(str(gid))}</code></td>"
        f"<td>{_num(v.get('score', 0))} / {_num(v.get('max_score', 0))}</td>"
        f"<td>{html.escape(_message(v) or ('passed' if _ok(v) else 'failed'))}</td></tr>"
        for gid, v in verdicts.items())
    return ("<table class=\"summary\"><tr class=\"head\"><td><b>test</b></td><td><b>points</b></td>"
            f"<td><b>verdict</b></td></tr>{rows}</table>")


def verdict_html(grade_id: str, verdict: dict | None) -> str:
    """One test cell: its verdict, never its source or outputs."""
    if verdict is None:
        return (f'<div class="test fail"><b>{html.escape(str(grade_id))}</b>: '
                "no verdict for this cell (it is not a test of this assignment)</div>")
    ok = _ok(verdict)
    text = (f"{'passed' if ok else 'failed'}: {_num(verdict.get('score', 0))} / "
            f"{_num(verdict.get('max_score', 0))} points (verified by the grader)")
    message = _message(verdict)
    if not ok and message:
        text += "\n" + message
    lines = "".join(f"<div>{html.escape(line)}</div>" for line in text.split("\n"))
    return f'<div class="test {"pass" if ok else "fail"}"><b>{html.escape(str(grade_id))}</b>: {lines}</div>'


def notebook_html(nb, verdicts: dict, markdown: bool = True) -> str:
    """The cells: answers and instructions as sanitised text, test cells as verdicts. With
    ``markdown=False`` markdown cells are shown as text, and every tag is one that nbconvert's
    ``clean_html`` keeps (for nbgrader's own feedback template)."""
    parts, seen_test, budget = [], False, MAX_MARKDOWN_TOTAL
    cells = list(nb.get("cells", []))
    for cell in cells[:MAX_CELLS]:
        kind = cell.get("cell_type")
        if utils.is_grade(cell) and not utils.is_solution(cell) and kind == "code":
            seen_test = True
            parts.append(verdict_html(cell.metadata.nbgrader.get("grade_id"),
                                      verdicts.get(cell.metadata.nbgrader.get("grade_id"))))
            continue
        source = _text(cell.get("source", ""))
        if kind == "markdown":
            parts.append(f'<div class="md">{markdown_html(source, budget)}</div>' if markdown
                         else f'<pre class="md">{_capped(source, MAX_MARKDOWN)}</pre>')
            budget -= len(source)
        elif kind == "code":
            parts.append(f'<pre class="code">{_capped(source, MAX_SOURCE)}</pre>')
            if seen_test:
                if cell.get("outputs"):
                    parts.append('<div class="note">(outputs of cells that ran after a hidden test '
                                 "are not shown)</div>")
            else:
                parts.append(outputs_html(cell.get("outputs", [])))
        else:
            parts.append(f'<pre class="raw">{_capped(source, MAX_SOURCE)}</pre>')
        if utils.is_grade(cell):  # a graded markdown/answer cell
            grade_id = cell.metadata.nbgrader.get("grade_id")
            parts.append(verdict_html(grade_id, verdicts.get(grade_id)))
    if len(cells) > MAX_CELLS:
        parts.append(f'<div class="note">({len(cells) - MAX_CELLS} more cells not shown)</div>')
    return "\n".join(parts)


def markdown_html(source: str, budget: int = MAX_MARKDOWN) -> str:
    """Markdown with raw HTML escaped, then cleaned by bleach; too long: escaped text."""
    if len(source) > min(MAX_MARKDOWN, budget):
        return (f'<p class="note">(this cell is too large to render: {len(source)} characters)</p>'
                f"<pre>{_capped(source, MAX_MARKDOWN)}</pre>")
    return _cleaner.clean(_markdown(source))


def outputs_html(outputs) -> str:
    """Stream text and errors, escaped and capped; every other output type is named, not shown."""
    chunks, skipped = [], []
    for output in outputs or []:
        kind = output.get("output_type")
        if kind == "stream":
            chunks.append(_text(output.get("text", "")))
        elif kind == "error":
            tb = output.get("traceback") or []
            tb = "\n".join(str(t) for t in tb) if isinstance(tb, list) else str(tb)
            chunks.append(tb or f"{output.get('ename', 'Error')}: {output.get('evalue', '')}")
        else:
            skipped.append(kind or "unknown")
    text = _ANSI.sub("", "".join(c if c.endswith("\n") else c + "\n" for c in chunks))
    out = f'<pre class="out">{_capped(text, MAX_OUTPUT_TEXT)}</pre>' if text.strip() else ""
    if skipped:
        out += f'<div class="note">({len(skipped)} display output(s) not shown in feedback)</div>'
    return out


# --------------------------------------------------------------------------- bounds


def _bounded(work, exp: Renderer) -> tuple[str | None, str]:
    """Run ``work()`` (returning str) in a forked child: wall-clock ``exp.timeout``, address space
    grown by at most ``exp.memory``, reply at most ``MAX_PAGE`` bytes. ``(text, "")`` or
    ``(None, reason)``."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 1
        try:
            os.close(read_fd)
            signal.alarm(int(exp.timeout) + 2)  # in case the parent is gone
            limit = _vm_size() + exp.memory
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            data = work().encode("utf-8", "replace")[:MAX_PAGE]
            view = memoryview(data)
            while view:
                view = view[os.write(write_fd, view):]
            code = 0
        except MemoryError:
            code = 3
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks, size, deadline, reason = [], 0, time.monotonic() + exp.timeout, ""
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                reason = f"rendering took longer than {exp.timeout:g} s"
                break
            ready, _, _ = select.select([read_fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(read_fd, 1 << 16)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_PAGE:
                reason = "the page would be too large"
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        if reason:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _, status = os.waitpid(pid, 0)
    if reason:
        return None, reason
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return b"".join(chunks).decode("utf-8", "replace"), ""
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 3:
        return None, "rendering ran out of memory"
    return None, "rendering failed"


def _vm_size() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


# --------------------------------------------------------------------------- small helpers


def _text(value) -> str:
    if isinstance(value, list):
        return "".join(str(v) for v in value)
    return value if isinstance(value, str) else str(value)


def _capped(text: str, limit: int) -> str:
    if len(text) <= limit:
        return html.escape(text)
    return html.escape(text[:limit]) + f"\n[… {len(text) - limit} more characters not shown]"


def _ok(verdict: dict) -> bool:
    try:
        return float(verdict.get("score", 0)) >= float(verdict.get("max_score", 0))
    except (TypeError, ValueError):
        return False


def _message(verdict: dict) -> str:
    message = verdict.get("message") or ""
    message = message if isinstance(message, str) else str(message)
    return message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE] + " […]"


def _num(value) -> str:
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return "?"


_STYLE = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1f2328}
pre{background:#f6f8fa;padding:.5rem;overflow-x:auto;white-space:pre-wrap;word-break:break-word}
pre.out{background:#fff;border-left:3px solid #d0d7de}
.test{border-left:4px solid;padding:2px 8px;margin:.5rem 0}
.pass{border-color:#1a7f37}.fail{border-color:#cf222e}
table.summary{border-collapse:collapse}table.summary td{border:1px solid #d0d7de;padding:2px 6px;text-align:left}
tr.pass td:first-child{border-left:4px solid #1a7f37}tr.fail td:first-child{border-left:4px solid #cf222e}
.note,.problem{color:#57606a;font-style:italic}.score{font-size:1.3rem;font-weight:bold}
"""
