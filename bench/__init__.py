"""The course's benchmarks: ``python -m bench`` (``make bench``) runs them all.

- :mod:`bench.losses`: the course's label-smoothed cross-entropy against torch's built-in and a
  naive dense-target version, forward + backward, 4096 rows x 10..32,000 classes.
- :mod:`bench.chunked`: :func:`utils.chunked_loss.chunked_linear_cross_entropy` against
  ``h @ W.T`` + the built-in loss, peak memory and time up to a 131,072-entry vocabulary.
- :mod:`bench.grading` (when present): the autograder's throughput.

Each writes ``build/bench/<name>.json`` and a PNG plot beside it; :mod:`bench.common` says how
time and peak memory are measured. ``--quick`` runs tiny sizes (a smoke test, not a measurement).
"""

import os as _os

# OpenMP's default spin-waiting turns every small torch op into tens of milliseconds when the
# cores are shared with other busy processes (measured here: a 64 x 10 forward+backward took
# 50 ms instead of under 1 ms under a load average of 7 on 2 cores). Passive waiting costs a
# thread wake-up per parallel region, invisible at the sizes measured. It only takes effect when
# set before torch starts OpenMP, i.e. under ``python -m bench``; an explicit setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
