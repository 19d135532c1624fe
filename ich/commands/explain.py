"""Explain one exam with a run's model: per-slice heatmaps (npz) and PNG overlays.

Methods: gradcam (fast: whole exams), saliency, ig (Integrated Gradients, ~0.3-3 s per slice on
CPU), occlusion (~1.5-10 s per slice), random (a control map). Slices are explained through the
slice head (--target slice); --target exam attributes the exam logit, whose maps are blank on
slices sparsemax gives zero attention. Writes <out>/<exam>-<method>.npz (maps, index, delta,
image, mask, attention, slice_prob, ablation, scores) and <out>/<exam>-<method>-<slice>.png.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ich import atomic


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a finished run folder")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="the run's checkpoint is from an older ich version and you trust its source: re-save it in "
                        "the safe format first (loading it this once may run code it holds)")
    p.add_argument("--exam", required=True, help="exam id to explain")
    p.add_argument("--dataset", help="dataset folder (default: the run's own)")
    p.add_argument("--method", default="gradcam", choices=["gradcam", "ig", "occlusion", "saliency", "random"],
                   help="attribution method (default gradcam)")
    p.add_argument("--target", default="slice", choices=["slice", "exam"],
                   help="attribute each slice's logit (default) or the exam logit")
    p.add_argument("--slices", help="slice positions, e.g. 3,4,5 or 10-20 (default: all)")
    p.add_argument("--out", required=True, help="folder for the npz and PNG files (created if missing)")
    p.add_argument("--n-steps", type=int, default=32, help="Integrated Gradients steps (default 32)")
    p.add_argument("--internal-batch-size", type=int, default=16,
                   help="IG steps / occlusion patches per forward pass (default 16)")
    p.add_argument("--no-png", action="store_true", help="write only the npz")
    p.add_argument("--seed", type=int, default=0, help="seed of the random control map")
    p.add_argument("--device", default="auto", help="auto (cuda when present) | cpu | cuda")


def parse_slices(text: str | None) -> list[int] | None:
    """``"3,4,10-12"`` -> [3, 4, 10, 11, 12]; None stays None."""
    if text is None:
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
    except ValueError as err:
        raise ValueError(f"--slices must be positions like 3,4,5 or 10-20, not {text!r}") from err
    return out


def write_explanation(res: dict, out: str | os.PathLike, *, png: bool = True) -> list[Path]:
    """Write an ``inspect.explain_run_exam`` result: one npz and, with ``png``, one overlay per slice."""
    import numpy as np
    from PIL import Image

    from ich.explain import overlay

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{res['exam_id']}-{res['method']}" + ("-exam" if res["target"] == "exam" else "")
    arrays = {k: np.asarray(res[k]) for k in ("index", "maps", "delta", "image", "attention", "slice_logits",
                                              "slice_prob", "ablation")}
    arrays.update(exam_logit=np.float32(res["exam_logit"]), exam_score=np.float32(res["exam_score"]),
                  method=np.str_(res["method"]), target=np.str_(res["target"]))
    if res["mask"] is not None:
        arrays["mask"] = res["mask"]
        for key in ("dice_mask", "dice_boxes", "pointing"):
            arrays[key] = np.array([s[key] for s in res["scores"]], dtype=np.float32)
    npz = out / f"{stem}.npz"
    with atomic.writing(npz, keep_suffix=True) as tmp:      # numpy appends .npz to any other name
        np.savez_compressed(tmp, **arrays)
    written = [npz]
    if png:
        scale = float(np.clip(res["maps"], 0, None).max()) or None          # one scale for the whole exam
        for j, i in enumerate(res["index"]):
            mask = None if res["mask"] is None else res["mask"][j]
            rgb = overlay(res["image"][j, 0], res["maps"][j], mask, scale=scale)
            path = out / f"{stem}-{int(i):03d}.png"
            Image.fromarray(rgb).save(path)
            written.append(path)
    return written


def run(args: argparse.Namespace) -> int:
    if args.trust_checkpoint:
        from ich import runs

        runs.trust_checkpoint(args.run)
    import numpy as np

    from ich.inspect import explain_run_exam

    for name in ("n_steps", "internal_batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}")
    res = explain_run_exam(args.run, args.exam, dataset=args.dataset, method=args.method, target=args.target,
                           slices=parse_slices(args.slices), device=args.device, n_steps=args.n_steps,
                           internal_batch_size=args.internal_batch_size, seed=args.seed)
    written = write_explanation(res, args.out, png=not args.no_png)
    summary = {"exam": res["exam_id"], "method": res["method"], "target": res["target"],
               "exam_score": round(res["exam_score"], 4), "slices": len(res["index"]), "npz": str(written[0]),
               "png": len(written) - 1}
    if res["method"] == "ig":
        summary["max_abs_ig_delta"] = float(np.nanmax(np.abs(res["delta"])))
    if res["scores"]:
        lesion = [s for s in res["scores"] if s["lesion_pixels"]]
        if lesion:
            summary["lesion_slices"] = len(lesion)
            summary["median_dice_mask"] = float(np.median([s["dice_mask"] for s in lesion]))
            summary["pointing_rate"] = float(np.mean([s["pointing"] for s in lesion]))
    print(json.dumps(summary, indent=2))
    return 0
