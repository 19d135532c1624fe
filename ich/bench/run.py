"""Running benchmarks: the registry, one run with its machine description, the JSON report and its table."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from ich import atomic
from ich.bench.compute import bench_inference, bench_peer_race, bench_roofline
from ich.bench.core import FORMAT, BenchContext, package_version
from ich.bench.data import bench_growth, bench_ingestion, bench_synth
from ich.bench.firstrun import bench_first_run
from ich.bench.learning import bench_embed, bench_pretrain, bench_study

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


BENCHMARKS: dict[str, Callable[[BenchContext], dict]] = {
    "roofline": bench_roofline,
    "peer_race": bench_peer_race,
    "inference": bench_inference,
    "ingestion": bench_ingestion,
    "study": bench_study,
    "growth": bench_growth,
    "synth": bench_synth,
    "pretrain": bench_pretrain,
    "embed": bench_embed,
    "first_run": bench_first_run,
}


# ------------------------------------------------------------------------------ the run


def describe_machine() -> dict:
    """CPU model, cores, memory, bf16 support, OS and library versions (nothing identifying)."""
    import torch

    from ich.device import cpu_supports_bf16

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 2 ** 20, 1)
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        usable = os.cpu_count()
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "usable_cpus": usable, "memory_gib": mem,
            "cpu_bf16": cpu_supports_bf16(), "cuda": torch.cuda.is_available(), "os": platform.platform(),
            "python": platform.python_version(),
            "versions": {m: package_version(m) for m in ("torch", "torchvision", "numpy", "pydicom", "monai", "captum")}}


def _cpu_seconds() -> float:
    import resource

    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def run_benchmarks(names=None, *, quick: bool = False, on_progress: Callable[[dict], None] | None = None,
                   repeats: int | None = None, threads: int | None = None, dataset: str | os.PathLike | None = None,
                   dicom: str | os.PathLike | None = None, workers: int = 2, profile: bool = False,
                   workdir: str | os.PathLike | None = None, keep: bool = False) -> dict:
    """Run benchmarks and return the report (see the module docstring for the result shapes).

    Args:
        names: benchmarks to run (keys of ``BENCHMARKS``), in registry order; None runs all.
        quick: tiny generated inputs (seconds in all) instead of the default phantom.
        on_progress: called with ``{"bench", "message"}`` and ``{"bench", "done": result}`` dicts.
        repeats: timed repeats (default 3, quick 2).
        threads: torch threads (default: torch's current setting, or 1 with ``quick``, whose tiny
            operations only lose to thread synchronisation); restored afterwards.
        dataset, dicom: the default phantom dataset and DICOM tree (default ``data/datasets/phantom``
            and ``data/dicom/phantom`` under the data folder); only read.
        workers: import processes, for the importer and its raw-pydicom baseline alike.
        profile: attach a profile table (``torch.profiler``, or cProfile for ingestion) to benchmarks
            with an unmet goal.
        workdir: scratch folder (default: a new temporary folder, removed at the end unless ``keep``).

    Raises:
        ValueError: an unknown benchmark name (with a did-you-mean) or a bad option.
    """
    import torch

    from ich.config import check_choice

    names = list(BENCHMARKS) if names is None else list(names)
    if not names:
        raise ValueError(f"name at least one benchmark: {list(BENCHMARKS)}")
    for n in names:
        check_choice("benchmark", n, list(BENCHMARKS))
    names = [n for n in BENCHMARKS if n in names]
    repeats = repeats or (2 if quick else 3)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, not {repeats!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer, not {threads!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, not {workers!r}")
    if dataset is None or dicom is None:
        from ich.paths import datasets_dir, dicom_dir

        dataset = dataset or datasets_dir() / "phantom"
        dicom = dicom or dicom_dir() / "phantom"
    old_threads = torch.get_num_threads()
    if threads is None and quick:
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)
    made = workdir is None
    work = Path(tempfile.mkdtemp(prefix="ich-bench-")) if made else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    ctx = BenchContext(quick=quick, repeats=repeats, workdir=work, dataset=Path(dataset), dicom=Path(dicom),
                       threads=torch.get_num_threads(), workers=workers, profile=profile, on_progress=on_progress)
    report = {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "quick": quick,
              "machine": describe_machine(), "torch": torch.__version__, "threads": ctx.threads,
              "workers": workers, "repeats": repeats, "loadavg_start": _loadavg(), "benchmarks": {}}
    t_all = time.perf_counter()
    try:
        for name in names:
            ctx.current = name
            load0, t0, c0 = _loadavg(), time.perf_counter(), _cpu_seconds()
            try:
                result = {"name": name, "status": "ok", **BENCHMARKS[name](ctx)}
            except Exception as err:  # noqa: BLE001 - one failing benchmark must not stop the others
                log.exception("benchmark %s failed", name)
                result = {"name": name, "status": "failed", "error": f"{type(err).__name__}: {err}",
                          "title": (BENCHMARKS[name].__doc__ or name).strip().splitlines()[0], "figures": {},
                          "goals": []}
            wall = time.perf_counter() - t0
            result.setdefault("notes", [])
            result.setdefault("params", {})
            result["seconds"] = round(wall, 2)
            result["cpu_share"] = round((_cpu_seconds() - c0) / max(wall, 1e-9) / ctx.threads, 3)
            result["loadavg"] = [load0, _loadavg()]
            torch.set_num_threads(ctx.threads)                # a benchmark (fit, pretrain) may change it
            report["benchmarks"][name] = result
            if on_progress is not None:
                on_progress({"bench": name, "done": result})
    finally:
        torch.set_num_threads(old_threads)
        if made and not keep:
            shutil.rmtree(work, ignore_errors=True)
    report["loadavg_end"] = _loadavg()
    report["seconds"] = round(time.perf_counter() - t_all, 2)
    if keep:
        report["workdir"] = str(work)
    validate_report(report)
    return report


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


# ------------------------------------------------------------------------------ report I/O
_FIGURE_KEYS = {"median", "min", "max", "spread", "n", "unit", "values", "extrapolated", "note"}
_GOAL_KEYS = {"figure", "op", "target", "value", "met", "text"}
_RESULT_KEYS = {"name", "title", "status", "figures", "goals", "notes", "params", "seconds", "cpu_share", "loadavg"}
_REPORT_KEYS = {"format", "created", "quick", "machine", "torch", "threads", "workers", "repeats", "loadavg_start",
                "loadavg_end", "benchmarks", "seconds"}


def validate_report(report: dict) -> None:
    """Check a report's shape (the JSON schema of ``bench.json``).

    Raises:
        ValueError: naming the first missing key or wrong value.
    """
    def need(d, keys, where):
        if not isinstance(d, dict):
            raise ValueError(f"{where} must be an object, not {type(d).__name__}")
        missing = sorted(keys - set(d))
        if missing:
            raise ValueError(f"{where} lacks {missing}")

    need(report, _REPORT_KEYS, "the bench report")
    if report["format"] != FORMAT:
        raise ValueError(f"the bench report has format {report['format']!r}, expected {FORMAT!r}")
    for name, res in report["benchmarks"].items():
        need(res, _RESULT_KEYS, f"benchmark {name!r}")
        if res["status"] not in ("ok", "failed"):
            raise ValueError(f"benchmark {name!r} has status {res['status']!r}, expected 'ok' or 'failed'")
        if res["status"] == "ok" and not res["figures"]:
            raise ValueError(f"benchmark {name!r} is ok but has no figures")
        for key, fig in res["figures"].items():
            need(fig, _FIGURE_KEYS, f"figure {name}.{key}")
            if fig["n"] and not all(isinstance(fig[k], (int, float)) for k in ("median", "min", "max")):
                raise ValueError(f"figure {name}.{key} has a non-numeric median/min/max")
            if fig["n"] and not fig["min"] <= fig["median"] <= fig["max"]:
                raise ValueError(f"figure {name}.{key}: median {fig['median']} is outside [min, max]")
        for g in res["goals"]:
            need(g, _GOAL_KEYS, f"a goal of {name!r}")
            if g["figure"] not in res["figures"] and "skipped" not in g:
                raise ValueError(f"goal of {name!r} refers to the unknown figure {g['figure']!r}")
            if g["met"] not in (True, False, None):
                raise ValueError(f"goal {name}.{g['figure']} has met={g['met']!r}, expected true, false or null")


def write_report(report: dict, path: str | os.PathLike) -> Path:
    """Write the report as JSON (atomically)."""
    validate_report(report)
    return atomic.write_text(path, json.dumps(report, indent=2, default=str) + "\n")


def read_report(path: str | os.PathLike) -> dict:
    """Read and validate a ``bench.json``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; write one with `python -m ich bench --out {path}`")
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); rerun `python -m ich bench`") from err
    validate_report(report)
    return report


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return str(v)


def format_table(report: dict, *, markdown: bool = False) -> str:
    """The report as a table: benchmark, figure, median, spread, unit, goal, met."""
    rows = [("benchmark", "figure", "median", "±spread", "unit", "goal", "met")]
    for name, res in report["benchmarks"].items():
        if res["status"] != "ok":
            rows.append((name, "FAILED", "-", "-", "-", res.get("error", "")[:60], "-"))
            continue
        goals = {g["figure"]: g for g in res["goals"]}
        for key, fig in res["figures"].items():
            g = goals.get(key)
            met = "-" if g is None else ("skipped" if g.get("skipped") else
                                         {True: "yes", False: "NO", None: "-"}[g["met"]])
            spread = "-" if fig["spread"] is None else f"{100 * fig['spread']:.0f}%"
            unit = fig["unit"] + (" (extrap.)" if fig.get("extrapolated") else "")
            rows.append((name, key, _fmt(fig["median"]), spread, unit, g["text"] if g else "", met))
        for g in res["goals"]:
            if g["figure"] not in res["figures"]:
                rows.append((name, g["figure"], "-", "-", "-", g["text"], "skipped"))
    if markdown:
        head, *body = rows
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)

