"""Model benchmarks: training rate against the machine's matmul roofline, the MONAI peer race, one exam's inference."""

from __future__ import annotations

import numpy as np

from ich.bench.core import BenchContext, timed, unmet, package_version, figure, goal, torch_profile


MONAI_HINT = "install requirements-bench.txt (MONAI) to run the MONAI MILModel peer"


# ------------------------------------------------------------------------------ 1. roofline
def bench_roofline(ctx: BenchContext) -> dict:
    """Matrix-multiply FLOP rate (bf16, fp32) and each encoder's training FLOP rate as a share of it."""
    import torch

    from ich.device import resolve_precision

    precision = resolve_precision("auto", torch.device("cpu"))
    limit_dtype = "bf16" if precision == "bf16" else "fp32"
    n = 256 if ctx.quick else 2048
    mm_s = 0.1 if ctx.quick else 1.0
    enc_s = 0.05 if ctx.quick else 2.0
    encoders = {  # name -> (encoder, input px, batch, goal)
        "compact": ("compact", 32 if ctx.quick else 128, 4 if ctx.quick else 64, 0.5),
        "resnet18": ("resnet18", 32 if ctx.quick else 256, 2 if ctx.quick else 16, 0.7),
    }
    # bf16 only where the CPU has it natively: emulated, a 2048^2 bf16 matmul takes ~15 s and is no one's limit
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16} if limit_dtype == "bf16" else {"fp32": torch.float32}
    mm = {name: [] for name in dtypes}
    rates = {k: [] for k in encoders}
    flop_per_slice = {}
    matmul_flops(dtypes[limit_dtype], n=n, seconds=mm_s / 2)   # warm-up (oneDNN primitives)
    for r in range(ctx.repeats):
        ctx.say(f"repeat {r + 1}/{ctx.repeats}")
        for name, dtype in dtypes.items():
            mm[name].append(matmul_flops(dtype, n=n, seconds=mm_s))
        for key, (name, size, batch, _) in encoders.items():
            out = encoder_throughput(name, input_size=size, batch=batch, precision=precision, seconds=enc_s)
            rates[key].append(out["flop_per_s"])
            flop_per_slice[key] = out["flop_per_slice"]
    figs = {f"matmul_{name}": figure(np.array(mm[name]) / 1e9, "GFLOP/s", note=f"{n}x{n} matmul") for name in mm}
    goals = []
    for key, (name, size, batch, target) in encoders.items():
        figs[f"{key}_train"] = figure(np.array(rates[key]) / 1e9, "GFLOP/s",
                                      note=f"{name} at {size}px, batch {batch}, {precision}, forward+backward+AdamW; "
                                           f"{flop_per_slice[key] / 1e9:.3g} GFLOP/slice")
        figs[f"{key}_ratio"] = figure(np.array(rates[key]) / np.array(mm[limit_dtype]), "x limit",
                                      note=f"training FLOP rate / {limit_dtype} matmul rate, per repeat")
        goals.append(goal(figs, f"{key}_ratio", ">=", target, text=f"≥ {target:g} of the {limit_dtype} matmul rate"))
    notes = [] if "bf16" in mm else ["no native bf16 on this CPU: the limit is the fp32 matmul rate and the (emulated) "
                                     "bf16 rate is not measured"]
    result = {"title": "Roofline: matmul limit and encoder training FLOP rate", "figures": figs, "goals": goals,
              "notes": notes,
              "params": {"precision": precision, "matmul_n": n, "limit": limit_dtype, "encoders": {
                  k: {"encoder": v[0], "input_size": v[1], "batch": v[2]} for k, v in encoders.items()}}}
    if ctx.profile and unmet(goals):
        result["profile"] = {f"{k}_train_step": _profile_encoder_step(*encoders[k][:3], precision)
                             for k, g in zip(encoders, goals) if g["met"] is False}
    return result


def _profile_encoder_step(name: str, size: int, batch: int, precision: str) -> list[dict]:
    """torch.profiler table of two training steps of an encoder (after two warm-up steps)."""

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
    from ich.device import autocast, resolve_precision
    from ich.objective import focal_loss, make_loss, make_optimizer

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
            times[k].append(timed(fn, 1, warmup=0)[0])
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
    goals = []        # the step race is informational: same kernels, parity is its limit (issue 14)
    cell_figs, cell_goals, cell_notes = _cell_race(ctx, skipped)
    figs.update(cell_figs)
    goals += cell_goals
    result = {"title": "Peer race: one study cell (ours, fast path) vs MONAI MILModel fine-tuned; one training step",
              "figures": figs, "goals": goals,
              "params": {"precision": precision, "bag_lengths": lengths, "input_size": size,
                         "padded_share": round(1 - slices / (len(lengths) * max(lengths)), 3),
                         "encoder": cfg.model.encoder, "embed_dim": D, "monai": package_version("monai")}}
    result["notes"] = cell_notes + ([f"MONAI figures skipped: {skipped}"] if skipped else [])
    if ctx.profile and unmet(goals):
        result["profile"] = {k: torch_profile(steps[k]) for k in ("ours", "monai") if k in steps}
    return result


#: MONAI's own MIL recipe (Project-MONAI/tutorials, pathology/multiple_instance_learning): AdamW at 3e-5,
#: no weight decay, 4 bags per step, cosine schedule over 50 epochs, the model trained end to end.
MONAI_RECIPE = {"lr": 3e-5, "weight_decay": 0.0, "bags_per_step": 4, "epochs": 50}
RACE_SEEDS = 3      # label draws raced (full mode): one draw's test AUC moves by ~0.05, so one seed decides nothing


def _cell_race(ctx: BenchContext, skipped: str | None) -> tuple[dict, list, list]:
    """The figure a user feels: quick-study cells of ours (weak, 48 exam labels, seeds 0-2, fast path on the
    default encoder) against MONAI ``MILModel`` fine-tuned end to end from the same encoder on the same 48
    bought exams with its tutorial recipe (``MONAI_RECIPE``); wall time and test exam AUC side by side, per
    seed, and the mean AUC gap over the seeds (the goal)."""
    import tempfile
    from pathlib import Path

    import torch

    from ich.models import build_encoder, save_encoder
    from ich.store import open_dataset
    from ich.study import cell_config, make_study, plan_cells, prepare_embeddings
    from ich.study.spec import default_encoder_path

    wall_goal = dict(text="≥ 50x less wall per cell than MONAI")
    if skipped:
        return {}, [goal({}, "cell_wall_ratio", ">=", 50.0, skipped=skipped, **wall_goal)], []
    if ctx.quick:
        dataset = ctx.store()
        encoder = ctx.workdir / "data" / "encoders" / "race.pt"
        if not encoder.is_file():
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                save_encoder(encoder, build_encoder("compact", width=8, embed_dim=16),
                             {"windows": ["brain"], "input_size": 32, "method": "random"})
        preset, budget, seeds, recipe = "tiny", 8, (0,), dict(MONAI_RECIPE, epochs=2)
    else:
        dataset = Path(ctx.dataset) if ctx.dataset else None
        encoder = default_encoder_path(dataset) if dataset else None
        if encoder is None or not encoder.is_file():
            why = "the default dataset's encoder is missing: run `make phantom` (or `python -m ich firstrun`) first"
            return {}, [goal({}, "cell_wall_ratio", ">=", 50.0, skipped=why, **wall_goal)], [f"cell race skipped: {why}"]
        preset, budget, seeds, recipe = "quick", 48, tuple(range(RACE_SEEDS)), MONAI_RECIPE
    ds = None
    ours_s, monai_s, ours_auc, monai_auc = [], [], [], []
    work = Path(tempfile.mkdtemp(prefix="cell-race-", dir=ctx.workdir))
    try:
        for seed in seeds:
            spec = make_study(preset, dataset=str(dataset), init=str(encoder), supervisions=("weak",),
                              budgets=(budget,), seeds=(seed,))
            cfg = cell_config(spec, plan_cells(spec)[0])
            prepare_embeddings(spec)     # once per dataset and encoder, shared by a study's cells (not timed)
            if ds is None:
                ds = open_dataset(cfg.data.dataset)
            ctx.say(f"seed {seed}: our cell ({cfg.train.supervision}, {cfg.train.budget} labels, fast path)")
            wall, auc = _race_ours(cfg, work / f"ours-{seed}")
            ours_s.append(wall)
            ours_auc.append(auc)
            ctx.say(f"seed {seed}: MONAI MILModel, {recipe['epochs']} epochs at lr {recipe['lr']:g}")
            wall, auc, n_exams, n_test = _race_monai(cfg, ds, work / f"ours-{seed}", recipe, seed)
            monai_s.append(wall)
            monai_auc.append(auc)
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    gaps = np.array(ours_auc) - np.array(monai_auc)
    figs = {"cell_ours": figure(ours_s, "s", note=f"fit + evaluate of one quick-study cell ({cfg.train.supervision}, "
                                                  f"{cfg.train.budget} labels, fast path, 3 learning rates on paid "
                                                  f"validation), seeds {list(seeds)}; embeddings cached beforehand"),
            "cell_monai": figure(monai_s, "s", note=f"MONAI MILModel(mil_mode='att') on the same encoder, trained "
                                                   f"end to end on the same {n_exams} bought exams: "
                                                   f"{recipe['epochs']} epochs, AdamW lr {recipe['lr']:g}, "
                                                   f"{recipe['bags_per_step']} bags per step, cosine; last epoch"),
            "cell_wall_ratio": figure(np.array(monai_s) / np.array(ours_s), "x",
                                      note="MONAI cell wall / our cell wall, per seed"),
            "cell_auc_ours": figure(ours_auc, "AUC", note=f"test exam AUC per seed, {n_test} test exams"),
            "cell_auc_monai": figure(monai_auc, "AUC", note="test exam AUC per seed, same test exams"),
            "cell_auc_gap": figure(gaps, "AUC", note="ours - MONAI per seed (negative: ours lower)"),
            "cell_auc_gap_mean": figure([gaps.mean()], "AUC", note=f"ours - MONAI, mean over {len(seeds)} seeds")}
    goals = [goal(figs, "cell_wall_ratio", ">=", 50.0, **wall_goal),
             goal(figs, "cell_auc_gap_mean", ">=", -0.02, text="mean test AUC at most 0.02 below MONAI's")]
    return figs, goals, [f"cell race: {len(seeds)} seed(s), one cell each per side; single runs, not repeats"]


def _race_ours(cfg, out) -> tuple[float, float]:
    """Wall seconds and test exam AUC of one cell of ours (``fit`` + ``evaluate_run``)."""
    import time

    from ich.evaluate import evaluate_run
    from ich.train import fit

    t0 = time.perf_counter()
    fit(cfg, out)
    auc = evaluate_run(out, pixel=False, write=False)["exam"]["auc"]
    return time.perf_counter() - t0, auc


def _race_monai(cfg, ds, ours, recipe: dict, seed: int) -> tuple[float, float, int, int]:
    """MONAI ``MILModel`` fine-tuned end to end on the exams our cell bought (its run folder ``ours``):
    wall seconds, test exam AUC, bought exams, test exams."""
    import time

    import torch
    import torch.nn.functional as F
    from monai.networks.nets import MILModel as MonaiMIL

    from ich import runs
    from ich.data import bag_loader
    from ich.metrics import roc_auc
    from ich.models import load_encoder

    bought = runs.read_labels(ours)
    bought_ids = list(dict.fromkeys(bought.loc[bought["kind"] == "exam", "exam_id"]))   # train + paid validation
    exams = ds.exams.set_index("exam_id").loc[bought_ids, ["label"]].reset_index()
    test = ds.exams.loc[ds.exams["split"] == "test", ["exam_id", "label"]].reset_index(drop=True)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    backbone, _ = load_encoder(cfg.model.init_path)
    model = MonaiMIL(num_classes=1, mil_mode="att", pretrained=False, backbone=backbone.train(),
                     backbone_num_features=cfg.model.embed_dim)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe["epochs"])
    train = bag_loader(ds, exams, cfg, batch_exams=recipe["bags_per_step"])
    for epoch in range(recipe["epochs"]):
        model.train()
        for batch in train:                                   # x: (B, S, C, H, W); padded slots encoded too
            loss = F.binary_cross_entropy_with_logits(model(batch["x"]).squeeze(-1), batch["label"].float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    scores = []
    with torch.no_grad():
        for batch in bag_loader(ds, test, cfg, batch_exams=1):
            scores.append(float(model(batch["x"]).squeeze()))
    auc = roc_auc(test["label"].to_numpy(), np.array(scores))
    return time.perf_counter() - t0, auc, len(exams), len(test)


# ------------------------------------------------------------------------------ 3. inference
def bench_inference(ctx: BenchContext) -> dict:
    """One exam: exam score + attention + slice ablation (``explain_exam``) and Grad-CAM of every slice."""
    import torch

    from ich.config import ModelConfig
    from ich.explain import explain_exam, explain_slices
    from ich.models import build_model
    from ich.device import autocast, resolve_precision

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
            score_t += timed(score, 1, warmup=0)
            cam_t += timed(cam, 1, warmup=0)
        fast_t = timed(fast_score, ctx.repeats)
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
    if ctx.profile and unmet(goals):
        m = models["resnet18"]
        result["profile"] = {"resnet18_score_and_gradcam": torch_profile(
            lambda: (explain_exam(m, x, precision=precision), explain_slices(m, x, method="gradcam")))}
    return result


# ------------------------------------------------------------------------------ training-rate probes
def matmul_flops(dtype, n: int = 1024, seconds: float = 1.0, seed: int = 0) -> float:
    """The CPU's dense matrix-multiply rate (FLOP/s) for a torch ``dtype`` at the current thread count."""
    import time

    import torch

    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, n, generator=g).to(dtype), torch.randn(n, n, generator=g).to(dtype)
    for _ in range(3):
        a @ b
    k, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        k += 1
    return 2 * n ** 3 * k / (time.perf_counter() - t0)


def encoder_train_step(encoder: str = "compact", *, input_size: int = 128, batch: int = 64, precision: str = "bf16",
                       channels_last: bool | None = None, seed: int = 0, **kwargs):
    """One CPU training step of an encoder (forward, backward, AdamW) on a fixed random batch.

    Returns a no-argument function that runs the step; used by ``encoder_throughput`` and the
    benchmark's profiles. ``channels_last`` defaults to on under bf16. The global RNG is left as it was.
    """
    import torch

    from ich.device import autocast
    from ich.models import build_encoder

    with torch.random.fork_rng(devices=[]):             # seeded weights without reseeding the caller's RNG
        torch.manual_seed(seed)
        enc = build_encoder(encoder, **kwargs)
    cl = precision == "bf16" if channels_last is None else channels_last
    if cl:
        enc = enc.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(enc.parameters(), lr=1e-4)
    x = torch.rand(batch, enc.in_channels, input_size, input_size,
                   generator=torch.Generator().manual_seed(seed))      # (N, C, H, W)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)

    def step():
        with autocast(torch.device("cpu"), precision):
            y = enc(x)
        y.float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def encoder_throughput(encoder: str = "compact", *, input_size: int = 128, batch: int = 64, precision: str = "bf16",
                       channels_last: bool | None = None, seconds: float = 3.0, **kwargs) -> dict:
    """Training throughput of an encoder on CPU: full steps (forward, backward, AdamW) on random slices.

    Returns:
        {"slices_per_s", "flop_per_s", "flop_per_slice"}; FLOPs counted by torch's FlopCounterMode
        (forward + backward of convolutions and matmuls).
    """
    import time

    from torch.utils.flop_counter import FlopCounterMode

    step = encoder_train_step(encoder, input_size=input_size, batch=batch, precision=precision,
                              channels_last=channels_last, **kwargs)
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    step()
    k, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or k < 2:
        step()
        k += 1
    dt = (time.perf_counter() - t0) / k
    return {"slices_per_s": batch / dt, "flop_per_s": flops / dt, "flop_per_slice": flops / batch}
