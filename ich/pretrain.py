"""Label-free pretraining of the slice encoder on a dataset's unlabelled training slices.

Labels are what a budget counts; unlabelled scans are free. ``pretrain`` therefore gives every
learner the same label-free start: it reads only the pixels (``Dataset.load_raw``) and the
``split`` column of the exams table, never a label, subtype, mask or lesion count, and writes an
``ich-encoder`` file (``models.save_encoder``) that ``--init ENCODER`` and the frozen-embedding
fast path load.

Objectives (``PretrainConfig.method``, registry ``METHODS``):

- ``"local"`` (default): SimCLR's NT-Xent loss (Chen et al. 2020, https://arxiv.org/abs/2002.05709)
  on small local crops (``local_size`` px, not rescaled) centred on a random soft-tissue pixel,
  the two views of a slice jittered by a few pixels. Telling thousands of small tissue patches
  apart makes local content (a bright blob on brain) part of the embedding instead of letting
  head shape dominate it.
- ``"patch"``: a slice-level variant of foreign-patch interpolation (Tan et al., "Detecting
  outliers with foreign patch interpolation", MELBA 2022, https://arxiv.org/abs/2011.04197):
  half the slices get a soft-edged patch of another slice blended in on tissue, and a linear
  head on the embedding says which. Other slices' real pixels only; nothing about blood.
- ``"simclr"``: SimCLR on whole-slice crops of at least ``crop_area[0]`` of the slice.
- ``"masked"``: masked-image modelling for a CNN (SimMIM-style, https://arxiv.org/abs/2111.09886):
  blanked patches, a 1x1-conv pixel decoder on the last feature map, every pixel reconstructed
  (masked ones weighted ``masked_weight`` x). The final projection to D is not trained.

Why ``local`` is the default (chosen on a calibration phantom, never on an evaluated one): phantom
seed 100 (300 exams, 128 px; ``synth --seed 100``), which no reported study uses, imported, and each
method pretrained on its training-split pixels with its defaults (compact encoder; wall time on 2
cores beside other work: local 197 s, patch 240 s, simclr 337 s, masked 228 s). Then the quick
preset's recipe (fast path, paid validation, learning-rate grid) on that phantom, weak and strong at
24 / 48 / 96 labels, 5 seeds each (``study --init ENCODER --finetune none --supervision weak,strong
--budgets 24,48,96 --seeds 5``; "random init" is an untrained encoder file of the same architecture).
Mean test exam AUC of *the calibration phantom* ± sd over seeds, 2026-12-02::

    method      weak@24      weak@48      weak@96      strong@24    strong@48    strong@96    all 30 cells
    random init 0.66 ± 0.10  0.70 ± 0.03  0.69 ± 0.05  0.59 ± 0.06  0.62 ± 0.09  0.59 ± 0.08  0.641
    local       0.97 ± 0.01  0.93 ± 0.07  0.98 ± 0.02  0.78 ± 0.06  0.88 ± 0.08  0.92 ± 0.07  0.909
    patch       0.87 ± 0.05  0.89 ± 0.02  0.95 ± 0.02  0.90 ± 0.06  0.90 ± 0.05  0.87 ± 0.08  0.898
    simclr      0.90 ± 0.04  0.90 ± 0.01  0.94 ± 0.05  0.79 ± 0.03  0.82 ± 0.07  0.92 ± 0.04  0.877
    masked      0.59 ± 0.12  0.58 ± 0.08  0.66 ± 0.08  0.53 ± 0.02  0.61 ± 0.10  0.69 ± 0.06  0.608

``local`` has the highest mean over both arms and all budgets, so it stays the default; ``patch`` is a
close second (0.898) and ``masked`` is no better than random weights. The choice is not neutral
between the arms: against ``patch``, ``local`` gives the weak learner +0.10 / +0.04 / +0.03 and the
strong learner -0.12 / -0.02 / +0.05 at 24 / 48 / 96 labels. How much the weak-vs-strong answer owes to
the encoder is therefore worth checking on your own data (pretrain with ``--method patch`` and rerun).
Earlier probe tables in this docstring scored the val and test splits of evaluated phantoms; they are
no longer used to choose anything. Keeping the BatchNorm statistics of the training crops matters:
recomputing them on whole slices after ``local`` training dropped a linear probe's slice AUC from 0.75
to 0.63 (measured on the phantom now called ``--difficulty hard``).

Cost (issue 14; BENCHMARKS.md, "Where the pretraining time goes" and "Cheaper pretraining"):
drawing the crop centres by inverting a cumulative sum (``_draw_index``) instead of
``torch.multinomial`` made whole runs 1.3x faster at the same distribution (2026-12-04: 30 x 128 on
phantom seed 100, 290 s -> 221 s); the forward and backward passes are now about 80% of a step.
Cheaper schedules were judged on validation AUC only (the quick recipe at 48 labels). With three
pretraining seeds per schedule on phantoms 0 and 100 (2026-12-04), 10 epochs of 64 slices scored
0.016 below 30 epochs of 128 (+0.003 and -0.035 per phantom) for 2.7x less wall time, and 9 epochs of 64
(3.2x less) 0.025 below; both losses are the strong learner's (-0.04 to -0.05; the weak learner's score
does not move), so a cheaper encoder would tilt the weak-vs-strong answer. The default stays 30 epochs of
128. One pretraining seed against another moves the score by up to 0.03.

Precision is fp32 unless asked otherwise: ``auto`` (bf16 on CPUs with native bf16) once was the
default, so the same command pretrained another encoder on another CPU. Measured on 2026-12-04
(README, *Learning from few labels*), a bf16 encoder moves the quick study's means by 0.01-0.04,
about what a second fp32 pretraining draw does.

Augmentations are CT-specific and batched in torch (``augment_views``): window level/width
jitter and Gaussian noise in HU, then one affine per view (crop-and-resize, rotation, left-right
flip) via ``affine_grid``/``grid_sample``. Everything random derives from ``(seed, epoch)``, so a
run is deterministic on CPU for a seed and a resumed run (``resume=True``) continues exactly
where the state file left off. The state file sits next to the encoder (``state_path``) and is
written after every epoch; the encoder file is written (atomically) after the last epoch.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ich import atomic
from ich.config import ENCODER_NAMES, WINDOW_NAMES, JsonConfig, check_number, check_choice, reject_unknown_keys
from ich.device import resolve_precision
from ich.labels import WINDOWS
from ich.models import build_encoder, save_encoder, state_checksum
from ich.preprocess import resize
from ich.store import Dataset, open_dataset

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

METHODS = ("local", "patch", "simclr", "masked")
PRECISIONS = ("auto", "fp32", "bf16")
STATE_FORMAT = "ich-pretrain-state/1"
FEATURE_STRIDE = {"compact": 16, "resnet18": 32}   # px per cell of each encoder's last feature map
TISSUE_HU = (-100.0, 150.0)   # soft tissue, brain and blood: where local crops are centred


# ------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class PretrainConfig(JsonConfig):
    """How to pretrain a slice encoder without labels (see the module docstring for the methods)."""

    json_what = "pretrain config"

    method: str = "local"                     # METHODS: local | patch | simclr | masked
    encoder: str = "compact"                  # compact (CPU CNN) | resnet18
    width: int = 32                           # compact only: first-stage channels
    embed_dim: int = 128                      # D, the embedding size the learners use
    windows: tuple[str, ...] = ("brain",)     # CT windows stacked as channels (as DataConfig.windows)
    input_size: int | None = 128              # slices resized to this (as DataConfig.input_size); None = cached size
    splits: tuple[str, ...] = ("train",)      # whose slices are used (pixels only)
    epochs: int = 30                          # passes over the slice pool (cheaper schedules: module docstring)
    batch_size: int = 128                     # slices per step
    lr: float = 2e-3                          # peak AdamW learning rate (linear warm-up, cosine decay)
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0                # warm-up length in epochs (fractions allowed)
    temperature: float = 0.2                  # NT-Xent temperature (simclr, local)
    projection_dim: int = 64                  # output size of the projection head (simclr, local)
    local_size: int = 48                      # local: crop side in px at input_size
    local_jitter: int = 6                     # local: max shift in px between the two views' crops
    crop_area: tuple[float, float] = (0.5, 1.0)  # simclr, masked: crop area as a fraction of the slice
    rotation_deg: float = 10.0                # max in-plane rotation (both directions)
    flip: bool = True                         # left-right flips
    level_jitter_hu: float = 4.0              # window level shift, uniform in +-this (HU)
    width_jitter: float = 0.1                 # window width scale, uniform in 1 +- this
    noise_hu: float = 4.0                     # Gaussian noise std, uniform in [0, this] (HU)
    patch_size: tuple[float, float] = (6.0, 24.0)  # patch: foreign-patch diameter range (px)
    mask_ratio: float = 0.5                   # masked: share of patches blanked
    mask_patch: int = 16                      # masked: patch side in px (a multiple of the encoder stride)
    masked_weight: float = 4.0                # masked: loss weight of masked pixels vs visible ones
    max_slices: int | None = 20000            # slice pool held in memory (seeded subset when larger)
    seed: int = 0
    precision: str = "fp32"                   # fp32 (one recipe on every CPU) | bf16 | auto (bf16 where
                                              # the CPU has it natively: faster, but the encoder depends on the CPU)
    threads: int | None = None                # torch CPU threads; None = torch's default

    def __post_init__(self):
        for name in ("windows", "splits", "crop_area", "patch_size"):
            v = getattr(self, name)
            if isinstance(v, list):
                object.__setattr__(self, name, tuple(v))
        check_choice("pretrain.method", self.method, METHODS)
        check_choice("pretrain.encoder", self.encoder, ENCODER_NAMES)
        check_choice("pretrain.precision", self.precision, PRECISIONS)
        if not isinstance(self.windows, tuple) or not self.windows:
            raise ValueError(f"pretrain.windows must be a non-empty list of {list(WINDOW_NAMES)}, not {self.windows!r}")
        for w in self.windows:
            check_choice("pretrain.windows entry", w, WINDOW_NAMES)
        if len(set(self.windows)) != len(self.windows):
            raise ValueError(f"pretrain.windows must not repeat a window, not {list(self.windows)}")
        if self.encoder == "resnet18" and len(self.windows) not in (1, 3):
            raise ValueError(f"the resnet18 encoder takes 1 or 3 windows, not {len(self.windows)}")
        if not isinstance(self.splits, tuple) or not self.splits:
            raise ValueError(f"pretrain.splits must be a non-empty list of train/val/test, not {self.splits!r}")
        for s in self.splits:
            check_choice("pretrain.splits entry", s, ("train", "val", "test"))
        check_number("pretrain.width", self.width, lo=4, hi=512, integer=True)
        check_number("pretrain.embed_dim", self.embed_dim, lo=2, hi=4096, integer=True)
        check_number("pretrain.input_size", self.input_size, lo=16, hi=1024, integer=True, allow_none=True)
        check_number("pretrain.epochs", self.epochs, lo=1, integer=True)
        check_number("pretrain.batch_size", self.batch_size, lo=4, integer=True)
        check_number("pretrain.lr", self.lr, lo=0.0, lo_open=True)
        check_number("pretrain.weight_decay", self.weight_decay, lo=0.0)
        check_number("pretrain.warmup_epochs", self.warmup_epochs, lo=0.0)
        check_number("pretrain.temperature", self.temperature, lo=0.0, lo_open=True)
        check_number("pretrain.projection_dim", self.projection_dim, lo=2, integer=True)
        check_number("pretrain.local_size", self.local_size, lo=16, integer=True)
        check_number("pretrain.local_jitter", self.local_jitter, lo=0, integer=True)
        check_number("pretrain.rotation_deg", self.rotation_deg, lo=0.0, hi=180.0)
        check_number("pretrain.level_jitter_hu", self.level_jitter_hu, lo=0.0)
        check_number("pretrain.width_jitter", self.width_jitter, lo=0.0, hi=0.9)
        check_number("pretrain.noise_hu", self.noise_hu, lo=0.0)
        check_number("pretrain.mask_ratio", self.mask_ratio, lo=0.0, hi=0.95)
        check_number("pretrain.mask_patch", self.mask_patch, lo=1, integer=True)
        check_number("pretrain.masked_weight", self.masked_weight, lo=0.0)
        check_number("pretrain.max_slices", self.max_slices, lo=1, integer=True, allow_none=True)
        check_number("pretrain.seed", self.seed, lo=0, integer=True)
        check_number("pretrain.threads", self.threads, lo=1, integer=True, allow_none=True)
        if not isinstance(self.flip, bool):
            raise ValueError(f"pretrain.flip must be true or false, not {self.flip!r}")
        ca = self.crop_area
        if (not isinstance(ca, tuple) or len(ca) != 2 or not all(isinstance(v, (int, float)) for v in ca)
                or not 0.05 <= ca[0] <= ca[1] <= 1.0):
            raise ValueError(f"pretrain.crop_area must be (low, high) with 0.05 <= low <= high <= 1, not {ca!r}")
        if self.input_size is not None and self.method == "local" and self.local_size > self.input_size:
            raise ValueError(f"pretrain.local_size ({self.local_size} px) must not exceed input_size "
                             f"({self.input_size} px)")

    def to_dict(self) -> dict:
        """A JSON-ready dict (tuples become lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PretrainConfig":
        """Build from a (possibly partial) dict; unknown keys raise with a did-you-mean hint."""
        cls.check_mapping(d)
        reject_unknown_keys(d, cls, what=cls.json_what)
        return cls(**d)


def state_path(out: str | os.PathLike) -> Path:
    """The resumable state file next to an encoder file: ``enc.pt`` -> ``enc.pt.state``."""
    out = Path(out)
    return out.with_name(out.name + ".state")


# ------------------------------------------------------------------------------ slices (pixels only)
def load_slice_pool(dataset, cfg: PretrainConfig) -> tuple[Tensor, list[str]]:
    """The int16 HU slices of the configured splits, resized to ``cfg.input_size``: (N, h, w), and their exams.

    Reads the exams table's ``exam_id`` and ``split`` columns and ``load_raw`` pixels, nothing else.
    When the pool holds more than ``cfg.max_slices`` slices, a seeded subset is kept.
    """
    exams = dataset.exams[["exam_id", "split"]]
    ids = exams.loc[exams["split"].isin(cfg.splits), "exam_id"].astype(str).tolist()
    if not ids:
        have = sorted(set(exams["split"].astype(str)))
        raise ValueError(f"dataset {dataset.path} has no exam in the split(s) {list(cfg.splits)} (it has {have}); "
                         "pretrain on other splits (--splits) or re-import the dataset")
    size = int(cfg.input_size or dataset.size)
    counts = [int(dataset.load_raw(e).shape[0]) for e in ids]
    total = sum(counts)
    keep = None
    if cfg.max_slices is not None and total > cfg.max_slices:
        rng = np.random.default_rng((cfg.seed, 104729))
        keep = np.zeros(total, dtype=bool)
        keep[rng.choice(total, size=cfg.max_slices, replace=False)] = True
    n = total if keep is None else int(keep.sum())
    pool = torch.empty((n, size, size), dtype=torch.int16)
    row, start = 0, 0
    for exam_id, s in zip(ids, counts):
        take = np.arange(s) if keep is None else np.flatnonzero(keep[start:start + s])
        start += s
        if len(take) == 0:
            continue
        raw = np.asarray(dataset.load_raw(exam_id)[take])                 # (k, H, W) int16
        pool[row:row + len(take)] = torch.from_numpy(np.ascontiguousarray(resize(raw, size)))
        row += len(take)
    return pool, ids


# ------------------------------------------------------------------------------ augmentation
def _window_jittered(hu: Tensor, windows: tuple[str, ...], level_shift: Tensor, width_scale: Tensor) -> Tensor:
    """(N, h, w) HU -> (N, C, h, w) in [0, 1], each slice with its own level shift (N,) and width scale (N,)."""
    chans = []
    for name in windows:
        level, width = WINDOWS[name]
        lv = (level + level_shift).view(-1, 1, 1)                         # (N, 1, 1)
        wd = (width * width_scale).view(-1, 1, 1)
        chans.append(((hu - (lv - wd / 2)) / wd).clamp(0.0, 1.0))
    return torch.stack(chans, dim=1)                                       # (N, C, h, w)


def _affine_views(x: Tensor, g: torch.Generator, *, area: tuple[float, float], rotation_deg: float,
                  flip: bool, out_size: int) -> Tensor:
    """One random crop-rotate-flip per slice: (N, C, h, w) -> (N, C, out_size, out_size), air outside."""
    n = x.shape[0]
    u = torch.rand(n, 5, generator=g)
    side = torch.sqrt(area[0] + (area[1] - area[0]) * u[:, 0])          # crop side as a fraction of the slice
    theta = (2 * u[:, 1] - 1) * math.radians(rotation_deg)
    shift = (1 - side).unsqueeze(1) * (2 * u[:, 2:4] - 1)                 # (N, 2) keeps the crop inside
    sign = torch.where(u[:, 4] < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    cos, sin = torch.cos(theta) * side, torch.sin(theta) * side
    mat = torch.stack([torch.stack([cos * sign, -sin, shift[:, 0]], 1),
                       torch.stack([sin * sign, cos, shift[:, 1]], 1)], 1)  # (N, 2, 3)
    grid = F.affine_grid(mat, [n, x.shape[1], out_size, out_size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment_views(hu: Tensor, cfg: PretrainConfig, g: torch.Generator, *, local_at: Tensor | None = None) -> Tensor:
    """One augmented view per slice.

    Args:
        hu: (N, h, w) HU (int16 or float).
        cfg: augmentation strengths.
        g: the generator all randomness comes from.
        local_at: (N, 2) top-left corners (px) of local crops (``local`` method), else None for
            whole-slice crops.

    Returns:
        (N, C, s, s) float32 in [0, 1]; s = ``cfg.local_size`` for local crops, else h.
    """
    n, h, w = hu.shape
    u = torch.rand(n, 2, generator=g)
    level = (2 * u[:, 0] - 1) * cfg.level_jitter_hu
    scale = 1 + (2 * u[:, 1] - 1) * cfg.width_jitter
    x = hu.float()
    if local_at is not None:
        k = cfg.local_size
        rows = local_at[:, 0].view(-1, 1) + torch.arange(k).view(1, -1)   # (N, k)
        cols = local_at[:, 1].view(-1, 1) + torch.arange(k).view(1, -1)
        x = x[torch.arange(n).view(-1, 1, 1), rows.unsqueeze(2), cols.unsqueeze(1)]  # (N, k, k)
    if cfg.noise_hu > 0:
        sigma = torch.rand(n, 1, 1, generator=g) * cfg.noise_hu
        x = x + sigma * torch.randn(x.shape, generator=g)
    x = _window_jittered(x, cfg.windows, level, scale)                   # (N, C, s, s)
    area = (1.0, 1.0) if local_at is not None else cfg.crop_area
    return _affine_views(x, g, area=area, rotation_deg=cfg.rotation_deg, flip=cfg.flip, out_size=x.shape[-1])


def _draw_index(weight: Tensor, g: torch.Generator) -> Tensor:
    """One index per row of non-negative weights (N, M), drawn with probability proportional to the weight: (N,).

    The same distribution as ``torch.multinomial(weight, 1)``, drawn by inverting each row's
    cumulative sum (float64, so a 1e-6 fallback weight is not lost beside thousands of ones).
    ``multinomial`` spent a third of every pretraining step in its exponential draws (issue 14).
    """
    cdf = weight.double().cumsum(1)                                               # (N, M)
    u = torch.rand(weight.shape[0], 1, generator=g, dtype=torch.float64) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_max(weight.shape[1] - 1)


def _local_corners(hu: Tensor, cfg: PretrainConfig, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Top-left corners (N, 2) of the two views' local crops of (N, h, w) HU slices.

    One location per slice, centred on a random soft-tissue pixel (``TISSUE_HU``; anywhere when
    a slice has none, e.g. an air-only slice), then jittered by up to ``local_jitter`` px per view.
    """
    n, size = hu.shape[0], hu.shape[-1]
    k, j = cfg.local_size, cfg.local_jitter
    hi = size - k
    tissue = ((hu >= TISSUE_HU[0]) & (hu <= TISSUE_HU[1])).view(n, -1).float()    # (N, h*w)
    weight = tissue + 1e-6                                                        # uniform fallback
    centre = _draw_index(weight, g)                                               # (N,) flat pixel index
    base = torch.stack([centre // size, centre % size], 1) - k // 2                # (N, 2)
    a = (base + torch.randint(-j, j + 1, (n, 2), generator=g)).clamp(0, hi)
    b = (base + torch.randint(-j, j + 1, (n, 2), generator=g)).clamp(0, hi)
    return a, b


# ------------------------------------------------------------------------------ objectives
def _feature_map(encoder: nn.Module, x: Tensor) -> tuple[Tensor, int]:
    """The encoder's last feature map before global pooling, and its stride: (N, F, h/s, w/s), s."""
    if encoder.name == "compact":
        return encoder.stage3(encoder.stage2(encoder.stage1(encoder.stem(x)))), FEATURE_STRIDE["compact"]
    net = encoder.net
    if encoder.in_channels == 1:
        x = x.expand(-1, 3, -1, -1)                                       # (N, 3, H, W)
    x = (x - encoder.mean) / encoder.std
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x)))), FEATURE_STRIDE["resnet18"]


def _feature_channels(encoder: nn.Module) -> int:
    return 4 * encoder.config["width"] if encoder.name == "compact" else 512


class ProjectionHead(nn.Module):
    """SimCLR's MLP on slice embeddings: (N, D) -> (N, P), L2-normalised."""

    def __init__(self, embed_dim: int, projection_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(embed_dim, 2 * embed_dim), nn.BatchNorm1d(2 * embed_dim),
                                 nn.ReLU(inplace=True), nn.Linear(2 * embed_dim, projection_dim))

    def forward(self, h: Tensor) -> Tensor:
        return F.normalize(self.net(h).float(), dim=1)


class PixelDecoder(nn.Module):
    """A 1x1 conv from each feature-map cell to the pixels of its stride x stride block.

    (N, F, H/s, W/s) -> (N, C, H, W), s = stride.
    """

    def __init__(self, channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels, out_channels * stride * stride, 1)

    def forward(self, f: Tensor) -> Tensor:
        return F.pixel_shuffle(self.conv(f), self.stride)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """SimCLR's NT-Xent loss of two L2-normalised views (N, P): cross-entropy of each view against its partner."""
    z = torch.cat([z1, z2]).float()                                       # (2N, P)
    n = z1.shape[0]
    sim = z @ z.t() / temperature                                         # (2N, 2N)
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def _foreign_patches(x: Tensor, cfg: PretrainConfig, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Foreign-patch interpolation (after Tan et al. 2022): blend a patch of another slice into about half the slices.

    Args:
        x: (N, C, h, w) augmented views in [0, 1]; slice i takes its patch from slice i - 1.

    Returns:
        The edited views (N, C, h, w) and targets (N,): 1.0 where a patch was blended in. Each
        patch is a soft-edged ellipse with diameters in ``cfg.patch_size`` px, cut from a random
        place of the partner slice and blended in with weight alpha ~ U(0.3, 1), centred on a
        random tissue pixel (brain-window value strictly between 0 and 1).
    """
    n, c, h, w = x.shape
    u = torch.rand(n, 8, generator=g)
    has = (u[:, 0] < 0.5).float()
    lo, hi = cfg.patch_size
    ry = (lo + (hi - lo) * u[:, 1]) / 2
    rx = (lo + (hi - lo) * u[:, 2]) / 2
    inside = ((x[:, 0] > 0) & (x[:, 0] < 1)).view(n, -1).float() + 1e-6  # brain-window tissue, else anywhere
    centre = _draw_index(inside, g)
    cy, cx = (centre // w).float(), (centre % w).float()                  # where the patch goes
    sy, sx = u[:, 5] * h, u[:, 6] * w                                    # where it comes from
    alpha = (0.3 + 0.7 * u[:, 7]) * has
    yy = torch.arange(h).view(1, h, 1).float()
    xx = torch.arange(w).view(1, 1, w).float()
    d = ((yy - cy.view(-1, 1, 1)) / ry.view(-1, 1, 1)) ** 2 + ((xx - cx.view(-1, 1, 1)) / rx.view(-1, 1, 1)) ** 2
    soft = torch.sigmoid((1 - d) * 6) * alpha.view(-1, 1, 1)           # (N, h, w) feathered ellipse
    partner = x[torch.roll(torch.arange(n), 1)]                          # (N, C, h, w)
    shift_y = (sy - cy).round().long()
    shift_x = (sx - cx).round().long()
    rows = (torch.arange(h).view(1, h) + shift_y.view(-1, 1)).clamp(0, h - 1)   # (N, h)
    cols = (torch.arange(w).view(1, w) + shift_x.view(-1, 1)).clamp(0, w - 1)   # (N, w)
    src = partner[torch.arange(n).view(-1, 1, 1, 1), torch.arange(c).view(1, -1, 1, 1),
                  rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]          # (N, C, h, w) shifted partner
    out = x * (1 - soft.unsqueeze(1)) + src * soft.unsqueeze(1)
    return out, has


def _block_mask(n: int, size: int, patch: int, ratio: float, g: torch.Generator) -> Tensor:
    """(N, 1, size, size) float mask, 1 on blanked patches: ``round(ratio * cells)`` random cells per slice."""
    cells = size // patch
    k = int(round(ratio * cells * cells))
    order = torch.rand(n, cells * cells, generator=g).argsort(dim=1)
    m = torch.zeros(n, cells * cells)
    m.scatter_(1, order[:, :k], 1.0)
    m = m.view(n, 1, cells, cells)
    m = F.interpolate(m, scale_factor=patch, mode="nearest")              # (N, 1, cells*patch, cells*patch)
    return F.pad(m, (0, size - m.shape[-1], 0, size - m.shape[-2]))


# ------------------------------------------------------------------------------ training
def _lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def _build(cfg: PretrainConfig) -> tuple[nn.Module, nn.Module]:
    """Encoder and objective head, initialised from ``cfg.seed`` without touching the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        encoder = build_encoder(cfg.encoder, in_channels=len(cfg.windows), embed_dim=cfg.embed_dim, width=cfg.width)
        head = nn.ModuleDict()
        if cfg.method == "patch":
            head["patch"] = nn.Linear(cfg.embed_dim, 1)
        elif cfg.method == "masked":
            head["decoder"] = PixelDecoder(_feature_channels(encoder), len(cfg.windows), FEATURE_STRIDE[cfg.encoder])
        else:
            head["projection"] = ProjectionHead(cfg.embed_dim, cfg.projection_dim)
    return encoder, head


def _step_loss(encoder: nn.Module, head: nn.Module, hu: Tensor, cfg: PretrainConfig, g: torch.Generator,
               channels_last: bool) -> Tensor:
    """The objective on one batch of HU slices (B, h, w)."""
    def cl(x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    if cfg.method == "patch":
        x, target = _foreign_patches(augment_views(hu, cfg, g), cfg, g)   # (B, C, h, w), (B,)
        logit = head["patch"](encoder(cl(x))).float().squeeze(1)          # (B,)
        return F.binary_cross_entropy_with_logits(logit, target)
    if cfg.method == "masked":
        x = augment_views(hu, cfg, g)                                     # (B, C, h, w)
        size = x.shape[-1]
        m = _block_mask(x.shape[0], size, cfg.mask_patch, cfg.mask_ratio, g)  # (B, 1, h, w)
        f, stride = _feature_map(encoder, cl(x * (1 - m)))
        if size % stride:
            raise ValueError(f"masked pretraining needs input_size divisible by the encoder stride {stride}, "
                             f"not {size}")
        rec = head["decoder"](f).float()                                  # (B, C, h, w)
        weight = 1 + (cfg.masked_weight - 1) * m                          # (B, 1, h, w)
        return ((rec - x) ** 2 * weight).mean() / weight.mean()
    if cfg.method == "local":
        a, b = _local_corners(hu, cfg, g)
        x1, x2 = augment_views(hu, cfg, g, local_at=a), augment_views(hu, cfg, g, local_at=b)
    else:
        x1, x2 = augment_views(hu, cfg, g), augment_views(hu, cfg, g)  # (B, C, h, w) each
    z = head["projection"](encoder(cl(torch.cat([x1, x2]))))             # (2B, P)
    return nt_xent(z[: len(x1)], z[len(x1):], cfg.temperature)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    ss = np.random.SeedSequence([seed, epoch, 31337])
    return torch.Generator().manual_seed(int(ss.generate_state(1, dtype=np.uint64)[0] >> 1))


def _atomic_save(obj, path: Path) -> None:
    with atomic.writing(path) as tmp:
        torch.save(obj, tmp)


def pretrain(dataset, out: str | os.PathLike, cfg: PretrainConfig | None = None, *,
             on_progress: Callable[[dict], None] | None = None, resume: bool = False,
             overwrite: bool = False) -> dict:
    """Pretrain a slice encoder on unlabelled slices and write it as an ``ich-encoder`` file.

    Only pixels (``load_raw``) and the exams table's ``split`` column are read. The state
    (weights, optimiser, epoch, loss history) is saved to ``state_path(out)`` after every epoch;
    the encoder file ``out`` is written after the last one. Deterministic on CPU for a seed and
    thread count: everything random derives from ``(cfg.seed, epoch)``.

    Args:
        dataset: a dataset folder or an ``ich.store.Dataset``.
        out: the encoder file to write (``.pt``).
        cfg: the settings (default ``PretrainConfig()``).
        on_progress: called after every step with ``{"phase": "pretrain", "epoch", "epochs",
            "step", "steps", "loss"}`` (epoch counts from 1; step counts all steps of the run).
        resume: continue from ``state_path(out)``; the config must be the one that wrote it
            (``threads`` may differ; results are bit-identical only for the same thread count).
            Without a state file the run starts fresh.
        overwrite: replace an existing ``out`` (and its state) instead of refusing.

    Returns:
        A summary: ``path``, ``state``, ``checksum``, ``method``, ``slices``, ``exams``,
        ``epochs``, ``loss`` (per epoch), ``seconds`` (this call) and ``resumed_from`` (epoch).

    Raises:
        FileExistsError: ``out`` or its state exists and neither ``resume`` nor ``overwrite`` is set.
        ValueError: the state was written by another config, or the dataset has no slices to use.
    """
    cfg = cfg or PretrainConfig()
    if not isinstance(cfg, PretrainConfig):
        raise ValueError(f"cfg must be a PretrainConfig, not {type(cfg).__name__}")
    ds = dataset if isinstance(dataset, Dataset) else open_dataset(dataset)
    out = Path(out)
    if out.is_dir():
        raise FileExistsError(f"--out {out} is a folder; pass an encoder file path such as {out / 'encoder.pt'}")
    spath = state_path(out)
    if not (resume or overwrite) and (out.exists() or spath.exists()):
        which = out if out.exists() else spath
        raise FileExistsError(f"{which} already exists; pass --resume to continue an interrupted pretraining, "
                              "--overwrite to start again, or choose another --out")
    if resume and not overwrite and out.exists() and not spath.exists():
        raise FileExistsError(f"{out} exists but its state file {spath} does not, so there is nothing to resume; "
                              "pass --overwrite to pretrain again, or choose another --out")
    if overwrite and not resume:
        for p in (out, spath):
            p.unlink(missing_ok=True)

    precision = resolve_precision(cfg.precision, torch.device("cpu"))   # pretraining runs on the CPU
    old_threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(ds, out, spath, cfg, precision, on_progress, resume)
    finally:
        torch.set_num_threads(old_threads)


def _run(ds, out: Path, spath: Path, cfg: PretrainConfig, precision: str,
         on_progress: Callable[[dict], None] | None, resume: bool) -> dict:
    t0 = time.perf_counter()
    pool, exam_ids = load_slice_pool(ds, cfg)                              # (N, h, w) int16
    n = pool.shape[0]
    batch = min(cfg.batch_size, n)
    if batch < 4:
        raise ValueError(f"pretraining needs at least 4 slices; the {list(cfg.splits)} split(s) of "
                         f"{ds.path} hold {n}")
    steps_per_epoch = n // batch
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, int(round(cfg.warmup_epochs * steps_per_epoch)))
    encoder, head = _build(cfg)
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    channels_last = precision == "bf16"
    if channels_last:
        encoder.to(memory_format=torch.channels_last)
        head.to(memory_format=torch.channels_last)
    data_info = {"name": ds.name, "path": str(Path(ds.path).resolve()), "exams": len(exam_ids), "slices": int(n),
                 "splits": list(cfg.splits)}

    start_epoch, history = 0, []
    if resume and spath.exists():
        state = torch.load(spath, map_location="cpu", weights_only=True)
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"{spath} is not an ich pretraining state file; delete it or pass --overwrite")
        diff = [k for k, v in cfg.to_dict().items() if k != "threads" and state["config"].get(k) != v]
        if diff:
            raise ValueError(f"{spath} was written with other settings ({', '.join(diff)} differ); resume with "
                             "the same options, or pass --overwrite to start again")
        encoder.load_state_dict(state["encoder"])
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, history = int(state["epoch"]), list(state["history"])
        log.info("resuming pretraining of %s at epoch %d/%d", out, start_epoch + 1, cfg.epochs)
    elif resume:
        log.info("no state file %s; starting pretraining from scratch", spath)

    encoder.train()
    head.train()
    for epoch in range(start_epoch, cfg.epochs):
        g = _epoch_generator(cfg.seed, epoch)
        order = torch.randperm(n, generator=g)
        total_loss = 0.0
        for i in range(steps_per_epoch):
            step = epoch * steps_per_epoch + i
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total, warmup, cfg.lr)
            hu = pool[order[i * batch:(i + 1) * batch]]                      # (B, h, w) int16
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = _step_loss(encoder, head, hu, cfg, g, channels_last)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = loss.item()
            if not math.isfinite(value):
                raise RuntimeError(f"pretraining diverged at epoch {epoch + 1} step {i + 1} (loss {value}); "
                                   "lower --lr")
            total_loss += value
            if on_progress is not None:
                on_progress({"phase": "pretrain", "epoch": epoch + 1, "epochs": cfg.epochs, "step": step + 1,
                             "steps": total, "loss": value})
        history.append(total_loss / steps_per_epoch)
        log.info("pretrain epoch %d/%d loss %.4f", epoch + 1, cfg.epochs, history[-1])
        _atomic_save({"format": STATE_FORMAT, "config": cfg.to_dict(), "epoch": epoch + 1, "history": history,
                      "encoder": encoder.state_dict(), "head": head.state_dict(), "optimizer": opt.state_dict(),
                      "dataset": data_info}, spath)

    encoder.eval().to(memory_format=torch.contiguous_format)
    meta = {"windows": list(cfg.windows), "input_size": int(pool.shape[-1]), "pretrain": cfg.to_dict(),
            "method": cfg.method, "dataset": data_info, "loss": history, "precision": precision,
            "labels_used": False, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    save_encoder(out, encoder, meta)
    seconds = time.perf_counter() - t0
    return {"path": str(out), "state": str(spath), "checksum": state_checksum(encoder), "method": cfg.method,
            "slices": int(n), "exams": len(exam_ids), "epochs": cfg.epochs, "loss": history,
            "seconds": round(seconds, 2), "resumed_from": start_epoch, "precision": precision}
