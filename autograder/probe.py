"""Trusted half of the verifier's probe: write the plan, build the probe cells, read the answers.

The plan (the inputs the grader chose) is a ``torch.save`` file copied into the kernel's work
dir. A probe cell (the source of :mod:`autograder.kernel_probe` plus one call) is inserted
right before the first test cell of the names it probes, so it sees the student's functions as
the tests would, but before any hidden test code has entered the kernel (a student's
``pre_run_cell`` hook could otherwise read answer keys out of the hidden tests). The kernel
answers with one ``display_data`` output of MIME type :data:`MIME`: a dict ``probe id ->
base64(torch.save(result))``; each result is loaded here with ``torch.load(weights_only=True)``
(plain tensors and Python scalars only, never unpickled objects).
"""
from __future__ import annotations

import base64
import binascii
import io
import json

import nbformat
import torch

from . import kernel_probe

MIME = "application/x.autograder-probe+json"
PROBE_TAG = "autograder-probe"
PLAN_NAME = ".autograder-plan"
MAX_PAYLOAD_BYTES = 16 << 20


def probe_source(plan_path: str, test_id: str, define: bool = True) -> str:
    """The source of one probe cell: the kernel-side function's definition (first probe cell
    only: compiling it costs ~40 ms a cell) and one call for this test."""
    call = f"_autograder_probe({json.dumps(str(plan_path))}, {json.dumps(test_id)})\n"
    if not define:
        return call
    with open(kernel_probe.__file__, encoding="utf-8") as handle:
        code = handle.read()
    return f"{code[code.index('def _autograder_probe'):]}\n\n{call}"


def make_cell(plan_path: str, test_id: str, define: bool = True) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(probe_source(plan_path, test_id, define))
    cell.metadata["tags"] = [PROBE_TAG]
    cell.metadata["autograder"] = {"probe": test_id}
    cell.id = ("autograder-probe-" + test_id)[:64]
    return cell


def is_probe(cell) -> bool:
    return PROBE_TAG in cell.get("metadata", {}).get("tags", [])


def decode(outputs, test_id: str) -> tuple[dict[str, dict], str | None]:
    """Results by key ("value:q1", "0", "1", ...) from a probe cell's outputs, and a note when
    something is off.

    Exactly one payload, for this test, must be present: a second one means that code other than
    the probe published it, and the whole cell's results are discarded.
    """
    payloads = [o for o in outputs if o.get("output_type") in ("display_data", "execute_result")
                and MIME in o.get("data", {})]
    if not payloads:
        return {}, "the check did not run (the kernel died or timed out before it)"
    if len(payloads) > 1:
        return {}, "more than one probe payload in the cell: results discarded"
    data = payloads[0]["data"][MIME]
    if isinstance(data, str):  # nbformat may keep JSON as text
        try:
            data = json.loads(data)
        except ValueError:
            return {}, "unreadable probe payload"
    if not isinstance(data, dict) or data.get("test") != test_id or not isinstance(data.get("results"), dict):
        return {}, "unreadable probe payload"
    results: dict[str, dict] = {}
    total = 0
    for key, blob in data["results"].items():
        if not isinstance(key, str) or not isinstance(blob, str):
            continue
        total += len(blob)
        if total > MAX_PAYLOAD_BYTES:
            return {}, "probe payload too large"
        try:
            raw = base64.b64decode(blob.encode("ascii"), validate=True)
            value = torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")
        except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
            value = {"undecodable": f"not base64: {exc}"}
        except Exception as exc:  # weights_only refuses anything but plain data
            first = str(exc).splitlines()[0][:200] if str(exc) else ""
            value = {"undecodable": f"not plain data ({type(exc).__name__}): {first}"}
        if key == "*":  # all results in one blob
            if isinstance(value, dict) and "undecodable" not in value:
                for inner, result in value.items():
                    if isinstance(inner, str):
                        results[inner] = result if isinstance(result, dict) else {"undecodable": "result is not a dict"}
            continue
        if not isinstance(value, dict):
            value = {"undecodable": "result is not a dict"}
        results[key] = value
    return results, None
