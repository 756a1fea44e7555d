"""Ask: the student's answers, from a kernel where no hidden test code ever ran.

The worker starts a second sandboxed kernel for each submission, the *probe kernel*
(:mod:`autograder.kernels`), before the nbgrader kernel that runs the tests. It executes, in
notebook order, only the code cells that are not test cells (the student's answers and the
notebook's ordinary cells; never a test cell, never hidden test source; the work dir holds no
plan file). Then, for each test of the plan, the worker sends one ``execute_request`` whose code
carries that test's questions (:mod:`autograder.kernel_probe`, :mod:`autograder.verifier`) and
reads the answer from the ``execute_reply`` to *that* request (its ``user_expressions``; the
reply's parent ``msg_id`` is the one the worker chose). Nothing a notebook carries (a cell id, a
tag, a MIME type) selects what is read as an answer, and the nbgrader kernel's outputs are never
read as answers.

Defends against: forged probe cells (a student cell with a probe's id or tag), hooks that read
hidden tests (``pre_run_cell``: no hidden test is ever sent to this kernel), helpers that earlier
hidden tests defined (they do not exist here), oversized or forged answers (every message and
payload is bounded before it is decoded: :func:`load_bounded`).
Tests: ``tests/test_verdict.py`` (units), ``tests/test_grader.py`` with the attack bank
(``attack-forged-probe-cells``, ``attack-cross-cell-helper``, ``attack-huge-tensor``, ...).
"""
from __future__ import annotations

import base64
import binascii
import io
import re
import time
import zipfile
from pathlib import Path
from typing import Any

import torch

from . import kernel_probe

#: caps on what the trusted worker accepts from a kernel
MAX_MESSAGE_BYTES = 48 << 20      # one ZMQ message (all frames) from the probe kernel
MAX_PAYLOAD_BYTES = 24 << 20      # one test's decoded answer archive
MAX_TENSOR_BYTES = 64 << 20       # all tensors of one answer, after decoding (views included)
MAX_ITEMS = 200_000               # list/tuple/dict entries in one answer
MAX_DEPTH = 12                    # nesting of one answer
MAX_STRING = 20_000               # characters of one string
ALLOWED_DTYPES = {torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8, torch.int16,
                  torch.int32, torch.int64, torch.uint8, torch.bool}

_BASE64_REPR = re.compile(r"'([A-Za-z0-9+/=]*)'")


class Unreadable(ValueError):
    """A kernel's answer that the worker refuses to decode (too large, not plain data, ...)."""


def kernel_source() -> str:
    return Path(kernel_probe.__file__).read_text(encoding="utf-8")


def define_code() -> str:
    """The request that loads :mod:`autograder.kernel_probe` into the probe kernel (once)."""
    return ("import types as _autograder_types\n"
            "_autograder_probe = _autograder_types.ModuleType('_autograder_probe')\n"
            f"exec(compile({kernel_source()!r}, '<autograder probe>', 'exec'), _autograder_probe.__dict__)\n"
            "del _autograder_types\n")


def ask_code(questions: bytes) -> tuple[str, dict]:
    """The request for one test: code that answers, and the expression the reply carries."""
    b64 = base64.b64encode(questions).decode("ascii")
    code = f"_autograder_answer = _autograder_probe.answer({b64!r}, globals())\n"
    return code, {"answer": "_autograder_answer"}


# ----------------------------------------------------------------------------- bounded decoding

def answer_bytes(reply: dict | None) -> bytes:
    """The answer archive carried by one execute_reply's user expression (bounded)."""
    if not isinstance(reply, dict):
        raise Unreadable("no reply")
    expression = (reply.get("user_expressions") or {}).get("answer")
    if not isinstance(expression, dict) or expression.get("status") != "ok":
        ename = expression.get("ename") if isinstance(expression, dict) else None
        raise Unreadable(f"the check could not run in your notebook ({str(ename)[:80]})")
    text = (expression.get("data") or {}).get("text/plain")
    if not isinstance(text, str) or len(text) > MAX_PAYLOAD_BYTES * 4 // 3 + 16:
        raise Unreadable("answer too large or not text")
    match = _BASE64_REPR.fullmatch(text)
    if match is None:
        raise Unreadable("answer is not the probe's encoding")
    try:
        return base64.b64decode(match.group(1), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Unreadable(f"answer is not base64: {exc}") from None


def load_bounded(raw: bytes) -> Any:
    """``torch.load(weights_only=True)`` of a kernel's bytes, with every size checked first.

    - at most :data:`MAX_PAYLOAD_BYTES`, a zip archive with stored (never compressed) entries
      whose declared sizes add up to less than the archive: no decompression bomb, no legacy
      format that allocates a declared size before reading it;
    - then the loaded value: exact ``torch.Tensor`` (strided, CPU, a plain dtype) whose storage
      really holds every element it claims (a ``torch.zeros(1).expand(N)`` view is refused before
      anything is cloned), all tensors together at most :data:`MAX_TENSOR_BYTES`, nesting,
      counts and string lengths bounded.
    """
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise Unreadable(f"answer larger than {MAX_PAYLOAD_BYTES} bytes")
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise Unreadable(f"answer is not a torch archive ({exc})") from None
    if len(entries) > 100_000 or sum(e.file_size for e in entries) > len(raw) \
            or any(e.compress_type != zipfile.ZIP_STORED for e in entries):
        raise Unreadable("answer archive declares more data than it holds")
    try:
        value = torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")
    except Exception as exc:  # weights_only refuses anything but plain data
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise Unreadable(f"not plain data ({type(exc).__name__}): {first}") from None
    check_bounds(value)
    return value


def check_bounds(value: Any) -> None:
    budget = {"items": 0, "tensor_bytes": 0}

    def walk(item: Any, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise Unreadable("answer nested too deeply")
        budget["items"] += 1
        if budget["items"] > MAX_ITEMS:
            raise Unreadable("answer holds too many items")
        kind = type(item)
        if kind is torch.Tensor:
            check_tensor(item, budget)
        elif item is None or kind in (bool, int, float, torch.dtype):
            return
        elif kind is str:
            if len(item) > MAX_STRING:
                raise Unreadable("a string in the answer is too long")
        elif kind in (list, tuple):
            for sub in item:
                walk(sub, depth + 1)
        elif kind is dict:
            for key, sub in item.items():
                walk(key, depth + 1)
                walk(sub, depth + 1)
        else:
            raise Unreadable(f"not plain data: {kind.__name__}")

    walk(value, 0)


def check_tensor(tensor: torch.Tensor, budget: dict) -> None:
    """A tensor's claimed elements must lie in the storage that came with it."""
    if tensor.layout != torch.strided or tensor.device.type != "cpu" or tensor.dtype not in ALLOWED_DTYPES:
        raise Unreadable(f"tensor of layout {tensor.layout}, device {tensor.device}, dtype {tensor.dtype}")
    if any(stride < 0 for stride in tensor.stride()):
        raise Unreadable("tensor with a negative stride")
    numel = 1
    for size in tensor.shape:
        numel *= int(size)
    element = tensor.element_size()
    nbytes = tensor.untyped_storage().nbytes()
    if numel:
        last = tensor.storage_offset() + sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()))
        if (last + 1) * element > nbytes or numel * element > max(nbytes, element):
            raise Unreadable(f"a tensor of {numel} elements claims more than its {nbytes}-byte storage holds "
                             "(an expanded or overlapping view)")
    budget["tensor_bytes"] += numel * element
    if budget["tensor_bytes"] > MAX_TENSOR_BYTES:
        raise Unreadable("the answer's tensors are too large")


def decode(reply: dict | None) -> tuple[dict[str, dict], str | None]:
    """Results by key ("value:q1", "0", "1", ...) from one probe request's reply, and a note when
    nothing usable came back."""
    try:
        value = load_bounded(answer_bytes(reply))
    except Unreadable as exc:
        return {}, f"could not read your code's answers: {exc}"
    if type(value) is not dict:
        return {}, "could not read your code's answers: not a dict"
    results = {}
    for key, result in value.items():
        if type(key) is str:
            results[key] = result if type(result) is dict else {"undecodable": "result is not a dict"}
    return results, None


# ----------------------------------------------------------------------------- the probe kernel

class ProbeSession:
    """Loads the probe module, runs the student's cells, then asks every test's questions, in one
    probe kernel.

    ``channel`` is a :class:`autograder.kernels.Channel` (bounded shell messages, interrupts,
    deadline). :meth:`ask` returns ``{grade_id: (results, note)}``; ``failure`` is a reason (or
    None) and ``failed_at`` the index of the student cell during which the kernel died or was
    killed (None when it was not a student cell)."""

    def __init__(self, channel, cell_timeout: float):
        self.channel = channel
        self.cell_timeout = cell_timeout
        self.failure: str | None = None
        self.failed_at: int | None = None
        self.loaded: bool | None = None

    def load(self) -> None:
        """:mod:`autograder.kernel_probe` into the kernel, before any student cell runs (its
        comparisons then hold references the student's code cannot replace)."""
        if self.failure:
            return
        reply = self.channel.execute(define_code(), timeout=60)
        self.failure = self.channel.failure
        self.loaded = not self.failure and (reply or {}).get("status") == "ok"

    def run_cells(self, sources: list[str]) -> None:
        for index, source in enumerate(sources):
            if self.failure:
                return
            self.channel.execute(source, timeout=self.cell_timeout, store_history=True)
            self.failure = self.channel.failure
            if self.failure:
                self.failed_at = index

    def ask(self, plan_files: dict[str, bytes]) -> dict[str, tuple[dict, str | None]]:
        answers: dict[str, tuple[dict, str | None]] = {}
        if self.loaded is None:
            self.load()
        if not self.failure and not self.loaded:
            note = "the checks could not be loaded into your notebook's kernel"
            return {g: ({}, note) for g in plan_files}
        for grade_id, questions in plan_files.items():
            if self.failure:
                answers[grade_id] = ({}, f"the check did not run: {self.failure}")
                continue
            code, expressions = ask_code(questions)
            started = time.monotonic()
            reply = self.channel.execute(code, timeout=self.cell_timeout, user_expressions=expressions)
            self.failure = self.channel.failure
            results, note = decode(reply)
            if reply is None and not note:
                note = f"no answer within {time.monotonic() - started:.0f} s"
            answers[grade_id] = (results, note)
        return answers
