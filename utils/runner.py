"""Execute lecture notebooks with papermill and report name, seconds and device, one line each.

``python -m utils.runner --device auto --out build/notebooks notebooks/*.ipynb`` is what
``make course`` runs. Every lecture takes the same two parameters, ``device`` and ``seed``.

Each executed notebook gets a claims file beside it, ``<name>.claims.json``: the numbers the
lecture's text relies on, written by :func:`utils.claims.record` (the runner points the kernel at
the file through the ``COURSE_CLAIMS_FILE`` environment variable). ``--cpu-capability`` starts the
kernels with ``ATEN_CPU_CAPABILITY`` set (``default``, ``avx2``, ``avx512``...): which vectorised
CPU kernels ATen uses, so the tests can run every lecture the way another CPU would.

There used to be a ``--fast`` switch for smaller experiments; every lecture now runs its full
experiments in well under a minute, so the tests check the very numbers a student sees. The
option is still accepted (and ignored) so that old command lines keep working.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from utils.claims import ENV_VAR as CLAIMS_ENV_VAR
from utils.notebook import DEVICE_LINE_PREFIX

CAPABILITY_ENV_VAR = "ATEN_CPU_CAPABILITY"
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class RunResult:
    name: str
    seconds: float
    device: str
    error: str | None = None
    output: Path | None = None
    claims: Path | None = None

    def line(self) -> str:
        status = "ok" if self.error is None else f"FAILED: {self.error}"
        return f"{self.name:<34s} {self.seconds:6.1f} s  device={self.device:<6s} {status}"


def _device_from(nb) -> str:
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text = out.get("text", "") if out.get("output_type") == "stream" else ""
            for line in str(text).splitlines():
                if line.startswith(DEVICE_LINE_PREFIX):
                    return line[len(DEVICE_LINE_PREFIX):].split("|")[0].strip()
    return "?"


@contextmanager
def _environment(values: dict[str, str | None]):
    """Set (or, for ``None``, unset) environment variables for the kernels started inside."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = str(v)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def execute(path: str | Path, out_dir: str | Path, parameters: dict | None = None, timeout: int = 600,
            env: dict[str, str | None] | None = None) -> RunResult:
    """Execute one notebook into ``out_dir`` and return what happened (never raises on a cell error).

    ``env`` adds (or, with ``None``, removes) environment variables of the kernel, e.g.
    ``{"ATEN_CPU_CAPABILITY": "default"}``. The lecture's claims go to ``out_dir/<name>.claims.json``.
    """
    import nbformat
    import papermill as pm

    path, out_dir = Path(path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / path.name
    claims = out_dir / f"{path.stem}.claims.json"
    claims.unlink(missing_ok=True)
    start = time.perf_counter()
    error = None
    try:
        # the kernel imports `utils` from this checkout, whatever an editable install elsewhere points to
        pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        with _environment({"PYTHONPATH": pythonpath, **(env or {}), CLAIMS_ENV_VAR: str(claims.resolve())}):
            pm.execute_notebook(str(path), str(out), parameters=parameters or {}, cwd=str(path.parent),
                                kernel_name="python3", progress_bar=False, execution_timeout=timeout)
    except Exception as exc:  # papermill raises PapermillExecutionError with the cell's traceback
        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    seconds = time.perf_counter() - start
    device = _device_from(nbformat.read(out, as_version=4)) if out.exists() else "?"
    return RunResult(path.stem, seconds, device, error, out, claims if claims.exists() else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", help="notebooks to execute")
    parser.add_argument("--out", default="build/notebooks", help="folder for the executed copies and their claims files")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu-capability", default=None,
                        help="run the kernels with ATEN_CPU_CAPABILITY set to this (default, avx2, avx512, ...)")
    parser.add_argument("--fast", type=int, choices=(0, 1), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fast:
        print("note: --fast is ignored; every lecture runs its full experiments", flush=True)
    params = {"device": args.device, "seed": args.seed}
    env = {CAPABILITY_ENV_VAR: args.cpu_capability} if args.cpu_capability else None
    results = []
    for nb in args.notebooks:
        result = execute(nb, args.out, params, env=env)
        print(result.line(), flush=True)
        results.append(result)
    total = sum(r.seconds for r in results)
    failed = [r for r in results if r.error]
    print(f"{len(results)} notebooks in {total:.1f} s, {len(failed)} failed; executed copies in {args.out}/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
