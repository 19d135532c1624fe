"""One phantom exam's random draw: ``PhantomParams`` (head geometry and its ``Lesion``s) from a seeded generator."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field

import numpy as np

from ich.config import did_you_mean
from ich.labels import SUBTYPES
from ich.phantom.config import PARAMS_VERSION, PhantomConfig

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


# ----------------------------------------------------------------------------------------------
# parameters of one exam
# ----------------------------------------------------------------------------------------------

@dataclass
class Lesion:
    """One hemorrhage: a 3-D object spanning contiguous slices (all lengths in mm, angles in rad).

    Epidural and subdural bleeds hug the inner table: ``theta`` is the angle of their centre
    in the head frame, ``arc_half_mm`` their half length along the skull, ``thickness_mm``
    their largest thickness. The others are irregular ellipsoids centred at (``x_mm``,
    ``v_mm``, ``z_mm``) with radii (``rx_mm``, ``rv_mm``, ``z_half_mm``), rotated by
    ``orient``; intraventricular blood is cut to the ventricles (and to ``v < level_mm``
    when it layers), subarachnoid blood to the sulci and cisterns.
    """

    subtype: str
    hu: float                      # blood density
    z_mm: float                    # centre height (slice k is at k * slice thickness)
    z_half_mm: float               # half extent along z
    theta: float = 0.0
    arc_half_mm: float = 0.0
    thickness_mm: float = 0.0
    x_mm: float = 0.0
    v_mm: float = 0.0
    rx_mm: float = 0.0
    rv_mm: float = 0.0
    orient: float = 0.0
    bumps: list[float] = field(default_factory=list)  # (amplitude, phase, twist) x 3: irregular outline
    oedema_mm: float = 0.0         # hypodense rim width (intraparenchymal), 0 = none
    level_mm: float | None = None  # intraventricular: fluid level, blood only where v < level_mm


@dataclass
class PhantomParams:
    """Every number drawn for one exam; ``render_phantom(params)`` needs nothing else."""

    size: int
    n_slices: int
    pixel_spacing_mm: float
    slice_thickness_mm: float
    fov_mm: float
    head_a_mm: float               # outer semi-axis, left-right
    head_b_mm: float               # outer semi-axis, anterior-posterior
    shape: list[float]             # (amplitude, phase) of outline harmonics 1..4
    rotation_deg: float
    shift_mm: list[float]          # (x, y) image-frame shift of the head centre
    widest_u: float                # height of the widest section
    vertex_u: float                # height of the vertex (>= 1: just above the last slice)
    scalp_mm: float
    skull_mm: float
    csf_mm: float                  # subarachnoid CSF between inner table and cortex
    gm_mm: float                   # cortical ribbon thickness
    sulcus_mm: float               # sulcal width
    sulcal_depth_mm: float
    n_gyri: float                  # sulci around the circumference
    ventricle_scale: float
    tissue_hu: dict[str, float]    # scalp, fat, cortical, diploe, grey, white, deep_grey, csf, falx
    calcification_hu: list[float]  # pineal, choroid (0 = absent)
    noise_hu: float
    noise_corr_mm: float
    texture_seed: int              # seeds the sulcal pattern and the image noise
    lesions: list[Lesion] = field(default_factory=list)
    version: int = PARAMS_VERSION

    @property
    def positive(self) -> bool:
        return bool(self.lesions)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PhantomParams":
        d = dict(d)
        if d.get("version", PARAMS_VERSION) != PARAMS_VERSION:
            raise ValueError(f"phantom params version {d.get('version')!r} is not {PARAMS_VERSION}; "
                             "re-generate the phantom with this version of ich")
        fields = set(cls.__dataclass_fields__)
        unknown = [k for k in d if k not in fields]
        if unknown:
            raise ValueError(f"unknown PhantomParams field {unknown[0]!r}{did_you_mean(unknown[0], fields)}")
        d["lesions"] = [Lesion(**les) for les in d.get("lesions", [])]
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "PhantomParams":
        return cls.from_dict(json.loads(text))


# ----------------------------------------------------------------------------------------------
# shared geometry (used by the sampler and the renderer)
# ----------------------------------------------------------------------------------------------

def level_scale(p: PhantomParams, u: float) -> float:
    """Outline scale of the section at height u (1 at the widest level, 0 at the vertex)."""
    if u >= p.widest_u:
        q = (u - p.widest_u) / (p.vertex_u - p.widest_u)
        return math.sqrt(max(0.0, 1.0 - q * q))
    q = (p.widest_u - u) / p.widest_u
    return 1.0 - 0.2 * q * q


def obliquity(p: PhantomParams, u: float) -> float:
    """How much thicker a layer of the head looks in-plane where the section cuts it obliquely."""
    du = 1e-3
    height = p.n_slices * p.slice_thickness_mm
    slope = 0.5 * (p.head_a_mm + p.head_b_mm) * abs(level_scale(p, u + du) - level_scale(p, u - du)) / (
        2 * du * height)
    return min(math.sqrt(1.0 + slope * slope), 3.5)


def head_outline(p: PhantomParams, theta):
    """Outer head radius (mm) at angle theta, at the widest level. Works on floats and arrays."""
    a, b = p.head_a_mm, p.head_b_mm
    c, s = np.cos(theta), np.sin(theta)
    r = a * b / np.sqrt((b * c) ** 2 + (a * s) ** 2)
    mod = 1.0
    for k in range(4):
        mod = mod + p.shape[2 * k] * np.cos((k + 1) * theta + p.shape[2 * k + 1])
    return r * mod


def _inner_radius(p: PhantomParams, theta, u: float):
    """Radius (mm) of the inner table at angle theta and height u."""
    ob = obliquity(p, u)
    return head_outline(p, theta) * level_scale(p, u) - (p.scalp_mm + p.skull_mm) * ob


def _ventricle_sites(p: PhantomParams) -> dict[str, tuple[float, float, float]]:
    """Head-frame (x, v, u) of landmarks inside the ventricular system (for placing IVH)."""
    vs = p.ventricle_scale
    b = p.head_b_mm
    return {
        "atrium_r": (12.0 * vs, -0.27 * b, 0.47), "atrium_l": (-12.0 * vs, -0.27 * b, 0.47),
        "body_r": (6.5 * vs, -0.02 * b, 0.56), "body_l": (-6.5 * vs, -0.02 * b, 0.56),
        "frontal_r": (7.0 * vs, 0.2 * b, 0.46), "frontal_l": (-7.0 * vs, 0.2 * b, 0.46),
        "third": (0.0, -0.07 * b, 0.38),
    }


# ----------------------------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------------------------

def _as_rng(rng_or_seed) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    if isinstance(rng_or_seed, (int, np.integer, np.random.SeedSequence)) and not isinstance(rng_or_seed, bool):
        return np.random.default_rng(rng_or_seed)
    raise TypeError(f"rng must be a numpy Generator, a SeedSequence or an int seed, not {type(rng_or_seed).__name__}")


def exam_seed(seed: int, index: int) -> np.random.SeedSequence:
    """The seed of exam ``index`` of a dataset with ``seed``: independent of the number of exams."""
    return np.random.SeedSequence(int(seed), spawn_key=(int(index),))


def exam_id_for(index: int) -> str:
    """Exam ids of phantom datasets: PH000000, PH000001, ..."""
    return f"PH{int(index):06d}"


def sample_phantom_params(rng: np.random.Generator | np.random.SeedSequence | int,
                          cfg: PhantomConfig | None = None) -> PhantomParams:
    """Draw the parameters of one phantom exam.

    Args:
        rng: a numpy Generator, or a seed (int or SeedSequence) for one.
        cfg: the distributions to draw from (default ``PhantomConfig()``).

    Returns:
        A ``PhantomParams``; ``render_phantom`` turns it into (hu, mask).
    """
    cfg = cfg or PhantomConfig()
    rng = _as_rng(rng)
    uni = lambda pair: float(rng.uniform(pair[0], pair[1]))  # noqa: E731
    scale = uni(cfg.head_scale)
    atrophy = uni(cfg.atrophy)
    grey = uni(cfg.grey_hu)
    white = grey - uni(cfg.grey_white_gap_hu)
    shape = []
    for amp in (0.03, 0.015, 0.012, 0.008):
        shape += [float(rng.uniform(-amp, amp)), float(rng.uniform(0, 2 * math.pi))]
    shape[1] = math.pi / 2  # harmonic 1 along the AP axis: a slightly egg-shaped head
    shape[0] = float(rng.uniform(0.0, 0.035))  # wider behind than in front
    calc_on = rng.random() < cfg.calcification_p
    p = PhantomParams(
        size=int(cfg.size),
        n_slices=int(rng.integers(cfg.n_slices[0], cfg.n_slices[1] + 1)),
        pixel_spacing_mm=float(cfg.pixel_spacing_mm),
        slice_thickness_mm=float(cfg.slice_thickness_mm),
        fov_mm=float(cfg.fov_mm),
        head_a_mm=74.0 * scale * float(rng.uniform(0.95, 1.05)),
        head_b_mm=92.0 * scale * float(rng.uniform(0.95, 1.05)),
        shape=shape,
        rotation_deg=float(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg)),
        shift_mm=[float(rng.uniform(-cfg.max_shift_mm, cfg.max_shift_mm)) for _ in range(2)],
        widest_u=float(rng.uniform(0.3, 0.4)),
        vertex_u=float(rng.uniform(1.0, 1.06)),
        scalp_mm=float(rng.uniform(4.0, 6.5)),
        skull_mm=float(rng.uniform(4.5, 7.0)),
        csf_mm=1.0 + 2.0 * atrophy * float(rng.uniform(0.6, 1.0)),
        gm_mm=float(rng.uniform(2.5, 3.5)),
        sulcus_mm=1.0 + 2.5 * atrophy * float(rng.uniform(0.6, 1.0)),
        sulcal_depth_mm=float(rng.uniform(10.0, 16.0)),
        n_gyri=float(rng.uniform(15.0, 20.0)),
        ventricle_scale=0.8 + 0.6 * atrophy * float(rng.uniform(0.7, 1.0)),
        tissue_hu={
            "scalp": float(rng.uniform(35, 50)), "fat": float(rng.uniform(-60, -20)),
            "cortical": float(rng.uniform(1100, 1500)), "diploe": float(rng.uniform(500, 800)),
            "grey": grey, "white": white, "deep_grey": grey - float(rng.uniform(1.0, 4.0)),
            "csf": uni(cfg.csf_hu), "falx": float(rng.uniform(55, 90)),
        },
        calcification_hu=[float(rng.uniform(120, 400)) if calc_on and rng.random() < 0.8 else 0.0,
                          float(rng.uniform(90, 250)) if calc_on and rng.random() < 0.6 else 0.0],
        noise_hu=uni(cfg.noise_hu),
        noise_corr_mm=float(cfg.noise_corr_mm),
        texture_seed=int(rng.integers(0, 2**31 - 1)),
    )
    if rng.random() < cfg.p_positive:
        n_lesions = int(rng.integers(cfg.lesions_per_exam[0], cfg.lesions_per_exam[1] + 1))
        weights = np.asarray(cfg.subtype_weights, dtype=float)
        for _ in range(n_lesions):
            subtype = SUBTYPES[int(rng.choice(len(SUBTYPES), p=weights / weights.sum()))]
            p.lesions.append(_sample_lesion(rng, p, cfg, subtype))
    return p


def _sample_lesion(rng: np.random.Generator, p: PhantomParams, cfg: PhantomConfig, subtype: str) -> Lesion:
    """Draw one lesion of ``subtype`` that fits the exam's anatomy."""
    lo, hi = cfg.blood_hu
    hu = lo + (hi - lo) * float(rng.random()) ** cfg.blood_hu_power
    # characteristic extent, log-uniform; never smaller than ~1.5 pixels so it can show at all
    size_lo = max(cfg.lesion_size_mm[0], 1.5 * p.pixel_spacing_mm)
    size_hi = max(cfg.lesion_size_mm[1], size_lo)
    size = float(math.exp(rng.uniform(math.log(size_lo), math.log(size_hi))))
    thick = p.slice_thickness_mm
    height = p.n_slices * thick

    def z_at(u_lo: float, u_hi: float) -> float:
        return float(rng.uniform(u_lo, u_hi)) * height - thick / 2

    def bumps(amp: float) -> list[float]:
        out = []
        for _ in range(3):
            out += [float(rng.uniform(0, amp)), float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(-1.5, 1.5))]
        return out

    if subtype in ("epidural", "subdural"):
        # mostly over the convexities (lateral, frontal, parietal), rarely at the vertex or skull base
        theta = float(rng.uniform(0, 2 * math.pi))
        if subtype == "epidural":
            arc = float(np.clip(size * rng.uniform(0.45, 0.65), 4.0, 45.0))
            t = float(np.clip(size * rng.uniform(0.22, 0.38), 2.0, 28.0))
            zh = float(np.clip(size * rng.uniform(0.3, 0.5), 2.0, 35.0))
        else:
            arc = float(np.clip(size * rng.uniform(1.0, 1.8), 6.0, 120.0))
            t = float(np.clip(size * rng.uniform(0.08, 0.16), 1.5, 18.0))
            zh = float(np.clip(size * rng.uniform(0.8, 1.3), 2.0, 70.0))
        return Lesion(subtype=subtype, hu=hu, z_mm=z_at(0.35, 0.85), z_half_mm=zh, theta=theta,
                      arc_half_mm=arc, thickness_mm=t)
    if subtype == "intraparenchymal":
        r = float(np.clip(size / 2, 1.0, 32.0))
        u = float(rng.uniform(0.32, 0.82))
        theta = float(rng.uniform(0, 2 * math.pi))
        if rng.random() < 0.45 and u < 0.55:
            # deep (hypertensive) bleed: basal ganglia / thalamus
            side = 1 if rng.random() < 0.5 else -1
            x, v = side * rng.uniform(12, 24), rng.uniform(-0.15, 0.12) * p.head_b_mm
        else:
            # lobar bleed: in the hemisphere, clear of the skull
            r_in = float(_inner_radius(p, theta, u))
            depth = rng.uniform(min(r + 6.0, 0.5 * r_in), max(0.55 * r_in, min(r + 6.0, 0.5 * r_in) + 1))
            x, v = (r_in - depth) * math.cos(theta), (r_in - depth) * math.sin(theta)
        oed = float(rng.uniform(1.5, 2.0 + 0.25 * r)) if rng.random() < cfg.oedema_p else 0.0
        return Lesion(subtype=subtype, hu=hu, z_mm=u * height - thick / 2, z_half_mm=r * float(rng.uniform(0.9, 1.4)),
                      x_mm=float(x), v_mm=float(v), rx_mm=r * float(rng.uniform(0.75, 1.25)),
                      rv_mm=r * float(rng.uniform(0.75, 1.25)), orient=float(rng.uniform(0, math.pi)),
                      bumps=bumps(0.18), oedema_mm=oed)
    if subtype == "intraventricular":
        sites = _ventricle_sites(p)
        if rng.random() < 0.5:
            # blood layering in the occipital horns (supine patient: posterior is dependent)
            site = sites["atrium_r" if rng.random() < 0.5 else "atrium_l"]
            r = float(np.clip(size * 0.8, 6.0, 60.0))
            return Lesion(subtype=subtype, hu=hu, z_mm=site[2] * height - thick / 2 + float(rng.normal(0, 5)),
                          z_half_mm=float(np.clip(size * 0.5, 3.0, 25.0)), x_mm=site[0], v_mm=site[1],
                          rx_mm=r, rv_mm=r, bumps=bumps(0.1),
                          level_mm=float(site[1] + rng.uniform(-6.0, 8.0)))
        name = list(sites)[int(rng.integers(len(sites)))]
        site = sites[name]
        r = float(np.clip(size / 2, 2.0, 25.0))
        return Lesion(subtype=subtype, hu=hu, z_mm=site[2] * height - thick / 2 + float(rng.normal(0, 4)),
                      z_half_mm=r * float(rng.uniform(0.8, 1.3)), x_mm=site[0] + float(rng.normal(0, 2)),
                      v_mm=site[1] + float(rng.normal(0, 4)), rx_mm=r, rv_mm=r * float(rng.uniform(0.8, 1.6)),
                      orient=float(rng.uniform(0, math.pi)), bumps=bumps(0.2))
    # subarachnoid: basal cisterns, Sylvian fissure, convexity sulci, or interhemispheric fissure
    site = rng.choice(["basal", "sylvian", "convexity", "convexity", "interhemispheric"])
    r = float(np.clip(size * rng.uniform(0.6, 1.0), 5.0, 45.0))
    if site == "basal":
        u, x, v = rng.uniform(0.2, 0.33), rng.normal(0, 5), rng.uniform(-0.05, 0.12) * p.head_b_mm
    elif site == "sylvian":
        side = 1 if rng.random() < 0.5 else -1
        u, x, v = rng.uniform(0.27, 0.45), side * rng.uniform(20, 0.75 * p.head_a_mm), rng.uniform(0.0, 0.15) * p.head_b_mm
    elif site == "interhemispheric":
        u, x, v = rng.uniform(0.4, 0.85), 0.0, rng.uniform(-0.6, 0.6) * p.head_b_mm
    else:
        u = rng.uniform(0.4, 0.88)
        theta = float(rng.uniform(0, 2 * math.pi))
        rr = float(_inner_radius(p, theta, u)) - rng.uniform(3.0, 8.0)
        x, v = rr * math.cos(theta), rr * math.sin(theta)
    return Lesion(subtype=subtype, hu=hu, z_mm=float(u) * height - thick / 2,
                  z_half_mm=float(np.clip(r * rng.uniform(0.6, 1.1), 2.0, 40.0)), x_mm=float(x), v_mm=float(v),
                  rx_mm=r, rv_mm=r * float(rng.uniform(0.6, 1.4)), orient=float(rng.uniform(0, math.pi)),
                  bumps=bumps(0.25))
