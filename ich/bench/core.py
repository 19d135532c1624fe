"""Shared pieces of the benchmarks: figures, goals, timing, the context (inputs, scratch space), profilers."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

FORMAT = "ich-bench/1"


# ------------------------------------------------------------------------------ figures and goals
def figure(values, unit: str, *, extrapolated: bool = False, note: str | None = None, digits: int = 4) -> dict:
    """Summarise repeated measurements: median, min, max, relative spread (half-range / median)."""
    v = np.asarray([float(x) for x in values], dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"median": None, "min": None, "max": None, "spread": None, "n": 0, "unit": unit, "values": [],
                "extrapolated": extrapolated, "note": note}
    med = float(np.median(v))
    spread = float((v.max() - v.min()) / (2 * abs(med))) if len(v) > 1 and med != 0 else None
    r = lambda x: float(f"{x:.{digits}g}")  # noqa: E731 - significant digits
    return {"median": r(med), "min": r(v.min()), "max": r(v.max()),
            "spread": None if spread is None else round(spread, 4), "n": int(len(v)), "unit": unit,
            "values": [r(x) for x in v], "extrapolated": extrapolated, "note": note}


def goal(figures: dict, key: str, op: str, target: float, *, text: str | None = None,
         skipped: str | None = None) -> dict:
    """A goal on a figure's median: ``op`` is ``>=`` or ``<=``; ``met`` is None when skipped or unmeasured."""
    value = (figures.get(key) or {}).get("median")
    met = None
    if skipped is None and value is not None:
        met = bool(value >= target) if op == ">=" else bool(value <= target)
    out = {"figure": key, "op": op, "target": target, "value": value, "met": met,
           "text": text or f"{'≥' if op == '>=' else '≤'} {target:g}"}
    if skipped:
        out["skipped"] = skipped
    return out


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


# ------------------------------------------------------------------------------ context
@dataclass
class BenchContext:
    """What every benchmark gets: mode, repeats, a scratch folder and the input data."""

    quick: bool = False                 # tiny generated inputs, seconds in all
    repeats: int = 3                    # timed repeats of the cheap loops (heavy ones run once)
    workdir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))
    dataset: Path | None = None         # full mode: the default phantom dataset (read only)
    dicom: Path | None = None           # full mode: its DICOM tree (read only)
    threads: int = 1                    # torch threads (recorded; every benchmark runs with them)
    workers: int = 2                    # import processes, for the importer and its raw baseline alike
    profile: bool = False               # attach a torch.profiler / cProfile table to unmet goals
    on_progress: Callable[[dict], None] | None = None
    current: str = ""
    cache: dict = field(default_factory=dict)

    def say(self, message: str) -> None:
        """One progress line: to ``on_progress`` when given (the CLI prints it), else to the log (never both)."""
        if self.on_progress is not None:
            self.on_progress({"bench": self.current, "message": message})
        else:
            log.info("bench %s: %s", self.current, message)

    def scratch(self, name: str) -> Path:
        """A fresh folder under the work folder (removed first if present)."""
        p = self.workdir / name
        if p.exists():
            shutil.rmtree(p)
        p.mkdir(parents=True)
        return p

    # -------------------------------------------------------------- inputs
    def dicom_tree(self) -> Path:
        """A phantom DICOM tree (``synth`` layout): the default one, or a tiny one in quick mode."""
        if "dicom" not in self.cache:
            if self.quick:
                from ich.synth import write_synth_dataset

                out = self.workdir / "quick-dicom"
                if not out.exists():
                    write_synth_dataset(out, 32, seed=0, size=32, difficulty="easy", slices=(4, 6), workers=1)
                self.cache["dicom"] = out
            else:
                if self.dicom is None or not (Path(self.dicom) / "synth.json").is_file():
                    raise FileNotFoundError(f"the phantom DICOM tree {self.dicom} does not exist; run `make phantom` "
                                            "(or `python -m ich synth --out data/dicom/phantom`), or use --quick")
                self.cache["dicom"] = Path(self.dicom)
        return self.cache["dicom"]

    def store(self) -> Path:
        """An ich dataset to read: a folder of links to the default phantom (so encoders and caches made
        next to it land in the work folder), or a tiny rendered one in quick mode."""
        if "store" not in self.cache:
            root = self.workdir / "data" / "datasets"
            if self.quick:
                from ich.phantom import write_phantom_dataset

                out = root / "tiny"
                if not out.exists():
                    write_phantom_dataset(out, 24, seed=0, size=32, difficulty="easy", slices=(4, 6))
            else:
                src = Path(self.dataset) if self.dataset else None
                if src is None or not (src / "dataset.json").is_file():
                    raise FileNotFoundError(f"the phantom dataset {src} does not exist; run `make phantom` "
                                            "(synth + import), or use --quick")
                out = root / src.name
                if not out.exists():
                    out.mkdir(parents=True)
                    for item in src.resolve().iterdir():
                        (out / item.name).symlink_to(item)
            self.cache["store"] = out
        return self.cache["store"]

    def subset_tree(self, n_exams: int, compression: str = "same") -> Path:
        """The first ``n_exams`` exams of the DICOM tree, copied (``same``) or rewritten uncompressed
        (``none``, with ``dicom.write_series``), with their masks and the matching rows of labels.csv."""
        key = ("subset", n_exams, compression)
        if key in self.cache:
            return self.cache[key]
        import pandas as pd

        from ich.dicom import read_series, write_series

        src = self.dicom_tree()
        exams = sorted(p.name for p in (src / "exams").iterdir() if p.is_dir())
        if n_exams > len(exams):
            raise ValueError(f"the DICOM tree {src} has {len(exams)} exams; the benchmark needs {n_exams}")
        out = self.scratch(f"dicom-{compression}-{n_exams}")
        (out / "exams").mkdir()
        (out / "masks").mkdir()
        sops = []
        for exam_id in exams[:n_exams]:
            if compression == "none":
                vol = read_series(src / "exams" / exam_id)
                write_series(vol.hu, out / "exams" / exam_id, patient_id=f"PHANTOM-{exam_id}",
                             series_key=f"ich-bench/none/{exam_id}", spacing_mm=vol.spacing_mm,
                             sop_uids=vol.sop_uids, compression="none")
            else:
                shutil.copytree(src / "exams" / exam_id, out / "exams" / exam_id)
            sops += [p.stem for p in (out / "exams" / exam_id).glob("*.dcm")]
            mask = src / "masks" / f"{exam_id}.nii.gz"
            if mask.is_file():
                shutil.copy2(mask, out / "masks" / mask.name)
        shutil.copy2(src / "synth.json", out / "synth.json")
        labels = pd.read_csv(src / "labels.csv")
        keep = labels["ID"].str.rsplit("_", n=1).str[0].isin(set(sops))
        labels[keep].to_csv(out / "labels.csv", index=False)
        self.cache[key] = out
        return out


# ------------------------------------------------------------------------------ profiling
def torch_profile(fn: Callable[[], object], rows: int = 10) -> list[dict]:
    """Top operators of one call of ``fn`` by self CPU time (``torch.profiler``)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1e3, 2),
             "share": round(e.self_cpu_time_total / total, 3), "calls": int(e.count)} for e in events[:rows]]


def python_profile(fn: Callable[[], object], rows: int = 10) -> list[dict]:
    """Top Python functions of one call of ``fn`` by own time (``cProfile``; this process only)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    try:
        fn()
    finally:
        prof.disable()
    stats = pstats.Stats(prof).stats
    total = sum(v[2] for v in stats.values()) or 1.0
    top = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:rows]
    return [{"function": f"{Path(f).name}:{line}({name})", "self_s": round(tt, 3), "cum_s": round(ct, 3),
             "share": round(tt / total, 3), "calls": int(nc)} for (f, line, name), (cc, nc, tt, ct, _) in top]


def unmet(goals: list[dict]) -> bool:
    """Whether a goal was measured and missed (skipped and unmeasured goals do not count)."""
    return any(g.get("met") is False for g in goals)


def package_version(module: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001 - not installed
        return None
