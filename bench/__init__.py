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
# cores are shared with other busy processes (measured on the course's 2-core machine under a
# load average of 7: a 64 x 10 cross-entropy forward+backward took 50 ms with the default policy,
# under 1 ms with passive waiting). Passive waiting costs a thread wake-up per parallel region
# instead. It only takes effect when set before torch starts OpenMP, i.e. under
# ``python -m bench``; an explicit OMP_WAIT_POLICY in the environment wins, and the JSON files
# record which one was in force.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
