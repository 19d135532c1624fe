"""Slice encoders, pooling over the slices of an exam, and the MIL model that scores exams and slices.

Axis legend (every shape comment in ``ich`` uses it):

    B     exams in a batch
    S     slices per exam (padded to the longest exam of the batch; ``mask`` marks real slices)
    N     slices in a flat batch (strong supervision, or the valid slices of a bag batch)
    C     channels, one per CT window (``DataConfig.windows``)
    H, W  slice height and width in pixels
    D     slice-embedding size (``ModelConfig.embed_dim``)

``MILModel = encoder + norm + pooling + head``. ``embed`` maps slices to embeddings, ``norm``
standardises them (identity unless fitted; the fast path fits it), ``pool`` turns
an exam's embeddings into one vector and per-slice weights, and ``head`` (one linear layer)
scores the pooled vector (exam logit) and each slice embedding (slice logits). The model
returns logits; apply ``torch.sigmoid`` for probabilities. Registries ``ENCODERS`` and
``POOLINGS`` map config names to factories. Encoders are saved and loaded as self-describing
files with ``save_encoder`` / ``load_encoder`` (the format shared with ``ich pretrain``).
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ich import atomic
from ich.config import ModelConfig, RunConfig, check_choice

ENCODER_FILE_KIND = "ich-encoder"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MILOutput(NamedTuple):
    """What ``MILModel`` returns (all float32)."""

    logit: Tensor         # (B,)   exam logit; probability = sigmoid(logit)
    slice_logits: Tensor  # (B, S) the head applied to each slice embedding; padded slices hold 0
    attention: Tensor     # (B, S) pooling weights over real slices; rows sum to 1; padding holds 0


# ------------------------------------------------------------------------------ encoders
def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    pad = (kernel - 1) // 2 if kernel % 2 else 0
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, pad, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class CompactEncoder(nn.Module):
    """A small CNN for CPU training: (N, C, H, W) in [0, 1] -> (N, D).

    A 4x4 stride-4 "patchify" stem, then three stages of a 3x3 conv-bn-relu at widths w, 2w, 4w
    joined by 2x2 stride-2 conv-bn-relu downsamplings, and a linear projection. Every conv is
    dense with >= w channels, so oneDNN runs it near the CPU's matrix-multiply rate under bf16
    autocast + channels_last. ``partial`` freezing freezes the stem and the first stage.

    Pooling over the (H/16, W/16) positions: ``"meanmax"`` (default) projects every position to
    D/2 and concatenates the mean and the max over positions, so a finding that covers one
    position of 64 still moves half the embedding; ``"mean"`` projects the mean to D (the
    average dilutes a small lesion 64-fold at 128 px: measured on a calibration phantom, a
    linear probe on all slice labels reached exam AUC 0.977 with the mean, 0.996 with mean+max).
    """

    name = "compact"
    partial_frozen = ("stem", "stage1")
    POOLS = ("meanmax", "mean")

    def __init__(self, *, in_channels: int = 1, embed_dim: int = 128, width: int = 32, pool: str = "meanmax"):
        super().__init__()
        check_choice("compact encoder pool", pool, self.POOLS)
        if pool == "meanmax" and embed_dim % 2:
            raise ValueError(f"the compact encoder's meanmax pooling needs an even embed_dim, not {embed_dim}")
        w = width
        self.config = {"in_channels": in_channels, "embed_dim": embed_dim, "width": width, "pool": pool}
        self.in_channels, self.embed_dim, self.pool = in_channels, embed_dim, pool
        self.stem = _conv_bn_relu(in_channels, w, 4, 4)
        self.stage1 = _conv_bn_relu(w, w, 3)
        self.stage2 = nn.Sequential(_conv_bn_relu(w, 2 * w, 2, 2), _conv_bn_relu(2 * w, 2 * w, 3))
        self.stage3 = nn.Sequential(_conv_bn_relu(2 * w, 4 * w, 2, 2), _conv_bn_relu(4 * w, 4 * w, 3))
        self.proj = nn.Linear(4 * w, embed_dim // 2 if pool == "meanmax" else embed_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        f = self.stage3(self.stage2(self.stage1(self.stem(x))))   # (N, 4w, H/16, W/16)
        if self.pool == "mean":
            return self.proj(f.mean(dim=(2, 3)))                  # (N, D)
        p = self.proj(f.flatten(2).transpose(1, 2))               # (N, H/16 * W/16, D/2)
        return torch.cat([p.mean(dim=1), p.amax(dim=1)], dim=1)   # (N, D)


class ResNet18Encoder(nn.Module):
    """torchvision's ResNet-18 with ``fc`` replaced by Linear(512 -> D): (N, C, H, W) in [0, 1] -> (N, D).

    Input is normalised with the ImageNet mean/std inside the module; a 1-channel input (one
    window) is replicated to 3 channels first, as the reference did. ``partial`` freezing
    freezes conv1, layer1 and layer2 (bn1 stays trainable; BN statistics still update), as the
    reference did. Built with random weights; ``load_imagenet_resnet18`` fills them from a file.
    """

    name = "resnet18"
    partial_frozen = ("net.conv1", "net.layer1", "net.layer2")

    def __init__(self, *, in_channels: int = 1, embed_dim: int = 128):
        super().__init__()
        import torchvision  # heavy import, only when this encoder is used

        if in_channels not in (1, 3):
            raise ValueError(f"resnet18 takes 1 or 3 input channels (windows), not {in_channels}")
        self.config = {"in_channels": in_channels, "embed_dim": embed_dim}
        self.in_channels, self.embed_dim = in_channels, embed_dim
        self.net = torchvision.models.resnet18(weights=None)
        self.net.fc = nn.Linear(512, embed_dim)
        nn.init.kaiming_normal_(self.net.fc.weight)
        nn.init.zeros_(self.net.fc.bias)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)                            # (N, 3, H, W)
        return self.net((x - self.mean) / self.std)                # (N, D)


ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "compact": CompactEncoder,
    "resnet18": ResNet18Encoder,
}


def build_encoder(name: str, *, in_channels: int = 1, embed_dim: int = 128, **kwargs) -> nn.Module:
    """A randomly initialised encoder from ``ENCODERS``."""
    check_choice("encoder", name, list(ENCODERS))
    if name == "resnet18":
        kwargs.pop("width", None)
    return ENCODERS[name](in_channels=in_channels, embed_dim=embed_dim, **kwargs)


def freeze_encoder(encoder: nn.Module, finetune: str) -> None:
    """Set ``requires_grad``: ``all`` trains everything, ``partial`` freezes the encoder's
    ``partial_frozen`` modules (the reference's conv1/layer1/layer2 for resnet18), ``none`` freezes all."""
    check_choice("finetune", finetune, ("none", "partial", "all"))
    for name, p in encoder.named_parameters():
        if finetune == "none":
            p.requires_grad_(False)
        elif finetune == "partial":
            p.requires_grad_(not any(name == m or name.startswith(m + ".") for m in encoder.partial_frozen))
        else:
            p.requires_grad_(True)


# ------------------------------------------------------------------------------ pooling
def _masked_scores(scores: Tensor, mask: Tensor) -> Tensor:
    """Shift each row's valid scores to max 0 and push padding far below (exact zeros after
    softmax or sparsemax, no inf, no NaN in gradients)."""
    row_max = scores.masked_fill(~mask, float("-inf")).amax(dim=1, keepdim=True).detach()  # (B, 1)
    row_max = torch.nan_to_num(row_max, neginf=0.0)
    return (scores - row_max).masked_fill(~mask, -1e4)                                      # (B, S)


class Dropout(nn.Module):
    """``nn.Dropout`` that draws its masks from ``generator`` when one is set (``MILModel.use_generator``).

    Same draws as ``nn.Dropout`` on CPU (``empty_like(x).bernoulli_(1 - p)``, scaled by 1 / (1 - p)) when the
    generator is in the state torch's global one would be in; with it, runs that train side by side in
    threads of one process (``executors.ThreadExecutor``) never share a random stream. Without a
    generator it is ``F.dropout`` on the global RNG. No parameters: state dicts are unchanged.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)
        self.generator: torch.Generator | None = None

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.generator is None or x.device.type != self.generator.device.type:
            return F.dropout(x, self.p, training=True)
        keep = torch.empty_like(x).bernoulli_(1.0 - self.p, generator=self.generator).div_(1.0 - self.p)
        return x * keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class AttentionPool(nn.Module):
    """Ilse-style attention: s_i = w . tanh(dropout(V h_i)) (gated: times sigmoid(U h_i)); a = act(s).

    ``activation`` is ``sparsemax`` (entmax package; exact zeros, as the reference) or ``softmax``.
    """

    def __init__(self, *, embed_dim: int, attention_dim: int = 64, dropout: float = 0.25,
                 activation: str = "sparsemax", gated: bool = False):
        super().__init__()
        check_choice("attention_activation", activation, ("sparsemax", "softmax"))
        self.activation, self.gated = activation, gated
        self.V = nn.Linear(embed_dim, attention_dim)
        self.U = nn.Linear(embed_dim, attention_dim) if gated else None
        self.w = nn.Linear(attention_dim, 1)
        self.dropout = Dropout(dropout)

    def forward(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        a = torch.tanh(self.dropout(self.V(h)))                   # (B, S, A)
        if self.U is not None:
            a = a * torch.sigmoid(self.U(h))                       # (B, S, A)
        scores = _masked_scores(self.w(a).squeeze(-1), mask)      # (B, S)
        if self.activation == "sparsemax":
            from entmax import sparsemax

            weights = sparsemax(scores, dim=1)
        else:
            weights = torch.softmax(scores, dim=1)
        weights = weights * mask                                   # (B, S) exact zeros on padding
        z = torch.einsum("bs,bsd->bd", weights, h)                 # (B, D)
        return z, weights


class MeanPool(nn.Module):
    """Mean of the real slices' embeddings; attention = 1/S_real on each real slice."""

    def forward(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        weights = mask.float() / mask.sum(dim=1, keepdim=True).clamp(min=1)   # (B, S)
        return torch.einsum("bs,bsd->bd", weights, h), weights


class MaxPool(nn.Module):
    """Feature-wise max over real slices; attention = the share of the D features each slice wins."""

    def forward(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        filled = h.masked_fill(~mask.unsqueeze(-1), float("-inf"))           # (B, S, D)
        z, arg = filled.max(dim=1)                                            # (B, D), (B, D)
        z = torch.nan_to_num(z, neginf=0.0)
        weights = F.one_hot(arg, h.shape[1]).float().mean(dim=1)              # (B, S)
        return z, weights


POOLINGS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "attention": lambda c: AttentionPool(embed_dim=c.embed_dim, attention_dim=c.attention_dim,
                                         dropout=c.attention_dropout, activation=c.attention_activation),
    "gated_attention": lambda c: AttentionPool(embed_dim=c.embed_dim, attention_dim=c.attention_dim,
                                               dropout=c.attention_dropout, activation=c.attention_activation,
                                               gated=True),
    "mean": lambda c: MeanPool(),
    "max": lambda c: MaxPool(),
}


# ------------------------------------------------------------------------------ the model
class Standardize(nn.Module):
    """(..., D) -> (x - mean) / std with fixed per-dimension statistics (buffers, saved with the model).

    Identity until ``fit_stats`` is called. The fast path fits it on the frozen embeddings of every
    training-split slice (pixels only, no label), so the head sees unit-scale inputs whatever the
    encoder's output scale; without it a linear head on small raw embeddings barely moves in a
    few hundred steps.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit_stats(self, e: Tensor, eps: float = 1e-6) -> None:
        """Set mean and std from embeddings (N, D)."""
        e = e.float()
        self.mean.copy_(e.mean(dim=0))
        self.std.copy_(e.std(dim=0).clamp_min(eps))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class MILModel(nn.Module):
    """Encoder + standardisation + pooling + linear head; see the module docstring for the axes.

    Args:
        encoder: (N, C, H, W) -> (N, D).
        pooling: ((B, S, D), mask (B, S)) -> ((B, D), (B, S)).
        embed_dim: D.
        embedding_dropout: dropout on slice embeddings (reference: 0.5).
    """

    def __init__(self, encoder: nn.Module, pooling: nn.Module, *, embed_dim: int, embedding_dropout: float = 0.5):
        super().__init__()
        self.encoder = encoder
        self.norm = Standardize(embed_dim)   # identity unless fitted (the fast path fits it)
        self.pooling = pooling
        self.head = nn.Linear(embed_dim, 1)
        self.embedding_dropout = Dropout(embedding_dropout)
        self.channels_last = False   # set by the trainer where it is faster (CPU bf16)

    def use_generator(self, generator: torch.Generator | None) -> None:
        """Draw every dropout mask of this model from ``generator`` (None: torch's global RNG)."""
        for m in self.modules():
            if isinstance(m, Dropout):
                m.generator = generator

    def embed(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Slice embeddings (B, S, D) of a bag batch (B, S, C, H, W); padded slices are not encoded (0)."""
        B, S = x.shape[:2]
        if mask is None:
            mask = torch.ones(B, S, dtype=torch.bool, device=x.device)
        flat = x[mask]                                             # (N, C, H, W) real slices only
        if self.channels_last:
            flat = flat.contiguous(memory_format=torch.channels_last)
        e = self.encoder(flat)                                     # (N, D)
        h = e.new_zeros(B, S, e.shape[-1])                         # (B, S, D)
        h[mask] = e
        return h

    def pool(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(B, S, D), mask (B, S) -> pooled (B, D) and attention (B, S); computed in float32."""
        return self.pooling(h, mask)

    def forward_embeddings(self, h: Tensor, mask: Tensor | None = None) -> MILOutput:
        """Score exams from slice embeddings (B, S, D) (the fast path trains only this part)."""
        if mask is None:
            mask = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
        with torch.autocast(device_type=h.device.type, enabled=False):
            h = self.embedding_dropout(self.norm(h.float()))       # (B, S, D)
            z, attention = self.pool(h, mask)                      # (B, D), (B, S)
            logit = self.head(z).squeeze(-1)                       # (B,)
            slice_logits = self.head(h).squeeze(-1) * mask         # (B, S)
        return MILOutput(logit, slice_logits, attention)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> MILOutput:
        """Score a bag batch (B, S, C, H, W) with optional mask (B, S) of real slices."""
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        return self.forward_embeddings(self.embed(x, mask), mask)

    def slice_logits(self, x: Tensor) -> Tensor:
        """Per-slice logits (N,) of a flat slice batch (N, C, H, W) (strong supervision; no pooling)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.score_embeddings(self.encoder(x))

    def score_embeddings(self, e: Tensor) -> Tensor:
        """Per-slice logits (N,) from slice embeddings (N, D)."""
        with torch.autocast(device_type=e.device.type, enabled=False):
            return self.head(self.embedding_dropout(self.norm(e.float()))).squeeze(-1)


#: Held while a model draws its initial weights from torch's global RNG (``build_model``), so that models built
#: in threads side by side (``executors.ThreadExecutor``) each get the draws their seed gives.
INIT_LOCK = threading.Lock()


def build_model(cfg: RunConfig | ModelConfig, *, seed: int | None = None, in_channels: int | None = None,
                load_init: bool = True, encoder_config: dict | None = None) -> MILModel:
    """Build the ``MILModel`` a config describes, with the encoder initialised and frozen per ``init``/``finetune``.

    The random initial weights come from torch's global RNG, seeded with ``seed`` when given, under
    ``INIT_LOCK``; nothing else in a training or evaluation process draws from that RNG outside it
    (data loaders get their own generators), so a seeded model is the same in any thread.

    Args:
        cfg: a RunConfig (channels from its windows) or a ModelConfig (pass ``in_channels``).
        seed: seeds torch's global RNG just before the weights are drawn (None: as it stands).
        in_channels: C, when ``cfg`` is a ModelConfig (default 1).
        load_init: read the ``init`` file (encoder or ImageNet weights); False builds random weights
            (use when a checkpoint will overwrite them anyway).
        encoder_config: the encoder's own ``config`` as a run checkpoint recorded it; its
            architecture options (e.g. the compact ``pool``) are used when the init file is not read.

    Raises:
        FileNotFoundError / ValueError: the init file is missing, or does not match the config.
    """
    with INIT_LOCK:
        if seed is not None:
            torch.manual_seed(seed)
        return _build_model(cfg, in_channels=in_channels, load_init=load_init, encoder_config=encoder_config)


def _build_model(cfg: RunConfig | ModelConfig, *, in_channels: int | None, load_init: bool,
                 encoder_config: dict | None) -> MILModel:
    if isinstance(cfg, RunConfig):
        mc, in_channels = cfg.model, cfg.in_channels
    elif isinstance(cfg, ModelConfig):
        mc, in_channels = cfg, in_channels or 1
    else:
        raise ValueError(f"build_model needs a RunConfig or ModelConfig, not {type(cfg).__name__}")
    options = {k: v for k, v in (encoder_config or {}).items() if k not in ("in_channels", "embed_dim", "width")}
    encoder = build_encoder(mc.encoder, in_channels=in_channels, embed_dim=mc.embed_dim, width=mc.width, **options)
    if load_init and mc.init_kind == "imagenet":
        load_imagenet_resnet18(mc.init_path, encoder)
    elif load_init and mc.init_kind == "encoder":
        loaded, meta = load_encoder(mc.init_path)
        check_encoder_matches(meta, mc, in_channels)
        encoder = loaded.train()   # the file's architecture options (e.g. the compact pooling) win
    freeze_encoder(encoder, mc.finetune)
    return MILModel(encoder, POOLINGS[mc.pooling](mc), embed_dim=mc.embed_dim,
                    embedding_dropout=mc.embedding_dropout)


# ------------------------------------------------------------------------------ encoder files
def state_checksum(module: nn.Module) -> str:
    """SHA-256 (16 hex digits) of a module's state dict: names, dtypes, shapes and values."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def save_encoder(path: str | os.PathLike, encoder: nn.Module, meta: dict) -> Path:
    """Write an encoder file: ``{"kind": "ich-encoder", "encoder", "in_channels", "embed_dim",
    "windows", "input_size", "encoder_kwargs", "state_dict", ...meta}`` (atomically).

    Args:
        path: the file to write (``.pt``).
        encoder: an encoder from ``ENCODERS`` (it carries ``name`` and ``config``).
        meta: must hold ``windows`` (list of window names) and ``input_size`` (px); any other
            JSON-able facts (pretraining method, dataset, epochs) are kept as they are.
    """
    missing = [k for k in ("windows", "input_size") if k not in meta]
    if missing:
        raise ValueError(f"save_encoder: meta must include {missing} (the preprocessing the encoder expects)")
    if getattr(encoder, "name", None) not in ENCODERS:
        raise ValueError(f"save_encoder: encoder must be one of {list(ENCODERS)}, not {type(encoder).__name__}")
    cfg = dict(encoder.config)
    payload = {k: v for k, v in meta.items() if k not in ("state_dict", "checksum", "path")}
    payload.update({
        "kind": ENCODER_FILE_KIND, "format": 1, "encoder": encoder.name, "in_channels": cfg.pop("in_channels"),
        "embed_dim": cfg.pop("embed_dim"), "encoder_kwargs": cfg, "windows": list(meta["windows"]),
        "input_size": meta["input_size"], "checksum": state_checksum(encoder),
        "state_dict": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
    })
    path = Path(path)
    with atomic.writing(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_encoder_meta(path: str | os.PathLike) -> dict:
    """The metadata of an encoder file (everything but the weights), with ``path`` added."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder file {path} does not exist; pass the .pt file written by "
                                "`python -m ich pretrain` (or models.save_encoder)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not an encoder file"
        raise ValueError(f"{path} is not a readable encoder file ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("kind") != ENCODER_FILE_KIND:
        kind = payload.get("kind") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path} is not an ich encoder file (kind {kind!r}, expected {ENCODER_FILE_KIND!r}); "
                         "for torchvision ImageNet weights use --init imagenet:PATH")
    for key in ("encoder", "in_channels", "embed_dim", "windows", "input_size", "state_dict"):
        if key not in payload:
            raise ValueError(f"encoder file {path} lacks the key {key!r}; re-save it with models.save_encoder")
    meta = {k: v for k, v in payload.items()}
    meta["path"] = str(path.resolve())
    return meta


def load_encoder(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Read an encoder file: returns (encoder in eval mode, meta without weights, with ``checksum``, ``path``)."""
    meta = read_encoder_meta(path)
    state = meta.pop("state_dict")
    check_choice(f"encoder in {path}", meta["encoder"], list(ENCODERS))
    encoder = build_encoder(meta["encoder"], in_channels=int(meta["in_channels"]), embed_dim=int(meta["embed_dim"]),
                            **dict(meta.get("encoder_kwargs") or {}))
    try:
        encoder.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"encoder file {path}: weights do not fit a {meta['encoder']} encoder ({err})") from err
    meta["checksum"] = state_checksum(encoder)
    return encoder.eval(), meta


def check_encoder_matches(meta: dict, mc: ModelConfig, in_channels: int, windows=None, input_size=None) -> None:
    """Raise ``ValueError`` when an encoder file does not fit the config (encoder, D, channels, preprocessing)."""
    where = meta.get("path", "the encoder file")
    wanted = {"encoder": mc.encoder, "embed_dim": mc.embed_dim, "in_channels": in_channels}
    if mc.encoder == "compact":
        wanted["width"] = mc.width
    have = {"encoder": meta["encoder"], "embed_dim": int(meta["embed_dim"]), "in_channels": int(meta["in_channels"]),
            "width": (meta.get("encoder_kwargs") or {}).get("width")}
    if windows is not None:
        wanted["windows"], have["windows"] = list(windows), list(meta["windows"])
    if input_size is not None:
        wanted["input_size"], have["input_size"] = int(input_size), int(meta["input_size"])
    bad = [k for k in wanted if wanted[k] != have[k]]
    if bad:
        diffs = ", ".join(f"{k}: file {have[k]!r} vs config {wanted[k]!r}" for k in bad)
        raise ValueError(f"encoder file {where} does not match the run config ({diffs}); set the config from the "
                         "file (the train command does this when you pass only --init) or pick another encoder")


def load_imagenet_resnet18(path: str | os.PathLike, encoder: ResNet18Encoder) -> ResNet18Encoder:
    """Fill a ``ResNet18Encoder`` from a local torchvision ``resnet18`` state-dict file (``fc`` is skipped).

    For 3 windows the RGB conv1 is used as it is; for one window the input is replicated to RGB.
    Nothing is downloaded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ImageNet weights file {path} does not exist; download torchvision's resnet18 weights "
            "(resnet18-f37072fd.pth) once yourself and pass --init imagenet:PATH (nothing is downloaded at run time)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"{path} is not a readable torchvision state dict ({type(err).__name__}: {err})") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "conv1.weight" not in state or "layer4.1.bn2.weight" not in state:
        raise ValueError(f"{path} does not look like a torchvision resnet18 state dict (no conv1/layer4 weights)")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = encoder.net.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if not m.startswith("fc.")]:
        raise ValueError(f"{path}: weights do not fit resnet18 (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return encoder
