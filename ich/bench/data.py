"""Data benchmarks: DICOM import against raw pydicom, growth with the number of exams, phantom synthesis."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from ich.bench.core import BenchContext, timed, unmet, figure, goal, python_profile


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

    # 48 exams (~1,500 files): above the importer's 500-file threshold for a parallel header scan, so the
    # ratio measures a real import's throughput; at 12 exams (385 files, scanned serially) it measured
    # mostly the fixed start-up costs (2026-12-02, RLE: 0.64 at 12 exams, 0.80 at 48 on the same tree)
    n_exams = 4 if ctx.quick else 48
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
            imp += timed(do_import, 1, warmup=0)
            raw += timed(do_raw, 1, warmup=0)
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

    per = np.array(timed(load_all, ctx.repeats, warmup=0)) / len(ids) * 1e3
    figs["load_latency"] = figure(per, "ms/exam", note=f"Dataset.load (float32 HU + mask) of {len(ids)} cached exams "
                                                       f"at {ds.size}px, page cache warm")
    result = {"title": "Ingestion: DICOM import vs raw pydicom decode", "figures": figs, "goals": goals,
              "notes": notes, "params": {"exams": n_exams, "size": size, "workers": workers}}
    if ctx.profile and unmet(goals):
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
    300 exams from a sample: at 128 px (the default, the size the learners use) and, back to back, at 256 px."""
    from ich.synth import write_synth_dataset

    n, size, big = (4, 32, 64) if ctx.quick else (16, 128, 256)
    workers = ctx.workers
    write_synth_dataset(ctx.scratch("synth-warm") / "x", 2, seed=0, size=size, workers=1)   # warm-up imports
    times: dict[int, list[float]] = {size: [], big: []}
    for r in range(max(1, ctx.repeats - 1)):
        for px in (size, big):
            ctx.say(f"{n} exams at {px} px, repeat {r + 1}")
            out = ctx.scratch(f"synth-{r}-{px}") / "phantom"
            t0 = time.perf_counter()
            write_synth_dataset(out, n, seed=r, size=px, workers=workers)
            times[px].append(time.perf_counter() - t0)
            shutil.rmtree(out.parent, ignore_errors=True)
    per_exam = np.array(times[size]) / n
    figs = {"per_exam": figure(per_exam, "s/exam", note=f"{n} default phantom exams at {size}px, {workers} workers"),
            "default_300": figure(per_exam * 300, "s", extrapolated=True,
                                  note=f"300 exams at {size}px = 300 x seconds per exam"),
            "default_300_at_256": figure(np.array(times[big]) / n * 300, "s", extrapolated=True,
                                         note=f"the same at {big}px (the default before 2026-12-01)"),
            "speedup_vs_256": figure(np.array(times[big]) / np.array(times[size]), "x",
                                     note=f"{big}px time / {size}px time, per repeat (back to back)")}
    # the atlas phantom (ich.atlas) at its default 512 px: CPU-heavy (1 mm resampling of the MNI152 maps)
    n_atlas, atlas_size = (2, 48) if ctx.quick else (4, 512)
    write_synth_dataset(ctx.scratch("synth-atlas-warm") / "x", 1, seed=0, size=32, workers=1, anatomy="atlas")
    out = ctx.scratch("synth-atlas") / "phantom"
    ctx.say(f"{n_atlas} atlas exams at {atlas_size}px")
    t0 = time.perf_counter()
    write_synth_dataset(out, n_atlas, seed=0, size=atlas_size, workers=workers, anatomy="atlas")
    atlas_per_exam = (time.perf_counter() - t0) / n_atlas
    disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / n_atlas / 1e6
    shutil.rmtree(out.parent, ignore_errors=True)
    figs["atlas_per_exam"] = figure([atlas_per_exam], "s/exam",
                                    note=f"{n_atlas} atlas exams at {atlas_size}px, {workers} workers")
    figs["atlas_300"] = figure([atlas_per_exam * 300], "s", extrapolated=True,
                               note=f"300 atlas exams at {atlas_size}px = 300 x seconds per exam")
    figs["atlas_disk_300"] = figure([disk * 300], "MB", extrapolated=True,
                                    note=f"disk of 300 atlas exams at {atlas_size}px (RLE DICOM + masks)")
    goals = [goal(figs, "default_300", "<=", 90.0, text="about a minute on 2 cores (≤ 90 s)")]
    result = {"title": "Synth: the default phantom", "figures": figs, "goals": goals,
              "params": {"sample_exams": n, "size": size, "compared_size": big, "workers": workers,
                         "atlas_sample_exams": n_atlas, "atlas_size": atlas_size}}
    if ctx.profile and unmet(goals):
        from ich.phantom import phantom_config
        from ich.synth import EXAM_DIR, MASK_DIR, PARAMS_DIR, synth_exam

        tmp = ctx.scratch("synth-profile")
        for sub in (EXAM_DIR, MASK_DIR, PARAMS_DIR):
            (tmp / sub).mkdir()
        cfg = phantom_config("default", size=size)
        result["profile"] = {"synth_exam (cProfile, one exam)": python_profile(lambda: synth_exam(tmp, 0, 0, cfg))}
    return result
