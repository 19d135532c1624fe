"""Benchmarks of this machine and of ich's hot paths, as ratios measured back to back in one run.

Performance goals are ratios measured in one process, so they hold on a noisy shared machine;
absolute times are quoted with the machine (and its load average) they came from. Every
benchmark is one function in ``BENCHMARKS``; it takes a ``BenchContext`` and returns a dict::

    {"name", "title", "status": "ok" | "failed", "figures": {key: FIGURE}, "goals": [GOAL],
     "notes": [str], "params": {...}, "profile": {...} (optional), "seconds", "cpu_share", "loadavg"}

    FIGURE = {"median", "min", "max", "spread" ((max - min) / (2 median), None for one value),
              "n", "unit", "values", "extrapolated" (bool), "note"}
    GOAL   = {"figure", "op" (">=" | "<="), "target", "value" (the figure's median), "met"
              (True | False | None when skipped), "text", "skipped" (reason, optional)}

Timed loops run a warm-up first; ratios are taken per repeat (numerator and denominator
measured back to back) and then summarised, so a load change between repeats cancels out.
``run_benchmarks`` adds the machine description (CPU, cores, memory, bf16 support, library
versions), the torch thread count and the load average at start and end.

``quick=True`` runs every benchmark on tiny generated inputs (seconds in all; the test
suite's smoke test); the full run uses the default phantom (``data/datasets/phantom`` and its
DICOM ``data/dicom/phantom``), which it never modifies: it reads them, copies subsets into a
temporary folder, and points studies at a folder of links so encoders and caches land there.
The MONAI peer in ``peer_race`` needs ``requirements-bench.txt``; without it that figure is
reported as skipped.

Modules: ``core`` (figures, goals, timing, the context, profilers), ``compute`` (roofline,
peer_race, inference), ``data`` (ingestion, growth, synth), ``learning`` (study, pretrain,
embed) and ``run`` (the ``BENCHMARKS`` registry, ``run_benchmarks``, the JSON report and its table).
"""

from ich.bench.core import FORMAT, BenchContext, figure, goal
from ich.bench.run import (BENCHMARKS, describe_machine, format_table, read_report, run_benchmarks, validate_report,
                           write_report)

__all__ = ["BENCHMARKS", "FORMAT", "BenchContext", "describe_machine", "figure", "format_table", "goal",
           "read_report", "run_benchmarks", "validate_report", "write_report"]
