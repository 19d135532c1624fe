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
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

FORMAT = "ich-bench/1"
MONAI_HINT = "install requirements-bench.txt (MONAI) to run the MONAI MILModel peer"


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


def _timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
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
        log.info("bench %s: %s", self.current, message)
        if self.on_progress is not None:
            self.on_progress({"bench": self.current, "message": message})

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


def _unmet(goals: list[dict]) -> bool:
    return any(g.get("met") is False for g in goals)


# ------------------------------------------------------------------------------ 1. roofline
def bench_roofline(ctx: BenchContext) -> dict:
    """Matrix-multiply FLOP rate (bf16, fp32) and each encoder's training FLOP rate as a share of it."""
    import torch

    from ich.predict import resolve_precision
    from ich.train import encoder_throughput, matmul_flops

    precision = resolve_precision("auto", torch.device("cpu"))
    limit_dtype = "bf16" if precision == "bf16" else "fp32"
    n = 256 if ctx.quick else 2048
    mm_s = 0.1 if ctx.quick else 1.0
    enc_s = 0.05 if ctx.quick else 2.0
    encoders = {  # name -> (encoder, input px, batch, goal)
        "compact": ("compact", 32 if ctx.quick else 128, 4 if ctx.quick else 64, 0.5),
        "resnet18": ("resnet18", 32 if ctx.quick else 256, 2 if ctx.quick else 16, 0.7),
    }
    mm = {"bf16": [], "fp32": []}
    rates = {k: [] for k in encoders}
    flop_per_slice = {}
    matmul_flops(torch.bfloat16, n=n, seconds=mm_s / 2)   # warm-up (oneDNN primitives)
    for r in range(ctx.repeats):
        ctx.say(f"repeat {r + 1}/{ctx.repeats}")
        mm["bf16"].append(matmul_flops(torch.bfloat16, n=n, seconds=mm_s))
        mm["fp32"].append(matmul_flops(torch.float32, n=n, seconds=mm_s))
        for key, (name, size, batch, _) in encoders.items():
            out = encoder_throughput(name, input_size=size, batch=batch, precision=precision, seconds=enc_s)
            rates[key].append(out["flop_per_s"])
            flop_per_slice[key] = out["flop_per_slice"]
    figs = {"matmul_bf16": figure(np.array(mm["bf16"]) / 1e9, "GFLOP/s", note=f"{n}x{n} matmul"),
            "matmul_fp32": figure(np.array(mm["fp32"]) / 1e9, "GFLOP/s", note=f"{n}x{n} matmul")}
    goals = []
    for key, (name, size, batch, target) in encoders.items():
        figs[f"{key}_train"] = figure(np.array(rates[key]) / 1e9, "GFLOP/s",
                                      note=f"{name} at {size}px, batch {batch}, {precision}, forward+backward+AdamW; "
                                           f"{flop_per_slice[key] / 1e9:.3g} GFLOP/slice")
        figs[f"{key}_ratio"] = figure(np.array(rates[key]) / np.array(mm[limit_dtype]), "x limit",
                                      note=f"training FLOP rate / {limit_dtype} matmul rate, per repeat")
        goals.append(goal(figs, f"{key}_ratio", ">=", target, text=f"≥ {target:g} of the {limit_dtype} matmul rate"))
    result = {"title": "Roofline: matmul limit and encoder training FLOP rate", "figures": figs, "goals": goals,
              "params": {"precision": precision, "matmul_n": n, "limit": limit_dtype, "encoders": {
                  k: {"encoder": v[0], "input_size": v[1], "batch": v[2]} for k, v in encoders.items()}}}
    if ctx.profile and _unmet(goals):
        result["profile"] = {f"{k}_train_step": _profile_encoder_step(*encoders[k][:3], precision)
                             for k, g in zip(encoders, goals) if g["met"] is False}
    return result


def _profile_encoder_step(name: str, size: int, batch: int, precision: str) -> list[dict]:
    """torch.profiler table of two training steps of an encoder (after two warm-up steps)."""
    from ich.train import encoder_train_step

    step = encoder_train_step(name, input_size=size, batch=batch, precision=precision)
    step()
    step()
    return torch_profile(lambda: (step(), step()))


# ------------------------------------------------------------------------------ 2. peer race
def _bag(lengths: list[int], size: int, seed: int = 0):
    """A padded bag batch: x (B, S, 1, size, size) in [0, 1], mask (B, S), labels (B,)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    B, S = len(lengths), max(lengths)
    x = torch.rand(B, S, 1, size, size, generator=g)
    mask = torch.zeros(B, S, dtype=torch.bool)
    for b, k in enumerate(lengths):
        mask[b, :k] = True
    x = x * mask[:, :, None, None, None]                                     # padding holds zeros
    y = torch.tensor([float(b % 2) for b in range(B)])
    return x, mask, y


def bench_peer_race(ctx: BenchContext) -> dict:
    """One weak-learner step: ours vs MONAI ``MILModel`` (same backbone, bag and dtype rules) vs the
    reference recipe (fp32, eager, one exam per step)."""
    import torch
    import torch.nn.functional as F

    from ich.config import make_config
    from ich.models import build_encoder, build_model
    from ich.predict import autocast, resolve_precision
    from ich.train import focal_loss, make_loss, make_optimizer

    cpu = torch.device("cpu")
    precision = resolve_precision("auto", cpu)
    if ctx.quick:
        size, lengths, overrides = 32, [4, 6], {"model.width": 8, "model.embed_dim": 16, "model.attention_dim": 8}
    else:
        from ich.store import open_dataset

        ds = open_dataset(ctx.store())
        train = ds.exams[ds.exams["split"] == "train"]
        size, lengths, overrides = int(ds.size), [int(k) for k in train["n_slices"].head(4)], {}
    cfg = make_config("", overrides=overrides)              # the default weak learner (compact, bf16 where native)
    D = cfg.model.embed_dim
    x, mask, y = _bag(lengths, size)

    def ours_factory():
        torch.manual_seed(0)
        model = build_model(cfg)
        if precision == "bf16":
            model.to(memory_format=torch.channels_last)
            model.channels_last = True
        model.train()
        opt, loss_fn = make_optimizer(cfg, model.parameters()), make_loss(cfg, "exam")

        def step():
            with autocast(cpu, precision):
                loss = loss_fn(model(x, mask).logit, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    def reference_factory():
        torch.manual_seed(0)
        model = build_model(cfg).train()                    # fp32, contiguous, eager
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)

        def step():
            for b, k in enumerate(lengths):                 # one exam per step, no padding
                loss = focal_loss(model(x[b:b + 1, :k]).logit, y[b:b + 1], alpha=0.6)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return step

    monai_factory, skipped = None, None
    try:
        from monai.networks.nets import MILModel as MonaiMIL
    except ImportError:
        skipped = MONAI_HINT
    else:
        def monai_factory():
            torch.manual_seed(0)
            backbone = build_encoder(cfg.model.encoder, in_channels=cfg.in_channels, embed_dim=D,
                                     width=cfg.model.width)
            model = MonaiMIL(num_classes=1, mil_mode="att", pretrained=False, backbone=backbone,
                             backbone_num_features=D)
            if precision == "bf16":
                model.to(memory_format=torch.channels_last)
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)

            def step():
                with autocast(cpu, precision):
                    z = model(x).squeeze(-1)                # (B,): every padded slot is encoded too
                    loss = F.binary_cross_entropy_with_logits(z.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            return step

    steps = {"ours": ours_factory(), "reference": reference_factory()}
    if monai_factory is not None:
        steps["monai"] = monai_factory()
    for fn in steps.values():
        fn()                                                 # warm-up: oneDNN primitives, optimiser state
    times = {k: [] for k in steps}
    for r in range(ctx.repeats):
        ctx.say(f"repeat {r + 1}/{ctx.repeats}")
        for k, fn in steps.items():
            times[k].append(_timed(fn, 1, warmup=0)[0])
    t = {k: np.array(v) for k, v in times.items()}
    slices = int(sum(lengths))
    figs = {"ours_step": figure(t["ours"], "s", note=f"{len(lengths)} exams ({lengths} slices, padded to "
                                                     f"{max(lengths)}) at {size}px, {precision}"),
            "reference_step": figure(t["reference"], "s", note="same exams, fp32 contiguous, SGD, one exam per step"),
            "ours_slices_per_s": figure(slices / t["ours"], "slices/s"),
            "reference_ratio": figure(t["reference"] / t["ours"], "x", note="reference time / our time, per repeat")}
    if "monai" in t:
        figs["monai_step"] = figure(t["monai"], "s", note="MONAI MILModel(mil_mode='att'), same backbone and bag")
        figs["monai_ratio"] = figure(t["monai"] / t["ours"], "x", note="MONAI time / our time, per repeat")
    goals = [goal(figs, "monai_ratio", ">=", 1.5, text="≥ 1.5x faster than MONAI MILModel", skipped=skipped)]
    result = {"title": "Peer race: one weak-learner training step", "figures": figs, "goals": goals,
              "params": {"precision": precision, "bag_lengths": lengths, "input_size": size,
                         "padded_share": round(1 - slices / (len(lengths) * max(lengths)), 3),
                         "encoder": cfg.model.encoder, "embed_dim": D, "monai": _version("monai")}}
    if skipped:
        result["notes"] = [f"monai_ratio skipped: {skipped}"]
    if ctx.profile and _unmet(goals):
        result["profile"] = {k: torch_profile(steps[k]) for k in ("ours", "monai") if k in steps}
    return result


# ------------------------------------------------------------------------------ 3. inference
def bench_inference(ctx: BenchContext) -> dict:
    """One exam: exam score + attention + slice ablation (``explain_exam``) and Grad-CAM of every slice."""
    import torch

    from ich.config import ModelConfig
    from ich.explain import explain_exam, explain_slices
    from ich.models import build_model
    from ich.predict import autocast, resolve_precision

    precision = resolve_precision("auto", torch.device("cpu"))
    n_slices, size = (8, 32) if ctx.quick else (40, 256)
    x = torch.rand(n_slices, 1, size, size, generator=torch.Generator().manual_seed(0))   # (S, C, H, W)
    figs, goals, models = {}, [], {}
    targets = {"compact": (None, 1.0), "resnet18": (2.0, 3.0)}   # (total goal, Grad-CAM goal) in s
    for name in ("compact", "resnet18"):
        ctx.say(name)
        torch.manual_seed(0)
        model = build_model(ModelConfig(encoder=name)).eval()
        models[name] = model
        score_t, cam_t, fast_t = [], [], []

        def score():
            return explain_exam(model, x, precision=precision)

        def cam():
            return explain_slices(model, x, method="gradcam")

        def fast_score():                                   # the predict path: bf16 + channels_last
            with torch.no_grad(), autocast(torch.device("cpu"), precision):
                return model(x.unsqueeze(0).contiguous())

        score(), cam()                                       # warm-up
        for _ in range(ctx.repeats):
            score_t += _timed(score, 1, warmup=0)
            cam_t += _timed(cam, 1, warmup=0)
        fast_t = _timed(fast_score, ctx.repeats)
        total = np.array(score_t) + np.array(cam_t)
        where = f"{name}, {n_slices} slices at {size}px, {ctx.threads} threads"
        figs[f"{name}_total"] = figure(total, "s", note=f"explain_exam + Grad-CAM of every slice; {where}")
        figs[f"{name}_score"] = figure(score_t, "s", note=f"explain_exam: exam logit, attention, slice logits, "
                                                          f"slice ablation (encoder in {precision}, as predict)")
        figs[f"{name}_gradcam"] = figure(cam_t, "s", note="explain_slices(method='gradcam'), batch 16 (fp32)")
        figs[f"{name}_score_{precision}"] = figure(fast_t, "s", note=f"model forward only, {precision} autocast "
                                                                     "(the predict path)")
        total_goal, cam_goal = targets[name]
        if total_goal is not None:
            goals.append(goal(figs, f"{name}_total", "<=", total_goal, text=f"≤ {total_goal:g} s on 2 cores"))
        goals.append(goal(figs, f"{name}_gradcam", "<=", cam_goal, text=f"≤ {cam_goal:g} s"))
    result = {"title": f"Inference and explanation of one {n_slices}-slice exam", "figures": figs, "goals": goals,
              "params": {"slices": n_slices, "input_size": size, "threads": ctx.threads, "precision": precision}}
    if ctx.profile and _unmet(goals):
        m = models["resnet18"]
        result["profile"] = {"resnet18_score_and_gradcam": torch_profile(
            lambda: (explain_exam(m, x, precision=precision), explain_slices(m, x, method="gradcam")))}
    return result


# ------------------------------------------------------------------------------ 4. ingestion
def _raw_decode_exam(paths: list[str]) -> np.ndarray:
    """The baseline: pydicom read + rescale of one exam's files -> (S, H, W) int16 HU (no sorting, no resize)."""
    import pydicom

    out = []
    for p in paths:
        ds = pydicom.dcmread(p)
        hu = ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
        out.append(np.clip(hu, -32768, 32767).astype(np.int16))
    return np.stack(out)


def _raw_decode(tree: Path, workers: int) -> int:
    """Decode every exam of a tree with ``workers`` processes (one task per exam); returns the slice count."""
    from concurrent.futures import ProcessPoolExecutor

    tasks = [sorted(str(p) for p in d.glob("*.dcm")) for d in sorted((tree / "exams").iterdir()) if d.is_dir()]
    if workers == 1:
        return sum(len(_raw_decode_exam(t)) for t in tasks)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return sum(len(a) for a in pool.map(_raw_decode_exam, tasks))


def bench_ingestion(ctx: BenchContext) -> dict:
    """Import throughput (slices/s) vs raw pydicom read + rescale of the same files with the same workers,
    for the phantom's RLE files and for the same exams written uncompressed; cached ``load`` latency."""
    from ich.sources import import_phantom
    from ich.store import open_dataset

    n_exams = 4 if ctx.quick else 12
    size = 16 if ctx.quick else 128
    workers = ctx.workers
    figs, goals, notes, decoders = {}, [], [], {}
    for kind in ("same", "none"):
        label = "rle" if kind == "same" else "uncompressed"
        ctx.say(f"preparing {n_exams} {label} exams")
        tree = ctx.subset_tree(n_exams, kind)
        n_files = sum(1 for _ in (tree / "exams").rglob("*.dcm"))
        counter = [0]

        def do_import():
            counter[0] += 1
            out = ctx.workdir / f"import-{label}-{counter[0]}"
            try:
                report = import_phantom(tree, out, size=size, workers=workers)
                decoders.update(report.get("decoders") or {})
                return report["slices"]
            finally:
                shutil.rmtree(out, ignore_errors=True)

        def do_raw():
            return _raw_decode(tree, workers)

        do_import(), do_raw()                                # warm-up: page cache, pools
        imp, raw = [], []
        for r in range(ctx.repeats):
            ctx.say(f"{label}: repeat {r + 1}/{ctx.repeats}")
            imp += _timed(do_import, 1, warmup=0)
            raw += _timed(do_raw, 1, warmup=0)
        imp_rate, raw_rate = n_files / np.array(imp), n_files / np.array(raw)
        figs[f"import_{label}"] = figure(imp_rate, "slices/s", note=f"import_phantom, {n_exams} exams, {n_files} "
                                                                     f"slices -> {size}px, {workers} workers")
        figs[f"raw_{label}"] = figure(raw_rate, "slices/s", note=f"pydicom dcmread + pixel_array + rescale to int16, "
                                                               f"{workers} workers, one task per exam")
        figs[f"ratio_{label}"] = figure(imp_rate / raw_rate, "x raw", note="import rate / raw rate, per repeat")
        goals.append(goal(figs, f"ratio_{label}", ">=", 0.9, text="≥ 0.9 of raw pydicom"))
    if decoders:
        notes.append(f"importer decoders used: {decoders}")

    ds = open_dataset(ctx.store())
    ids = ds.exams["exam_id"].tolist()[: (8 if ctx.quick else 40)]
    for e in ids[:2]:
        ds.load(e)                                           # warm-up

    def load_all():
        for e in ids:
            ds.load(e)

    per = np.array(_timed(load_all, ctx.repeats, warmup=0)) / len(ids) * 1e3
    figs["load_latency"] = figure(per, "ms/exam", note=f"Dataset.load (float32 HU + mask) of {len(ids)} cached exams "
                                                       f"at {ds.size}px, page cache warm")
    result = {"title": "Ingestion: DICOM import vs raw pydicom decode", "figures": figs, "goals": goals,
              "notes": notes, "params": {"exams": n_exams, "size": size, "workers": workers}}
    if ctx.profile and _unmet(goals):
        tree = ctx.subset_tree(n_exams, "same")

        def one():
            out = ctx.workdir / "import-profile"
            try:
                import_phantom(tree, out, size=size, workers=1)
            finally:
                shutil.rmtree(out, ignore_errors=True)

        result["profile"] = {"import_rle_workers1 (cProfile)": python_profile(one),
                             "raw_rle_workers1 (cProfile)": python_profile(lambda: _raw_decode(tree, 1))}
    return result


# ------------------------------------------------------------------------------ 5. study
def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (Linux /proc)."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return total


class PeakRSS:
    """Samples the resident memory of this process tree in a thread; ``peak`` in bytes."""

    def __init__(self, interval: float = 0.25):
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss(os.getpid()))
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.peak = _tree_rss(os.getpid())
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _tree_rss(os.getpid()))


def bench_study(ctx: BenchContext) -> dict:
    """Wall time of the quick study preset, of the first point of each curve, per cell and per-cell overhead;
    peak RSS of the process tree."""
    from ich.study import StudyConfig, make_study, read_events, read_progress, run_study

    dataset = ctx.store()
    if ctx.quick:
        import torch

        from ich.models import build_encoder, save_encoder

        torch.manual_seed(0)
        enc_path = ctx.workdir / "data" / "encoders" / "quick.pt"
        save_encoder(enc_path, build_encoder("compact", width=8, embed_dim=16),
                     {"windows": ["brain"], "input_size": 32, "method": "random"})
        spec = StudyConfig(dataset=str(dataset), supervisions=("weak", "strong"), budgets=(4,), seeds=(0,),
                           preset="tiny", init=str(enc_path), finetune="none", pixel_slices=2,
                           overrides=(("train.epochs", 2),), name="bench-quick")
        executor = "inline"
    else:
        spec = make_study("quick", dataset=str(dataset))
        executor = "local"
    out = ctx.workdir / "study"
    if out.exists():
        shutil.rmtree(out)
    ctx.say(f"running the {'tiny' if ctx.quick else 'quick'} study ({executor} executor)")
    t0 = time.perf_counter()
    with PeakRSS() as rss:
        run_study(spec, out, executor=executor,
                  on_progress=lambda p: ctx.say(f"{p.get('state')} {p.get('done')}/{p.get('total')}"))
    wall = time.perf_counter() - t0
    events = read_events(out)
    progress = read_progress(out)
    done = [e for e in events if e.get("event") == "done"]
    failed = [e for e in events if e.get("event") == "failed"]
    first = {}
    for e in done:
        arm = e["cell"].split("-m")[0]
        first[arm] = min(first.get(arm, math.inf), float(e["t"]))
    encoder = progress.get("encoder") or {}
    figs = {"wall": figure([wall], "s", note=f"{len(done)} cells done, {len(failed)} failed; includes encoder "
                                             f"pretraining ({encoder.get('seconds', 0)} s, "
                                             f"pretrained now: {encoder.get('pretrained_now')}) and embedding"),
            "first_point_all_curves": figure([max(first.values())] if first else [], "s",
                                             note="time until every arm has its first finished cell"),
            "cell": figure([e["seconds"] for e in done], "s", note="one fast-path cell: train + evaluate "
                                                                   "(values = every cell; spread = over cells)"),
            "cell_max": figure([max((e["seconds"] for e in done), default=math.nan)], "s",
                               note="the slowest cell (largest budgets train longest)"),
            "cell_train": figure([e.get("train_seconds", math.nan) for e in done], "s",
                                 note="the training loop of a cell (spread = over cells)"),
            "cell_eval": figure([e.get("eval_seconds", math.nan) for e in done], "s",
                                note="evaluate_run of a cell, incl. Grad-CAM pixel Dice (spread = over cells)"),
            "cell_overhead": figure([e["overhead_seconds"] for e in done], "s",
                                    note="cell seconds - train seconds - evaluation seconds (spread = over cells)"),
            "peak_rss": figure([rss.peak / 2 ** 20], "MiB", note="this process and its workers, sampled every 0.25 s")}
    for arm, t in first.items():
        figs[f"first_point_{arm}"] = figure([t], "s", note=f"first finished {arm} cell")
    if progress.get("embed_s") is not None:
        figs["embed"] = figure([progress["embed_s"]], "s", note="slice embeddings computed before the cells")
    goals = [goal(figs, "cell", "<=", 5.0, text="≤ 5 s per fast-path cell"),
             goal(figs, "cell_overhead", "<=", 2.0, text="< 2 s per cell")]
    if not ctx.quick:
        few, few_goals = _few_label_figures(out, ctx)
        figs.update(few)
        goals += few_goals
    return {"title": f"Study: the {'tiny (quick mode)' if ctx.quick else 'quick'} preset", "figures": figs,
            "goals": goals, "params": {"spec": spec.to_dict(), "executor": executor},
            "notes": [f"{len(failed)} cells failed: {failed[0].get('error')}"] if failed else []}


def _few_label_figures(study: Path, ctx: BenchContext) -> tuple[dict, list]:
    """The learning-from-few-labels table of a finished quick study: mean test exam AUC per arm and budget,
    plus the weak learner on the whole training split (same spec, budget None, same seeds); and its goals:
    weak >= 0.80 at 48 exam labels and >= 0.95 on the whole split, strong < 0.90 at 48 slice labels and
    rising, weak >= strong at every budget up to 200."""
    import pandas as pd

    from ich.study import Cell, cell_config, read_study
    from ich.train import fit

    spec, _ = read_study(study)
    table = pd.read_csv(study / "summary.csv")
    cells, means = table[table["row"] == "cell"], table[table["row"] == "mean"]
    figs: dict = {}
    for r in means.itertuples():
        per_seed = cells[(cells["arm"] == r.arm) & (cells["budget"] == r.budget)]["exam_auc"]
        figs[f"auc_{r.arm}_m{int(r.budget)}"] = figure(
            [r.exam_auc], "AUC", note=f"mean test exam AUC of {len(per_seed)} seeds "
                                      f"({', '.join(f'{v:.3f}' for v in per_seed)})")
    full = []
    for seed in spec.seeds:
        ctx.say(f"weak learner on the whole training split, seed {seed}")
        cfg = cell_config(spec, Cell("weak", "weak", None, seed, None))
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=ctx.threads))
        full.append(fit(cfg, ctx.scratch(f"weak-all-s{seed}") / "run")["test_exam_auc"])
    figs["auc_weak_all"] = figure([float(np.mean(full))], "AUC", note="weak learner, every exam label of the "
                                  f"training split; mean of seeds ({', '.join(f'{v:.3f}' for v in full)})")
    budgets = [b for b in spec.budgets if b <= 200]
    auc = lambda arm, b: (figs.get(f"auc_{arm}_m{b}") or {}).get("median")  # noqa: E731
    gaps = [auc("weak", b) - auc("strong", b) for b in budgets if auc("weak", b) is not None
            and auc("strong", b) is not None]
    figs["weak_minus_strong_min"] = figure([min(gaps)] if gaps else [], "AUC",
                                           note=f"smallest weak - strong gap over budgets {budgets}")
    if len(budgets) > 1 and auc("strong", budgets[0]) is not None and auc("strong", budgets[-1]) is not None:
        figs["strong_rise"] = figure([auc("strong", budgets[-1]) - auc("strong", budgets[0])], "AUC",
                                     note=f"strong AUC at {budgets[-1]} minus at {budgets[0]} slice labels")
    goals = [goal(figs, "auc_weak_m48", ">=", 0.80, text="weak ≥ 0.80 at 48 exam labels"),
             goal(figs, "auc_weak_all", ">=", 0.95, text="weak ≥ 0.95 on the whole training split"),
             goal(figs, "auc_strong_m48", "<=", 0.90, text="strong < 0.90 at 48 slice labels"),
             goal(figs, "strong_rise", ">=", 0.0, text="strong rises with the budget"),
             goal(figs, "weak_minus_strong_min", ">=", 0.0, text="weak ≥ strong at every budget ≤ 200")]
    return figs, goals


# ------------------------------------------------------------------------------ 6. growth
def bench_growth(ctx: BenchContext) -> dict:
    """Preprocessing (DICOM import) and one training epoch at 1x, 4x and 16x exams; fitted exponents."""
    from ich import runs
    from ich.config import make_config
    from ich.sources import import_phantom
    from ich.store import open_dataset
    from ich.train import fit

    base = 8 if ctx.quick else 6
    factors = (1, 2, 4) if ctx.quick else (1, 4, 16)   # quick: a smoke test of the code path only
    size = 16 if ctx.quick else 128
    epoch_px = 16 if ctx.quick else 64
    preset = "tiny" if ctx.quick else "default"
    rows = []
    warm = ctx.scratch("growth-warm")                        # untimed: first-call costs (imports, oneDNN)
    import_phantom(ctx.subset_tree(base, "same"), warm / "dataset", size=size, workers=ctx.workers)
    fit(make_config(str(warm / "dataset"), preset=preset, overrides={
        "train.epochs": 1, "train.patience": None, "data.input_size": epoch_px, "train.threads": ctx.threads}),
        warm / "run")
    shutil.rmtree(warm, ignore_errors=True)
    for f in factors:
        n = base * f
        ctx.say(f"{n} exams")
        tree = ctx.subset_tree(n, "same")
        out = ctx.scratch(f"growth-{n}")
        t0 = time.perf_counter()
        import_phantom(tree, out / "dataset", size=size, workers=ctx.workers)
        t_import = time.perf_counter() - t0
        ds = open_dataset(out / "dataset")
        cfg = make_config(str(out / "dataset"), preset=preset,
                          overrides={"train.epochs": 1, "train.patience": None, "data.input_size": epoch_px,
                                     "train.threads": ctx.threads})
        fit(cfg, out / "run")
        epoch = float(runs.read_metrics(out / "run")["seconds"].iloc[0])
        rows.append({"exams": n, "slices": int(len(ds.slices)),
                     "train_exams": int((ds.exams["split"] == "train").sum()),
                     "import_s": round(t_import, 3), "epoch_s": round(epoch, 3)})
        shutil.rmtree(out, ignore_errors=True)
    x = np.log([r["slices"] for r in rows])
    figs = {}
    for key, what in (("import_s", "preprocessing (import_phantom)"), ("epoch_s", "one epoch (train + validation)")):
        y = np.log([r[key] for r in rows])
        slope = float(np.polyfit(x, y, 1)[0])
        marginal = (rows[-1][key] - rows[0][key]) / (rows[-1]["slices"] - rows[0]["slices"]) * 1e3
        name = key.split("_")[0]
        figs[f"{name}_exponent"] = figure([slope], "exponent", note=f"{what}: slope of log time vs log slices over "
                                                                    f"{[r['exams'] for r in rows]} exams")
        for f, r in zip(factors, rows):
            figs[f"{name}_{f}x"] = figure([r[key]], "s", note=f"{what}, {r['exams']} exams, {r['slices']} slices")
        figs[f"{name}_marginal"] = figure([marginal], "ms/slice", note="extra time per extra slice, 1x -> 16x")
    goals = [goal(figs, "import_exponent", "<=", 1.15, text="≈ 1 (≤ 1.15: no worse than linear)"),
             goal(figs, "epoch_exponent", "<=", 1.15, text="≈ 1 (≤ 1.15: no worse than linear)")]
    return {"title": "Growth: time vs dataset size", "figures": figs, "goals": goals,
            "params": {"rows": rows, "import_size": size, "epoch_input_size": epoch_px, "preset": preset,
                       "workers": ctx.workers}}


# ------------------------------------------------------------------------------ folded-in figures
def bench_synth(ctx: BenchContext) -> dict:
    """Writing the default phantom (DICOM RLE + masks + labels) with one process per core, extrapolated to
    300 exams from a sample."""
    from ich.synth import write_synth_dataset

    n, size = (4, 32) if ctx.quick else (16, 256)
    workers = ctx.workers
    write_synth_dataset(ctx.scratch("synth-warm") / "x", 2, seed=0, size=size, workers=1)   # warm-up imports
    times = []
    for r in range(max(1, ctx.repeats - 1)):
        ctx.say(f"{n} exams, repeat {r + 1}")
        out = ctx.scratch(f"synth-{r}") / "phantom"
        t0 = time.perf_counter()
        write_synth_dataset(out, n, seed=r, size=size, workers=workers)
        times.append(time.perf_counter() - t0)
        shutil.rmtree(out.parent, ignore_errors=True)
    per_exam = np.array(times) / n
    figs = {"per_exam": figure(per_exam, "s/exam", note=f"{n} default phantom exams at {size}px, {workers} workers"),
            "default_300": figure(per_exam * 300, "s", extrapolated=True,
                                  note="300 exams at 256px = 300 x seconds per exam")}
    goals = [goal(figs, "default_300", "<=", 90.0, text="about a minute on 2 cores (≤ 90 s)")]
    result = {"title": "Synth: the default phantom", "figures": figs, "goals": goals,
              "params": {"sample_exams": n, "size": size, "workers": workers}}
    if ctx.profile and _unmet(goals):
        from ich.phantom import phantom_config
        from ich.synth import EXAM_DIR, MASK_DIR, PARAMS_DIR, synth_exam

        tmp = ctx.scratch("synth-profile")
        for sub in (EXAM_DIR, MASK_DIR, PARAMS_DIR):
            (tmp / sub).mkdir()
        cfg = phantom_config("default", size=size)
        result["profile"] = {"synth_exam (cProfile, one exam)": python_profile(lambda: synth_exam(tmp, 0, 0, cfg))}
    return result


def bench_pretrain(ctx: BenchContext) -> dict:
    """Pretraining the default encoder (``PretrainConfig()`` on the default dataset): slice-pool load plus a
    sample of steps, extrapolated to the configured epochs."""
    from ich.pretrain import PretrainConfig, pretrain
    from ich.store import open_dataset

    class _Enough(Exception):
        pass

    ds = open_dataset(ctx.store())
    cfg = PretrainConfig(threads=ctx.threads)
    if ctx.quick:
        cfg = PretrainConfig(input_size=32, local_size=16, batch_size=8, epochs=2, threads=ctx.threads)
    sample = 4 if ctx.quick else 12
    stamps: list[float] = []
    info = {}

    def on_progress(e):
        stamps.append(time.perf_counter())
        info.update(e)
        if len(stamps) > sample:
            raise _Enough()

    t0 = time.perf_counter()
    ctx.say(f"{sample} steps of {cfg.method} pretraining")
    try:
        pretrain(ds, ctx.scratch("pretrain") / "enc.pt", cfg, on_progress=on_progress)
    except _Enough:
        pass
    if len(stamps) < 3:
        raise RuntimeError(f"pretraining finished after {len(stamps)} steps; too few to time")
    step = np.diff(stamps[1:])                                    # the first step includes warm-up
    setup = stamps[0] - t0 - float(np.median(step))
    total_steps = int(info["steps"])
    figs = {"step": figure(step, "s", note=f"one step: batch {cfg.batch_size}, method {cfg.method}, "
                                           f"{cfg.input_size}px"),
            "setup": figure([setup], "s", note="slice pool load + model build (time to the first step minus one step)"),
            "default_total": figure(setup + step * total_steps, "s", extrapolated=True,
                                    note=f"setup + {total_steps} steps ({cfg.epochs} epochs x "
                                         f"{total_steps // cfg.epochs} steps)")}
    goals = [goal(figs, "default_total", "<=", 300.0, text="≤ 5 min")]
    result = {"title": "Pretrain: the default encoder", "figures": figs, "goals": goals,
              "params": {"config": cfg.to_dict(), "sampled_steps": len(step)}}
    if ctx.profile and _unmet(goals):
        stamps.clear()
        sample = 3

        def three_steps():
            try:
                pretrain(ds, ctx.scratch("pretrain-profile") / "enc.pt", cfg, on_progress=on_progress)
            except _Enough:
                pass
        result["profile"] = {"pretrain: pool load + 4 steps": torch_profile(three_steps)}
    return result


def bench_embed(ctx: BenchContext) -> dict:
    """Embedding every slice of the default dataset with the default (compact) encoder, cache cold."""
    import torch

    from ich.embed import embed_dataset
    from ich.models import build_encoder
    from ich.predict import resolve_precision
    from ich.store import open_dataset

    ds = open_dataset(ctx.store())
    precision = resolve_precision("auto", torch.device("cpu"))
    torch.manual_seed(0)
    enc = build_encoder("compact", width=8 if ctx.quick else 32, embed_dim=16 if ctx.quick else 128)
    meta = {"windows": ["brain"], "input_size": ds.size}
    repeats = ctx.repeats if ctx.quick else 1
    times = []
    for r in range(repeats):
        ctx.say(f"{len(ds.slices)} slices, repeat {r + 1}/{repeats}")
        cache = ctx.scratch(f"embed-{r}")
        t0 = time.perf_counter()
        embed_dataset(ds, enc, meta, cache, precision=precision)
        times.append(time.perf_counter() - t0)
        shutil.rmtree(cache, ignore_errors=True)
    n = len(ds.slices)
    figs = {"whole_dataset": figure(times, "s", note=f"{n} slices of {len(ds)} exams at {ds.size}px, {precision}"),
            "slices_per_s": figure(n / np.array(times), "slices/s")}
    goals = [goal(figs, "whole_dataset", "<=", 60.0, text="≤ 1 min")]
    result = {"title": "Embed: the whole default dataset", "figures": figs, "goals": goals,
              "params": {"slices": n, "precision": precision}}
    if ctx.profile and _unmet(goals):
        from ich.data import window_slices
        from ich.preprocess import resize

        def some_exams():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                for e in ds.exams["exam_id"].head(8):
                    x = window_slices(torch.from_numpy(resize(np.array(ds.load_raw(e)), ds.size)), ("brain",))
                    enc(x.contiguous(memory_format=torch.channels_last) if precision == "bf16" else x)
        result["profile"] = {"embed: 8 exams (load, window, encode)": torch_profile(some_exams)}
    return result


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
}


# ------------------------------------------------------------------------------ the run
def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001 - not installed
        return None


def describe_machine() -> dict:
    """CPU model, cores, memory, bf16 support, OS and library versions (nothing identifying)."""
    import torch

    from ich.predict import cpu_supports_bf16

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
            "versions": {m: _version(m) for m in ("torch", "torchvision", "numpy", "pydicom", "monai", "captum")}}


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


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


__all__ = ["BENCHMARKS", "BenchContext", "run_benchmarks", "describe_machine", "figure", "goal", "validate_report",
           "write_report", "read_report", "format_table", "torch_profile", "python_profile", "PeakRSS"]
