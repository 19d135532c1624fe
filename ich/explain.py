"""Captum adapters that explain a model: per-slice heatmaps, exam-level slice importance, maps scored against masks.

Axes as in ``ich.models`` (N slices, S slices of one exam, C windows, H, W pixels). Every
function is stateless in Captum's two-phase spirit: the model is the forward function and
every choice is a keyword argument.

Pixel maps (``explain_slices``), all returned as float32 numpy (N, H, W) at the input size:

- ``"gradcam"``: ``LayerGradCam`` on the encoder's last convolutional stage
  (``relu_attributions=True``), upsampled bilinearly with ``LayerAttribution.interpolate``;
  cheap enough for whole exams.
- ``"ig"``: Integrated Gradients from a constant baseline (0 = black after windowing), summed
  over channels; the per-slice convergence delta is returned with ``return_delta=True``.
- ``"occlusion"``: ``Occlusion`` with a square window slid over all channels, averaged over
  channels; the drop of the logit when a patch is blacked out.
- ``"saliency"``: absolute input gradient, maximum over channels.
- ``"random"``: a seeded uniform-noise map, the control that real explanations must beat.

Target. ``target="slice"`` (default) attributes each slice's own logit through the slice head
(``MILModel.slice_logits``). ``target="exam"`` attributes the exam logit through the pooling;
with sparsemax, slices with attention weight 0 get *exactly zero* gradient, so their maps are
blank: that is the pooling, not a bug, and the reason slices are explained through the head.
Exam-level importance is given by ``explain_exam``: attention weights plus slice ablation
(``slice_ablation``: the change of the exam logit when one slice is removed from the bag).

Explanations run in float32 with autocast off and the model in eval mode (its mode is restored
afterwards), whatever precision it was trained in. Logits are attributed, not probabilities
(saturated sigmoids have vanishing gradients).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from ich.config import check_choice
from ich.device import autocast
from ich.metrics import boxes_from_mask, dice, mask_from_boxes, otsu_binarize, pointing_game

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

METHODS = ("gradcam", "ig", "occlusion", "saliency", "random")
TARGETS = ("slice", "exam")


# ------------------------------------------------------------------------------ forward functions
def slice_logit_fn(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """(N, C, H, W) slices -> (N,) slice logits through the encoder and the slice head."""
    def forward(x: Tensor) -> Tensor:
        return model.slice_logits(x)                                  # (N,)
    return forward


def bag_logit_fn(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """(B, S, C, H, W) bags -> (B,) exam logits through encoder, pooling and head."""
    def forward(x: Tensor) -> Tensor:
        return model(x).logit                                         # (B,)
    return forward


def gradcam_layer(model: nn.Module) -> nn.Module:
    """The encoder's last convolutional stage, where Grad-CAM reads activations and gradients.

    ``compact``: ``encoder.stage3`` (stride 16); ``resnet18``: ``encoder.net.layer4`` (stride 32,
    the reference's ``layer4``). Other encoders: the last ``nn.Conv2d`` module.

    Raises:
        ValueError: the encoder has no convolution.
    """
    enc = model.encoder
    if hasattr(enc, "stage3"):
        return enc.stage3
    net = getattr(enc, "net", None)
    if net is not None and hasattr(net, "layer4"):
        return net.layer4
    convs = [m for m in enc.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"Grad-CAM needs a convolutional encoder, but {type(enc).__name__} has no nn.Conv2d; "
                         "use method 'ig', 'occlusion' or 'saliency'")
    return convs[-1]


@contextlib.contextmanager
def _explaining(model: nn.Module):
    """Eval mode, gradients on, autocast off; the model's training flag is restored on exit."""
    was_training = model.training
    model.eval()
    device = _device(model)
    try:
        with torch.enable_grad(), torch.autocast(device_type=device.type, enabled=False):
            yield device
    finally:
        model.train(was_training)


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _as_slices(slices, name: str = "slices") -> Tensor:
    x = torch.as_tensor(np.asarray(slices) if not isinstance(slices, Tensor) else slices)
    if x.ndim != 4:
        raise ValueError(f"{name} must be (N, C, H, W) windowed slices in [0, 1], got shape {tuple(x.shape)}; "
                         "add the channel axis with x[:, None] for one window")
    if not torch.is_floating_point(x):
        raise ValueError(f"{name} must be floating point (windowed to [0, 1]), got {x.dtype}")
    return x.detach().float()


def _as_bag(bag, name: str = "bag") -> Tensor:
    x = torch.as_tensor(np.asarray(bag) if not isinstance(bag, Tensor) else bag)
    if x.ndim == 5:
        if x.shape[0] != 1:
            raise ValueError(f"{name} must hold one exam, (S, C, H, W) or (1, S, C, H, W), got shape {tuple(x.shape)}")
        x = x[0]
    return _as_slices(x, name)


def _check_positive_int(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}, not {value!r}")


# ------------------------------------------------------------------------------ pixel maps
# Each attributor maps a chunk ``x`` ((N, C, H, W) slices, or (1, S, C, H, W) for one exam, with
# requires_grad set) to ((N or S, H, W) maps, per-item IG delta or None).
def _gradcam(model, forward, x: Tensor, o: dict):
    from captum.attr import LayerAttribution, LayerGradCam

    H, W = x.shape[-2:]
    a = LayerGradCam(forward, gradcam_layer(model)).attribute(x, relu_attributions=True)   # (N, 1, h, w)
    a = LayerAttribution.interpolate(a, (int(H), int(W)), interpolate_mode="bilinear")     # (N, 1, H, W)
    return a[:, 0].clamp(min=0), None


def _saliency(model, forward, x: Tensor, o: dict):
    from captum.attr import Saliency

    a = Saliency(forward).attribute(x, abs=True)                                           # like x
    return a.amax(dim=-3).reshape(-1, *x.shape[-2:]), None                                # (N, H, W)


def _integrated_gradients(model, forward, x: Tensor, o: dict):
    from captum.attr import IntegratedGradients

    a, delta = IntegratedGradients(forward).attribute(
        x, baselines=float(o["baseline"]), n_steps=o["n_steps"], internal_batch_size=o["internal_batch_size"],
        return_convergence_delta=True)
    return a.sum(dim=-3).reshape(-1, *x.shape[-2:]), delta.detach()                      # (N, H, W), (N,)


def _occlusion(model, forward, x: Tensor, o: dict):
    from captum.attr import Occlusion

    C, w, s = x.shape[1], o["window"], o["stride"]
    a = Occlusion(forward).attribute(x, sliding_window_shapes=(C, w, w), strides=(C, s, s),
                                     baselines=float(o["baseline"]),
                                     perturbations_per_eval=max(1, o["internal_batch_size"] or 16))
    return a.mean(dim=1), None                                                            # (N, H, W)


_ATTRIBUTORS: dict[str, Callable] = {"gradcam": _gradcam, "ig": _integrated_gradients, "occlusion": _occlusion,
                                     "saliency": _saliency}


def _attribute(model, x: Tensor, *, method: str, forward: Callable, **options) -> tuple[Tensor, Tensor | None]:
    """Attributions of one chunk (see ``_ATTRIBUTORS``); the input gets its own graph even when every
    parameter is frozen."""
    return _ATTRIBUTORS[method](model, forward, x.clone().requires_grad_(True), options)


def explain_slices(model: nn.Module, slices, *, method: str = "gradcam", target: str = "slice",
                   batch_size: int = 16, n_steps: int = 32, internal_batch_size: int | None = 16,
                   window: int | None = None, stride: int | None = None, baseline: float = 0.0,
                   seed: int = 0, return_delta: bool = False):
    """Per-slice heatmaps of a model's evidence for hemorrhage.

    Args:
        model: a ``MILModel`` (any encoder with ``slice_logits``; for Grad-CAM see ``gradcam_layer``).
        slices: (N, C, H, W) windowed slices in [0, 1] (tensor or array), at the run's input size.
            For ``target="exam"`` they are the S slices of one exam, in order.
        method: one of ``METHODS`` (see the module docstring).
        target: ``"slice"`` (each slice's logit) or ``"exam"`` (the exam logit of the bag; zero maps
            on slices sparsemax ignores; not with occlusion: use ``slice_ablation``).
        batch_size: slices per forward chunk (slice target); results do not depend on it.
        n_steps: Integrated Gradients steps (32 gives deltas of a few percent on our CNNs).
        internal_batch_size: slice images per Integrated Gradients forward pass (Captum's memory
            bound: slices x steps are evaluated in passes of this size; for ``target="exam"`` a
            pass holds ``internal_batch_size // S`` whole bags, at least one), and occlusion
            patches per slice per pass; None = everything at once.
        window, stride: occlusion patch side and step in pixels; default H/8 and H/16
            (32 and 16 at 256 px).
        baseline: the constant image IG starts from and occlusion pastes (0 = black).
        seed: seeds the ``"random"`` control map (the other methods are deterministic).
        return_delta: also return IG's convergence delta per slice (``nan`` for other methods):
            attributions sum to logit(x) - logit(baseline) minus this delta.

    Returns:
        (N, H, W) float32 maps (larger = more evidence for hemorrhage; Grad-CAM and saliency
        are >= 0, IG and occlusion are signed), or ``(maps, delta (N,))`` with ``return_delta``.
        For ``target="exam"`` the delta is the exam's, repeated per slice.

    Raises:
        ValueError: unknown method or target, bad shapes, or occlusion with ``target="exam"``.
    """
    check_choice("method", method, METHODS)
    check_choice("target", target, TARGETS)
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("n_steps", n_steps)
    _check_positive_int("internal_batch_size", internal_batch_size, allow_none=True)
    x = _as_slices(slices)
    N, _, H, W = x.shape
    window = int(window or max(1, H // 8))
    stride = int(stride or max(1, H // 16))
    _check_positive_int("window", window)
    _check_positive_int("stride", stride)
    if method == "occlusion" and target == "exam":
        raise ValueError("occlusion explains slices (target='slice'); for the exam logit use slice_ablation(model, "
                         "bag), which removes one whole slice at a time")
    delta = np.full(N, np.nan, dtype=np.float32)
    if method == "random":
        maps = np.random.default_rng(seed).random((N, H, W), dtype=np.float32)
        return (maps, delta) if return_delta else maps
    if N == 0:
        maps = np.zeros((0, H, W), dtype=np.float32)
        return (maps, delta) if return_delta else maps

    kw = dict(method=method, n_steps=n_steps, internal_batch_size=internal_batch_size, window=window,
              stride=stride, baseline=baseline)
    with _explaining(model) as device:
        if target == "exam":
            if internal_batch_size is not None:
                kw["internal_batch_size"] = max(1, internal_batch_size // N)   # bags of N slices per pass
            a, d = _attribute(model, x.to(device).unsqueeze(0), forward=bag_logit_fn(model), **kw)
            maps = a.detach().cpu().float().numpy()
            if d is not None:
                delta[:] = float(d.reshape(-1)[0])
        else:
            parts = []
            forward = slice_logit_fn(model)
            step = min(batch_size, internal_batch_size or batch_size) if method == "ig" else batch_size
            for i in range(0, N, step):       # IG: Captum wants internal_batch_size >= slices per call
                a, d = _attribute(model, x[i:i + step].to(device), forward=forward, **kw)
                parts.append(a.detach().cpu().float().numpy())
                if d is not None:
                    delta[i:i + step] = d.cpu().float().numpy()
            maps = np.concatenate(parts, axis=0)
    maps = np.ascontiguousarray(maps, dtype=np.float32)
    return (maps, delta) if return_delta else maps


# ------------------------------------------------------------------------------ exam level
@torch.no_grad()
def explain_exam(model: nn.Module, bag, *, precision: str = "fp32") -> dict[str, np.ndarray | float]:
    """Exam-level importance of each slice: attention, slice logits and slice ablation, from one encoding.

    Args:
        model: a ``MILModel``.
        bag: one exam, (S, C, H, W) or (1, S, C, H, W) windowed slices.
        precision: the encoder pass's precision (``fp32``, or ``bf16``/``fp16`` as the predict path
            uses: ResNet-18 at 256² encodes 40 slices in 0.7 s instead of 1.2 s on 2 CPU cores);
            pooling, head and ablation always run in float32.

    Returns:
        dict with ``exam_logit`` (float), ``attention`` (S,) pooling weights, ``slice_logits`` (S,),
        ``ablation`` (S,) = exam logit with all slices minus exam logit without slice i
        (positive: the slice pushes the exam towards hemorrhage). Float32 numpy arrays.
    """
    x = _as_bag(bag)
    was_training = model.training
    model.eval()
    device = _device(model)
    try:
        with autocast(device, precision):
            h = model.embed(x.to(device).unsqueeze(0)).float()                # (1, S, D)
        with torch.autocast(device_type=device.type, enabled=False):
            out = model.forward_embeddings(h)
            ablation = _ablate(model, h[0], float(out.logit[0]))
    finally:
        model.train(was_training)
    return {"exam_logit": float(out.logit[0]), "attention": out.attention[0].cpu().numpy().astype(np.float32),
            "slice_logits": out.slice_logits[0].cpu().numpy().astype(np.float32), "ablation": ablation}


def _ablate(model: nn.Module, h: Tensor, full_logit: float) -> np.ndarray:
    """(S, D) embeddings -> (S,) full logit minus the logit of the bag without slice i (one batched pass)."""
    S = h.shape[0]
    bags = h.unsqueeze(0).expand(S, -1, -1)                                     # (S, S, D): bag i drops slice i
    keep = ~torch.eye(S, dtype=torch.bool, device=h.device)                     # (S, S)
    without = model.forward_embeddings(bags, keep).logit                        # (S,)
    return (full_logit - without).cpu().numpy().astype(np.float32)


def slice_ablation(model: nn.Module, bag) -> np.ndarray:
    """Change of the exam logit when each slice is removed: logit(all) - logit(all but slice i).

    A removed slice is masked out of the pooling (sparsemax renormalises over the rest), which
    is what the model would output for the exam without it. A one-slice exam without its slice
    is an empty bag (pooled vector 0), so its value is logit - head bias.

    Args:
        model: a ``MILModel``.
        bag: (S, C, H, W) or (1, S, C, H, W) windowed slices of one exam.

    Returns:
        (S,) float32.
    """
    return explain_exam(model, bag)["ablation"]


# ------------------------------------------------------------------------------ scoring
def score_map(saliency, mask, *, nbins: int = 1024, plus_one: bool = False) -> dict[str, float]:
    """Score one heatmap against a lesion mask (paper-protocol.md §8.3 and the pointing game).

    The map is binarised with Otsu's threshold (``metrics.otsu_binarize``) and compared with
    the mask (pixel Dice) and with the union of the bounding boxes of the mask's connected
    components (the reference's box protocol; ``metrics.boxes_from_mask`` with its
    ``plus_one`` rule). The pointing game asks whether the hottest pixel lies inside the mask.

    Args:
        saliency: (H, W) map; larger = more evidence.
        mask: (H, W) lesion mask (subtype codes or 0/1), same shape.

    Returns:
        dict with ``dice_mask``, ``dice_boxes``, ``pointing`` (1.0 hit / 0.0 miss) and
        ``lesion_pixels``; the scores are ``nan`` when the mask is empty.
    """
    s = np.asarray(saliency, dtype=np.float64)
    m = np.asarray(mask) != 0
    if s.ndim != 2 or s.shape != m.shape:
        raise ValueError(f"saliency and mask must be (H, W) maps of the same shape, got {s.shape} and {m.shape}")
    if not m.any():
        return {"dice_mask": float("nan"), "dice_boxes": float("nan"), "pointing": float("nan"), "lesion_pixels": 0}
    pred = otsu_binarize(s, nbins=nbins)
    boxes = mask_from_boxes(m.shape, boxes_from_mask(m, plus_one=plus_one))
    return {"dice_mask": dice(pred, m), "dice_boxes": dice(pred, boxes, empty_score=0.0),
            "pointing": float(pointing_game(s, m)), "lesion_pixels": int(m.sum())}


def resize_maps(maps, size: int | tuple[int, int]) -> np.ndarray:
    """(N, h, w) maps -> (N, H, W) by bilinear interpolation (to score maps at the mask's resolution)."""
    a = np.asarray(maps, dtype=np.float32)
    hw = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if a.shape[-2:] == tuple(hw):
        return a
    t = torch.nn.functional.interpolate(torch.from_numpy(a)[:, None], size=hw, mode="bilinear",
                                        align_corners=False)
    return t[:, 0].numpy()


# ------------------------------------------------------------------------------ pictures
def heat_colors(values) -> np.ndarray:
    """A black-red-yellow colour map: (...) values in [0, 1] -> (..., 3) float32 RGB in [0, 1]."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    return np.stack([np.clip(2 * v, 0, 1), np.clip(2 * v - 1, 0, 1), np.zeros_like(v)], axis=-1)


def overlay(image, heat, mask=None, *, scale: float | None = None, alpha: float = 0.6) -> np.ndarray:
    """Blend a heatmap over a grey slice, with the lesion outline in green.

    Args:
        image: (H, W) windowed slice in [0, 1].
        heat: (H, W) map; only its positive part is drawn (signed maps: evidence for hemorrhage).
        mask: optional (H, W) lesion mask (nonzero = lesion) drawn as a one-pixel green outline.
        scale: the map value drawn at full strength (default: this map's maximum; pass the exam's
            maximum to compare slices).
        alpha: opacity of the hottest pixels (opacity grows with the value).

    Returns:
        (H, W, 3) uint8 RGB.
    """
    from scipy.ndimage import binary_erosion

    img = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    h = np.clip(np.asarray(heat, dtype=np.float32), 0.0, None)
    if img.ndim != 2 or h.shape != img.shape:
        raise ValueError(f"image and heat must be (H, W) of the same shape, got {img.shape} and {h.shape}")
    top = float(scale) if scale is not None and scale > 0 else float(h.max())
    v = h / top if top > 0 else np.zeros_like(h)
    a = (alpha * np.clip(v, 0.0, 1.0))[..., None]                                # (H, W, 1)
    rgb = (1 - a) * np.repeat(img[..., None], 3, axis=-1) + a * heat_colors(v)   # (H, W, 3)
    if mask is not None:
        m = np.asarray(mask) != 0
        if m.shape != img.shape:
            raise ValueError(f"mask must have the image's shape {img.shape}, got {m.shape}")
        edge = m & ~binary_erosion(m)
        rgb[edge] = (0.0, 1.0, 0.0)
    return (np.clip(rgb, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
