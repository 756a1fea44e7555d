"""Execute lecture notebooks with papermill and report name, seconds and device, one line each.

``python -m utils.runner --device auto --fast 0 --out build/notebooks notebooks/*.ipynb`` is what
``make course`` runs. Every lecture takes the same three parameters: ``device``, ``seed`` and
``fast`` (smaller experiments, for CI).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from utils.notebook import DEVICE_LINE_PREFIX


@dataclass
class RunResult:
    name: str
    seconds: float
    device: str
    error: str | None = None
    output: Path | None = None

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


def execute(path: str | Path, out_dir: str | Path, parameters: dict | None = None, timeout: int = 600) -> RunResult:
    """Execute one notebook into ``out_dir`` and return what happened (never raises on a cell error)."""
    import nbformat
    import papermill as pm

    path, out_dir = Path(path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / path.name
    start = time.perf_counter()
    error = None
    try:
        pm.execute_notebook(str(path), str(out), parameters=parameters or {}, cwd=str(path.parent),
                            kernel_name="python3", progress_bar=False, execution_timeout=timeout)
    except Exception as exc:  # papermill raises PapermillExecutionError with the cell's traceback
        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    seconds = time.perf_counter() - start
    device = _device_from(nbformat.read(out, as_version=4)) if out.exists() else "?"
    return RunResult(path.stem, seconds, device, error, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", help="notebooks to execute")
    parser.add_argument("--out", default="build/notebooks", help="folder for the executed copies")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast", type=int, choices=(0, 1), default=0, help="1: small experiments (CI)")
    args = parser.parse_args(argv)
    params = {"device": args.device, "seed": args.seed, "fast": bool(args.fast)}
    results = []
    for nb in args.notebooks:
        result = execute(nb, args.out, params)
        print(result.line(), flush=True)
        results.append(result)
    total = sum(r.seconds for r in results)
    failed = [r for r in results if r.error]
    print(f"{len(results)} notebooks in {total:.1f} s, {len(failed)} failed; executed copies in {args.out}/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
