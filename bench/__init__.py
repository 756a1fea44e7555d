"""The course's benchmarks: ``python -m bench`` (``make bench``) runs them all.

- :mod:`bench.losses`: the course's label-smoothed cross-entropy against torch's built-in and a
  naive dense-target version, forward + backward, 4096 rows x 10..32,000 classes.
- :mod:`bench.chunked`: :func:`utils.chunked_loss.linear_cross_entropy` against ``h @ W.T`` + the
  built-in loss and torch's chunked ``F.linear_cross_entropy``, peak memory and time up to a
  131,072-entry vocabulary.
- :mod:`bench.grading`: the autograder's throughput against stock ``nbgrader autograde``.

Each writes ``build/bench/<name>.json`` and a PNG plot beside it; :mod:`bench.common` says how
time and peak memory are measured. ``--quick`` runs tiny sizes (a smoke test, not a measurement).

OpenMP's wait policy is left as the environment sets it: the default (threads spin a while between
parallel regions) is what a notebook or a training script runs with. ``OMP_WAIT_POLICY=PASSIVE``
(threads sleep) adds a wake-up to every parallel region: it made the chunked loss, about 20 small
operations per tile, 1.4-2.4x slower at N x H x V = 2048 x 256 x 8192 on the course's 2-core CPU,
while it hides the cost of spinning when the cores are shared with other busy processes. So run
the benchmarks on a quiet machine; the JSON files record the policy in force.
:mod:`bench.grading` sets PASSIVE for the kernels it starts, which share the cores by design.
"""
