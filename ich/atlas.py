"""Head-CT phantoms with real brain anatomy: the MNI152 tissue maps shipped in nilearn turned into CT, with bleeds placed by anatomy.

Source anatomy. The ``nilearn`` wheel ships the ICBM 2009a nonlinear symmetric MNI152 template at
1 mm (197 x 233 x 189 voxels, RAS, origin at (-98, -134, -72) mm) with grey-matter (GM) and
white-matter (WM) probability maps (``nilearn/datasets/data/mni_icbm152_{gm,wm}_tal_nlin_sym_09a_
converted.nii.gz``). They are read from the installed package, never downloaded, and not
redistributed by us (ICBM 2009a, McConnell Brain Imaging Centre; see the package's notice).
``atlas_maps()`` derives, once per process (a few seconds):

* the *brain envelope*: GM + WM > 0.5 (largest component), closed with a 5 mm ball and filled, so
  sulci, fissures and ventricles are inside it; CSF = envelope - GM - WM (partial volume);
* a signed distance to the envelope (mm, > 0 outside): extra-axial CSF, inner table, diploe, outer
  table, galea, fat and skin are layers of that distance, so the skull follows the brain surface,
  and where lobes are far apart (middle cranial fossa, petrous ridges, tentorium) bone fills in: the
  skull base and posterior fossa come from the atlas extent;
* the *lateral ventricles*: voxels with GM + WM < 0.4 that are enclosed by tissue (not connected to
  the outside of the brain) in components of at least 300 mm^3 (two, ~8 mL each). The third and fourth
  ventricles touch the basal cisterns at the template's 1 mm blur, so they count as cisternal CSF.

One exam. ``sample_atlas_params`` draws every random number into a JSON-serialisable
``AtlasParams``; ``render_atlas`` turns it into pixels with no further randomness:

1. pose + deformation: per-axis scale, yaw / pitch / roll, shift, plus a smooth random displacement
   field (seeded), map every output voxel (1 mm sub-slices, in-plane grid of at most 1 mm) to atlas
   coordinates; the maps are sampled there (trilinear);
2. CT values from the tissue fractions: HU = GM * grey + WM * white + CSF * csf + rest * layer(distance);
3. bleeds (blood fraction per 1 mm voxel, see below), mixed in as HU = (1 - b) * tissue + b * blood;
   an intraparenchymal oedema rim lowers the tissue value;
4. axial slabs: the mean of the five 1 mm sub-slices of each 5 mm slice (a scanner's thickness
   averaging), resized to ``size`` pixels (240 mm field of view), plus correlated noise.

Geometry of the output (as ``ich.phantom``): float32 HU (S, H, W), slice 0 lowest, rows anterior ->
posterior, columns patient right -> left (radiological view), pixel spacing ``fov_mm / size``.

Masks and slice labels (partial-volume rule). Each lesion's blood fraction is slab-averaged and
resized like the image; a pixel is labelled with the lesion's subtype where that fraction is at least
``MASK_THRESHOLD`` (0.4; the largest lesion wins where two overlap); a slice is positive for a subtype
when its labelled area is at least ``MIN_AREA_MM2`` (6 mm^2, about 2 pixels at 128 px or 27 at 512 px);
labelled pixels on slices below that area are cleared, so masks and labels agree.

Bleeds (acute blood 50-80 HU; ``blood_hu`` per preset), placed where each subtype occurs:

* epidural: a biconvex lens between the inner table and the dura (thickness t0 * (1 - (r/R)^2) at
  distance r from its centre on the convexity, R 20-35 mm), with a fracture line through the skull
  over it; volume log-normal, median 12 mL, clipped 3-90 mL;
* subdural: a long thin crescent under the inner table over one hemisphere's convexity (R 50-85 mm,
  thickness profile t0 * sqrt(1 - (r/R)^2), t0 log-normal median 6 mm, 2-20 mm); it never crosses the
  midline (falx);
* subarachnoid: a region of radius 12-40 mm (log-uniform) filled only where the atlas has CSF outside
  the ventricles (sulci, fissures, cisterns, convexity CSF);
* intraventricular: blood in a lateral ventricle, layering dependently (posterior in a supine patient:
  filled from the back of the ventricle forward until the drawn volume, log-normal median 3 mL);
* intraparenchymal: an irregular ellipsoid in GM/WM, deep (basal ganglia / thalamus, 60%) or lobar,
  volume log-normal median 8 mL, clipped 0.5-80 mL, oedema rim in half of them.

Volumes: many small, few large. Spontaneous and traumatic intraparenchymal bleeds are mostly
below 30 mL (Broderick et al., Stroke 1993;24:987-993: 30-day mortality by volume < 30, 30-60,
> 60 mL); epidural and subdural haematomas are mostly below the surgical thresholds of the Brain
Trauma Foundation guidelines (Bullock et al., Neurosurgery 2006;58(3 Suppl):S7-15 and S16-24:
epidural > 30 mL, subdural > 10 mm thick). The log-normal medians and spreads above are our choice
under those anchors, not fitted values. Subtype weights follow roughly the slice-level frequencies of
the RSNA 2019 challenge set (Flanders et al., Radiol Artif Intell 2020;2:e190211): subdural and
subarachnoid/intraparenchymal common, epidural rare. Not modelled: mass effect (no midline shift),
skull fractures without a bleed, the face, sinuses and orbits, streak artefacts.

Difficulty presets (``ATLAS_PRESETS``) move clinical parameters only: bleed volume (``volume_scale``),
blood density (anaemia and hyperacute mixing lower it) and image noise (dose); never a learner's AUC.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from ich.config import (check_probabilities, check_subtype_weights, did_you_mean, preset_with_overrides,
                        reject_unknown_keys)
from ich.labels import SUBTYPES

ATLAS_VERSION = 1
MASK_THRESHOLD = 0.4          # slab blood fraction from which a pixel is labelled
MIN_AREA_MM2 = 6.0            # labelled area from which a slice is positive for a subtype
SUB_MM = 1.0                  # sub-slice spacing (mm) averaged into each slab
_PAD = 22                     # mm of room around the atlas for skull and scalp
_ORIGIN = np.array([-98.0, -134.0, -72.0])  # mm of atlas voxel (0, 0, 0) (RAS)
ATLAS_FILES = {t: f"mni_icbm152_{t}_tal_nlin_sym_09a_converted.nii.gz" for t in ("gm", "wm")}


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AtlasConfig:
    """Distributions that atlas exams are drawn from (ranges are (low, high), inclusive)."""

    size: int = 512                                   # in-plane pixels, H = W
    fov_mm: float = 240.0                             # field of view; pixel spacing = fov_mm / size
    slice_thickness_mm: float = 5.0                   # slab thickness = spacing (mean of 1 mm sub-slices)
    n_slices: tuple[int, int] | None = None           # slices per exam; None = skull base to vertex (~30)
    scale: tuple[float, float] = (0.92, 1.08)         # head size factor per axis
    max_yaw_deg: float = 10.0                         # in-plane rotation
    max_pitch_deg: float = 8.0                        # flexion / gantry tilt
    max_roll_deg: float = 4.0
    max_shift_mm: float = 10.0                        # in-plane shift of the head
    deform_mm: float = 2.5                            # std of the smooth random displacement
    grey_hu: tuple[float, float] = (35.0, 40.0)
    white_hu: tuple[float, float] = (25.0, 30.0)
    csf_hu: tuple[float, float] = (2.0, 8.0)
    noise_hu: tuple[float, float] = (3.0, 5.0)        # noise std in a 5 mm slab (dose)
    noise_corr_mm: float = 0.7                        # Gaussian sigma of the noise correlation
    p_positive: float = 0.4                           # chance that an exam has a bleed
    lesions_per_exam: tuple[int, int] = (1, 2)
    subtype_weights: tuple[float, float, float, float, float] = (0.05, 0.24, 0.16, 0.24, 0.31)  # SUBTYPES order
    blood_hu: tuple[float, float] = (55.0, 80.0)      # acute blood density
    volume_scale: float = 1.0                         # multiplies every drawn bleed volume / thickness^3
    oedema_p: float = 0.5                             # chance of an oedema rim around a parenchymal bleed

    def __post_init__(self):
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, list):  # JSON gives lists
                object.__setattr__(self, name, tuple(value))
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 16 <= self.size <= 1024:
            raise ValueError(f"size must be an integer between 16 and 1024 pixels, not {self.size!r}")
        for name in ("scale", "grey_hu", "white_hu", "csf_hu", "noise_hu", "blood_hu", "lesions_per_exam"):
            v = getattr(self, name)
            if not (isinstance(v, tuple) and len(v) == 2 and v[0] <= v[1]):
                raise ValueError(f"{name} must be a (low, high) pair with low <= high, not {v!r}")
        if self.n_slices is not None and not (len(self.n_slices) == 2 and 1 <= self.n_slices[0] <= self.n_slices[1]):
            raise ValueError(f"n_slices must be None or (low, high) with 1 <= low <= high, not {self.n_slices!r}")
        if self.lesions_per_exam[0] < 1:
            raise ValueError(f"lesions_per_exam must be at least (1, 1), not {self.lesions_per_exam!r}")
        for name in ("fov_mm", "slice_thickness_mm", "noise_corr_mm", "volume_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, not {getattr(self, name)!r}")
        if abs(self.slice_thickness_mm / SUB_MM - round(self.slice_thickness_mm / SUB_MM)) > 1e-6:
            raise ValueError(f"slice_thickness_mm must be a whole number of mm, not {self.slice_thickness_mm!r}")
        check_probabilities(self, ("p_positive", "oedema_p"))
        check_subtype_weights(self.subtype_weights, SUBTYPES)

    @property
    def pixel_spacing_mm(self) -> float:
        return self.fov_mm / self.size

    def to_dict(self) -> dict:
        """A JSON-ready dict (tuples become lists); ``anatomy`` marks it as an atlas config."""
        return {"anatomy": "atlas", **{k: (list(v) if isinstance(v, tuple) else v)
                                      for k, v in dataclasses.asdict(self).items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "AtlasConfig":
        d = {k: v for k, v in d.items() if k != "anatomy"}
        reject_unknown_keys(d, cls, what="AtlasConfig")
        return cls(**d)


ATLAS_PRESETS: dict[str, AtlasConfig] = {
    # larger bleeds, dense blood (normal haematocrit, clotted), standard dose
    "easy": AtlasConfig(volume_scale=2.0, blood_hu=(65.0, 80.0), noise_hu=(2.5, 3.5)),
    # volumes as in the literature (module docstring), acute blood 55-80 HU, routine dose
    "default": AtlasConfig(),
    # smaller bleeds, less dense blood (anaemia, hyperacute mixing), low-dose noise
    "hard": AtlasConfig(volume_scale=0.5, blood_hu=(50.0, 70.0), noise_hu=(4.0, 6.0)),
}


def atlas_config(difficulty: str | AtlasConfig = "default", **overrides) -> AtlasConfig:
    """The preset named ``difficulty`` (easy, default, hard), with fields replaced by ``overrides``."""
    return preset_with_overrides(difficulty, ATLAS_PRESETS, AtlasConfig, overrides)


# ----------------------------------------------------------------------------------------------
# the atlas
# ----------------------------------------------------------------------------------------------

def atlas_dir() -> Path:
    """The folder of the installed nilearn package that holds the MNI152 maps (no download)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("the atlas phantom needs the nilearn package (it ships the MNI152 tissue maps); "
                                  "install it with `pip install nilearn`, or use --anatomy geometric")
    folder = Path(spec.origin).parent / "datasets" / "data"
    missing = [f for f in ATLAS_FILES.values() if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"the installed nilearn lacks {missing} in {folder}; reinstall nilearn "
                                "(pip install --force-reinstall nilearn) or use --anatomy geometric")
    return folder


@dataclass(frozen=True)
class AtlasMaps:
    """The atlas, padded by ``_PAD`` mm, on a 1 mm grid indexed (x, y, z) (RAS; index = mm - origin).

    ``channels`` (4, X, Y, Z) float32: GM fraction, WM fraction, signed distance to the brain
    envelope (mm, > 0 outside, clipped to [-25, 30]), lateral-ventricle fraction. ``sites`` maps a
    compartment name to atlas mm coordinates (N, 3) where bleeds of a subtype may be centred.
    """

    channels: np.ndarray
    origin: np.ndarray            # mm of padded voxel (0, 0, 0)
    sites: dict
    digest: str                   # sha256 of the two source files (first 12 hex digits)


@functools.lru_cache(maxsize=1)
def atlas_maps() -> AtlasMaps:
    """Load the nilearn MNI152 GM/WM maps and derive envelope, distance and ventricles (cached per process)."""
    import nibabel as nib

    folder = atlas_dir()
    h = hashlib.sha256()
    maps = {}
    for t, name in ATLAS_FILES.items():
        raw = (folder / name).read_bytes()
        h.update(raw)
        img = nib.load(folder / name)
        maps[t] = np.asarray(img.dataobj, dtype=np.float32) / 255.0     # (X, Y, Z) = (197, 233, 189)
    pad = [(_PAD, _PAD + (n + 2 * _PAD) % 2) for n in maps["gm"].shape]   # even sizes for the 2 mm grid
    gm, wm = (np.pad(maps[t], pad) for t in ("gm", "wm"))
    tissue = gm + wm
    # envelope and distance on a 2 mm grid (fast), the distance then interpolated back to 1 mm
    t2 = tissue.reshape(tissue.shape[0] // 2, 2, tissue.shape[1] // 2, 2, tissue.shape[2] // 2, 2).mean(axis=(1, 3, 5))
    core = t2 > 0.5
    lab, _ = ndimage.label(core)
    core = lab == 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))
    closed = ndimage.distance_transform_edt(ndimage.distance_transform_edt(~core) <= 2.5) > 2.5  # 5 mm closing
    env2 = ndimage.binary_fill_holes(closed | core)
    dist2 = 2.0 * (ndimage.distance_transform_edt(~env2) - ndimage.distance_transform_edt(env2 ))
    dist = ndimage.zoom(dist2.astype(np.float32), 2, order=1, grid_mode=True, mode="nearest")
    np.clip(dist, -25.0, 30.0, out=dist)
    env = dist < 0
    low = tissue < 0.4
    lab, _ = ndimage.label(low)
    enclosed = low & (lab != lab[0, 0, 0])
    lab, _ = ndimage.label(enclosed)
    sizes = np.bincount(lab.ravel())
    vent = (np.isin(lab, np.nonzero(sizes >= 300)[0][1:])).astype(np.float32)
    vent = np.maximum(vent, ndimage.binary_dilation(vent > 0) * np.clip((0.6 - tissue) / 0.4, 0, 1))  # soft rim
    origin = _ORIGIN - _PAD
    csf = np.clip(env - tissue, 0, 1) * (vent < 0.5)
    xmm = np.arange(gm.shape[0])[:, None, None] + origin[0]
    depth = -dist
    sites_idx = {
        "deep_grey": (gm > 0.5) & (depth > 18) & (np.abs(xmm) < 35),
        "lobar": (tissue > 0.9) & (depth > 6) & (depth < 18),
        "csf": (csf > 0.3) & env & (depth < 30),
        "ventricle_back": (vent > 0.9) & (np.arange(gm.shape[1])[None, :, None] + origin[1] < -25),  # atria, occipital horns
        "convexity": (np.abs(dist) < 0.5) & (np.arange(gm.shape[2])[None, None, :] + origin[2] > -15) & (np.abs(xmm) > 12),
    }
    sites = {k: (np.argwhere(m)[::7] + origin).astype(np.float32) for k, m in sites_idx.items()}  # every 7th: enough
    channels = np.stack([gm, wm, dist, vent]).astype(np.float32)
    for a in (channels, *sites.values()):
        a.setflags(write=False)
    return AtlasMaps(channels=channels, origin=origin, sites=sites, digest=h.hexdigest()[:12])


# ----------------------------------------------------------------------------------------------
# parameters of one exam
# ----------------------------------------------------------------------------------------------

@dataclass
class AtlasLesion:
    """One bleed. Lengths in mm, volumes in mL, ``centre_mm`` in atlas (MNI) coordinates."""

    subtype: str
    hu: float                       # blood density
    centre_mm: list[float]
    volume_ml: float = 0.0          # intraparenchymal, intraventricular, epidural: drawn volume
    radius_mm: float = 0.0          # extent: ellipsoid mean radius, lens / crescent / region radius
    thickness_mm: float = 0.0       # epidural / subdural: largest thickness
    axes: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])   # ellipsoid axis ratios
    bumps: list[float] = field(default_factory=list)   # (wx, wy, wz, phase, amplitude) x 3: irregular outline
    side: float = 0.0               # subdural: +1 right, -1 left hemisphere
    oedema_mm: float = 0.0          # intraparenchymal: hypodense rim width (0 = none)
    fracture: list[float] = field(default_factory=list)  # epidural: unit normal of the fracture plane


@dataclass
class AtlasParams:
    """Every number drawn for one atlas exam; ``render_atlas(params)`` needs nothing else."""

    size: int
    n_slices: int
    pixel_spacing_mm: float
    slice_thickness_mm: float
    fov_mm: float
    atlas: str                     # digest of the nilearn maps used
    scale: list[float]             # per atlas axis (x, y, z)
    yaw_deg: float
    pitch_deg: float
    roll_deg: float
    shift_mm: list[float]          # scanner-frame position of the atlas origin (x, y, z)
    deform_mm: float
    deform_seed: int
    tissue_hu: dict[str, float]    # grey, white, csf, table, diploe, galea, fat, skin
    layers_mm: dict[str, float]    # csf, inner, diploe, outer, galea, fat, skin
    skull_var: list[float]         # (wx, wy, wz, phase) x 2: smooth skull-thickness variation
    cupping_hu: float              # brightening of brain next to the skull (beam hardening)
    noise_hu: float
    noise_corr_mm: float
    noise_seed: int
    lesions: list[AtlasLesion] = field(default_factory=list)
    version: int = ATLAS_VERSION

    @property
    def positive(self) -> bool:
        return bool(self.lesions)

    def to_dict(self) -> dict:
        return {"anatomy": "atlas", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "AtlasParams":
        d = {k: v for k, v in d.items() if k != "anatomy"}
        if d.get("version", ATLAS_VERSION) != ATLAS_VERSION:
            raise ValueError(f"atlas params version {d.get('version')!r} is not {ATLAS_VERSION}; "
                             "re-generate the phantom with this version of ich")
        fields = set(cls.__dataclass_fields__)
        unknown = [k for k in d if k not in fields]
        if unknown:
            raise ValueError(f"unknown AtlasParams field {unknown[0]!r}{did_you_mean(unknown[0], fields)}")
        d["lesions"] = [AtlasLesion(**les) for les in d.get("lesions", [])]
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


def _lognormal(rng: np.random.Generator, median: float, sigma: float, lo: float, hi: float) -> float:
    return float(np.clip(median * math.exp(sigma * rng.standard_normal()), lo, hi))


def _bumps(rng: np.random.Generator, amp: float) -> list[float]:
    out = []
    for _ in range(3):
        w = rng.standard_normal(3)
        w = w / np.linalg.norm(w) * rng.uniform(1.5, 3.5)
        out += [*map(float, w), float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0, amp))]
    return out


def _pick(rng: np.random.Generator, sites: np.ndarray) -> list[float]:
    return [float(v) for v in sites[int(rng.integers(len(sites)))]]


def _sample_lesion(rng: np.random.Generator, cfg: AtlasConfig, subtype: str, sites: dict) -> AtlasLesion:
    hu = float(rng.uniform(*cfg.blood_hu))
    vs = cfg.volume_scale
    if subtype == "intraparenchymal":
        deep = rng.random() < 0.6
        vol = _lognormal(rng, 8.0 * vs, 1.0, 0.5, 80.0)
        r = (3 * vol * 1000 / (4 * math.pi)) ** (1 / 3)
        return AtlasLesion(subtype, hu, _pick(rng, sites["deep_grey" if deep else "lobar"]), volume_ml=vol,
                           radius_mm=r, axes=[float(a) for a in rng.uniform(0.75, 1.3, 3)],
                           bumps=_bumps(rng, 0.18),
                           oedema_mm=float(rng.uniform(2.0, 5.0)) if rng.random() < cfg.oedema_p else 0.0)
    if subtype == "intraventricular":
        return AtlasLesion(subtype, hu, _pick(rng, sites["ventricle_back"]), volume_ml=_lognormal(rng, 3.0 * vs, 0.9, 0.4, 30.0),
                           radius_mm=float(rng.uniform(25.0, 45.0)))
    if subtype == "subarachnoid":
        r = float(math.exp(rng.uniform(math.log(12.0), math.log(40.0)))) * vs ** (1 / 3)
        return AtlasLesion(subtype, hu, _pick(rng, sites["csf"]), radius_mm=r, bumps=_bumps(rng, 0.25))
    c = _pick(rng, sites["convexity"])
    if subtype == "epidural":
        vol = _lognormal(rng, 12.0 * vs, 0.8, 3.0, 90.0)
        big_r = float(rng.uniform(20.0, 35.0))
        t0 = float(np.clip(2 * vol * 1000 / (math.pi * big_r ** 2), 4.0, 35.0))
        n = rng.standard_normal(3)
        return AtlasLesion(subtype, hu, c, volume_ml=vol, radius_mm=big_r, thickness_mm=t0,
                           fracture=[float(v) for v in n / np.linalg.norm(n)])
    if subtype == "subdural":
        t0 = _lognormal(rng, 6.0 * vs ** (1 / 3), 0.5, 2.0, 20.0)
        return AtlasLesion(subtype, hu, c, radius_mm=float(rng.uniform(50.0, 85.0)), thickness_mm=t0,
                           side=1.0 if c[0] > 0 else -1.0)
    raise ValueError(f"unknown subtype {subtype!r}; expected one of {list(SUBTYPES)}")


def sample_atlas_params(seed: np.random.SeedSequence | int, cfg: AtlasConfig | None = None) -> AtlasParams:
    """Draw the parameters of one atlas exam (every random number of the exam comes from ``seed``).

    Args:
        seed: an int or a SeedSequence.
        cfg: the distributions (default ``AtlasConfig()``).

    Returns:
        An ``AtlasParams``; ``render_atlas`` turns it into (hu, mask).
    """
    cfg = cfg or AtlasConfig()
    rng = np.random.default_rng(seed)
    maps = atlas_maps()
    uni = lambda a, b: float(rng.uniform(a, b))  # noqa: E731
    scale = [uni(*cfg.scale) for _ in range(3)]
    z_low = uni(-50.0, -40.0)        # atlas height of the first slice's bottom: the posterior fossa
    top = 82.0 + 16.0                 # envelope top + skull and scalp
    thick = float(cfg.slice_thickness_mm)
    if cfg.n_slices is None:
        n_slices = int(math.ceil((top - z_low) * scale[2] / thick))
    else:
        n_slices = int(rng.integers(cfg.n_slices[0], cfg.n_slices[1] + 1))
    p = AtlasParams(
        size=cfg.size, n_slices=n_slices, pixel_spacing_mm=cfg.pixel_spacing_mm, slice_thickness_mm=thick,
        fov_mm=cfg.fov_mm, atlas=maps.digest, scale=scale,
        yaw_deg=uni(-cfg.max_yaw_deg, cfg.max_yaw_deg), pitch_deg=uni(-cfg.max_pitch_deg, cfg.max_pitch_deg),
        roll_deg=uni(-cfg.max_roll_deg, cfg.max_roll_deg),
        shift_mm=[uni(-cfg.max_shift_mm, cfg.max_shift_mm), uni(-cfg.max_shift_mm, cfg.max_shift_mm) + 16.0 * scale[1],
                  -z_low * scale[2]],
        deform_mm=float(cfg.deform_mm), deform_seed=int(rng.integers(2**31 - 1)),
        tissue_hu={"grey": uni(*cfg.grey_hu), "white": uni(*cfg.white_hu), "csf": uni(*cfg.csf_hu),
                   "table": uni(1500, 1900), "diploe": uni(450, 850), "galea": uni(30, 50),
                   "fat": uni(-100, -60), "skin": uni(30, 50)},
        layers_mm={"csf": uni(1.0, 2.5), "inner": uni(1.2, 2.0), "diploe": uni(2.0, 4.5), "outer": uni(1.5, 2.5),
                   "galea": uni(1.0, 2.0), "fat": uni(2.0, 5.0), "skin": uni(1.5, 2.5)},
        skull_var=[float(v) for _ in range(2) for v in (*(rng.standard_normal(3) / 40.0), rng.uniform(0, 2 * math.pi))],
        cupping_hu=uni(0.0, 4.0), noise_hu=uni(*cfg.noise_hu), noise_corr_mm=float(cfg.noise_corr_mm),
        noise_seed=int(rng.integers(2**31 - 1)),
    )
    if rng.random() < cfg.p_positive:
        w = np.asarray(cfg.subtype_weights, dtype=float)
        for _ in range(int(rng.integers(cfg.lesions_per_exam[0], cfg.lesions_per_exam[1] + 1))):
            subtype = SUBTYPES[int(rng.choice(len(SUBTYPES), p=w / w.sum()))]
            p.lesions.append(_sample_lesion(rng, cfg, subtype, maps.sites))
    return p


# ----------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------

def _rotation(p: AtlasParams) -> np.ndarray:
    """Atlas -> scanner rotation (yaw about z, pitch about x, roll about y)."""
    a, b, c = (math.radians(v) for v in (p.yaw_deg, p.pitch_deg, p.roll_deg))
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    ry = np.array([[math.cos(c), 0, math.sin(c)], [0, 1, 0], [-math.sin(c), 0, math.cos(c)]])
    return rz @ rx @ ry


def render_grid(p: AtlasParams) -> tuple[int, float]:
    """(R, spacing): the in-plane grid the anatomy is sampled on, at most 1 mm (then resized to ``size``)."""
    n = min(p.size, int(round(p.fov_mm)))
    return n, p.fov_mm / n


def atlas_coords(p: AtlasParams) -> np.ndarray:
    """Atlas mm coordinates (3, D, R, R) of every render voxel (D = n_slices * sub-slices, R = render grid)."""
    n, step = render_grid(p)
    sub = int(round(p.slice_thickness_mm / SUB_MM))
    d = p.n_slices * sub
    zs = (np.arange(d, dtype=np.float32) + 0.5) * SUB_MM
    ys = (n / 2 - (np.arange(n, dtype=np.float32) + 0.5)) * step      # row 0 anterior (+y)
    xs = (n / 2 - (np.arange(n, dtype=np.float32) + 0.5)) * step      # column 0 patient right (+x)
    m = (np.diag(1.0 / np.asarray(p.scale)) @ _rotation(p).T).astype(np.float32)   # scanner -> atlas
    off = m @ np.asarray(p.shift_mm, dtype=np.float32)
    pts = np.empty((3, d, n, n), dtype=np.float32)
    for i in range(3):   # pts_i = m_i . (q - shift), q = (x, y, z) scanner mm, by broadcasting
        pts[i] = (m[i, 0] * xs[None, None, :] + m[i, 1] * ys[None, :, None]) + (m[i, 2] * zs - off[i])[:, None, None]
    rng = np.random.default_rng(p.deform_seed)
    coarse = rng.standard_normal((3, 5, 5, 5)) * p.deform_mm
    fine = np.stack([ndimage.zoom(c, (d / 5 / 4, n / 5 / 4, n / 5 / 4), order=3) for c in coarse])  # smooth
    for i in range(3):
        pts[i] += ndimage.zoom(fine[i], np.array((d, n, n)) / fine.shape[1:], order=1).astype(np.float32)
    return pts


def _soft(x):
    """Partial-volume step: 0 below -0.5, 1 above 0.5 (x in mm at a 1 mm grid)."""
    return np.clip(x + 0.5, 0.0, 1.0)


def _lesion_fraction(les: AtlasLesion, pts: np.ndarray, f: dict, p: AtlasParams) -> tuple[np.ndarray, np.ndarray | None]:
    """Blood fraction (D, R, R) of one lesion on the render grid, and its oedema rim (or None)."""
    c = np.asarray(les.centre_mm, dtype=np.float32)[:, None, None, None]
    rel = pts - c
    r = np.sqrt((rel ** 2).sum(0))
    _, step = render_grid(p)
    if les.subtype in ("epidural", "subdural"):
        q = np.clip(1.0 - (r / les.radius_mm) ** 2, 0.0, 1.0)
        t = les.thickness_mm * (q if les.subtype == "epidural" else np.sqrt(q))
        inner = f["inner_table"]
        frac = _soft(np.minimum(f["dist"] - (inner - t), inner - f["dist"]) / step) * (t > 0.3)
        if les.subtype == "subdural":
            frac *= _soft((les.side * pts[0] - 1.0) / step)   # never across the midline (falx)
        return frac.astype(np.float32), None
    mod = 1.0
    if les.bumps:
        u = rel / np.maximum(r, 1e-3)
        b = np.asarray(les.bumps).reshape(3, 5)
        mod = 1.0 + sum(a * np.cos(wx * u[0] * 3 + wy * u[1] * 3 + wz * u[2] * 3 + ph) for wx, wy, wz, ph, a in b)
    if les.subtype == "intraparenchymal":
        ax = np.asarray(les.axes, dtype=np.float32)[:, None, None, None]
        rho = np.sqrt(((rel / ax) ** 2).sum(0)) / (les.radius_mm * mod)        # 1 at the edge
        par = np.clip((f["gm"] + f["wm"]) / 0.6, 0.0, 1.0)
        frac = _soft((1.0 - rho) * les.radius_mm / step) * par
        rim = None
        if les.oedema_mm > 0:
            w = les.oedema_mm / les.radius_mm
            rim = (_soft((rho - 1.0) * les.radius_mm / step) * _soft((1.0 + w - rho) * les.radius_mm / step) * par)
        return frac.astype(np.float32), rim
    if les.subtype == "subarachnoid":
        region = _soft((les.radius_mm * mod - r) / step)
        return (np.clip(f["csf_extra"] / 0.5, 0.0, 1.0) * region).astype(np.float32), None
    # intraventricular: fill the ventricle near the site from the back (dependent, rows grow posterior)
    w = f["vent"] * _soft((les.radius_mm - r) / step)
    per_row = w.sum(axis=(0, 2)) * step * step * SUB_MM / 1000.0        # mL per row, row 0 anterior
    cum = np.cumsum(per_row[::-1])[::-1]                                # mL at or behind each row
    level = float(np.argmax(cum <= les.volume_ml)) if cum[0] > les.volume_ml else 0.0
    rows = np.arange(w.shape[1], dtype=np.float32)[None, :, None]
    return (w * np.clip(rows - level + 0.5, 0.0, 1.0)).astype(np.float32), None


def _resize(vol: np.ndarray, size: int) -> np.ndarray:
    """Resize (S, R, R) slabs to (S, size, size) in-plane (linear; identity when R == size)."""
    if vol.shape[1] == size:
        return vol
    z = size / vol.shape[1]
    return ndimage.zoom(vol, (1.0, z, z), order=1, grid_mode=True, mode="nearest").astype(np.float32)


def render_layers(p: AtlasParams) -> dict:
    """The noise-free exam on its 1 mm sub-slices, inside the head's bounding box of the render grid.

    Returns:
        {"hu": (D, h, w) float32 HU with the bleeds mixed in, "tissue_hu": the same without bleeds,
        "fields": {"gm", "wm", "dist", "vent", "csf_extra": (D, h, w) float32, "inner_table": mm,
        "x_mm": atlas x (D, h, w)}, "fractions": [(D, h, w) blood fraction per lesion],
        "box": (r0, r1, c0, c1) of the (R, R) render grid, "grid": R}; D = n_slices * sub-slices.
    """
    maps = atlas_maps()
    full = atlas_coords(p)                                              # (3, D, R, R) atlas mm
    origin = maps.origin.astype(np.float32)[:, None, None, None]
    # only the head's bounding box is sampled (air elsewhere): find it on a coarse grid
    coarse = ndimage.map_coordinates(maps.channels[2], (full[:, ::5, ::4, ::4] - origin).reshape(3, -1), order=1,
                                     mode="nearest").reshape(full[0, ::5, ::4, ::4].shape)
    inside = coarse < 27.0
    rows, cols = np.nonzero(inside.any(axis=(0, 2)))[0], np.nonzero(inside.any(axis=(0, 1)))[0]
    n_grid = full.shape[2]
    r0, r1 = max(0, rows.min() * 4 - 6), min(n_grid, rows.max() * 4 + 7)
    c0, c1 = max(0, cols.min() * 4 - 6), min(n_grid, cols.max() * 4 + 7)
    pts = np.ascontiguousarray(full[:, :, r0:r1, c0:c1])
    del full
    idx = pts - origin
    gm, wm, dist, vent = (ndimage.map_coordinates(ch, idx, order=1, mode="nearest", output=np.float32)
                          for ch in maps.channels)
    del idx
    _, step = render_grid(p)
    t, L = p.tissue_hu, p.layers_mm
    var = 1.0 + sum(0.3 * np.cos(wx * pts[0] + wy * pts[1] + wz * pts[2] + ph)
                    for wx, wy, wz, ph in np.asarray(p.skull_var).reshape(2, 4))
    b1 = L["csf"]
    b2 = b1 + L["inner"]
    b3 = b2 + L["diploe"] * var
    b4 = b3 + L["outer"]
    b5 = b4 + L["galea"]
    b6 = b5 + L["fat"]
    b7 = b6 + L["skin"]
    s = lambda b: _soft((dist - b) / step)  # noqa: E731
    layer = (t["csf"] + (t["table"] - t["csf"]) * s(b1) + (t["diploe"] - t["table"]) * s(b2)
             + (t["table"] - t["diploe"]) * s(b3) + (t["galea"] - t["table"]) * s(b4)
             + (t["fat"] - t["galea"]) * s(b5) + (t["skin"] - t["fat"]) * s(b6) + (-1000.0 - t["skin"]) * s(b7))
    env = _soft(-dist / step)
    tissue = np.clip(gm + wm, 0.0, 1.0)
    w_csf = np.clip(env - tissue, 0.0, 1.0)
    w_out = np.clip(1.0 - tissue - w_csf, 0.0, 1.0)
    hu = gm * t["grey"] + wm * t["white"] + w_csf * t["csf"] + w_out * layer
    hu += p.cupping_hu * np.exp(np.minimum(dist, 0.0) / 8.0) * tissue    # beam hardening next to the skull
    fields = {"gm": gm, "wm": wm, "dist": dist, "vent": vent, "inner_table": b1,
              "csf_extra": (w_csf * (1.0 - vent) + w_out * _soft((b1 - dist) / step))}
    fracs, blood_hu = [], np.zeros_like(hu)
    for les in p.lesions:
        frac, rim = _lesion_fraction(les, pts, fields, p)
        if rim is not None:
            hu -= rim * 10.0                                            # vasogenic oedema: ~10 HU darker
        if les.fracture:
            n = np.asarray(les.fracture, dtype=np.float32)[:, None, None, None]
            near = (np.sqrt(((pts - np.asarray(les.centre_mm, dtype=np.float32)[:, None, None, None]) ** 2).sum(0))
                    < 1.3 * les.radius_mm)
            gap = np.clip(0.7 - np.abs((n * (pts - np.asarray(les.centre_mm, np.float32)[:, None, None, None])).sum(0)),
                          0.0, 1.0) * near * s(b1) * (1.0 - s(b4))
            hu += gap * (t["galea"] - hu)                               # fracture line: soft tissue through the bone
        fracs.append(frac)
        blood_hu += frac * les.hu
    tissue_hu = hu.copy()
    if fracs:
        total = np.sum(fracs, axis=0)
        b = np.clip(total, 0.0, 1.0)
        hu = (1.0 - b) * hu + b * blood_hu / np.maximum(total, 1e-6)
    fields["x_mm"] = pts[0]
    return {"hu": hu.astype(np.float32), "tissue_hu": tissue_hu.astype(np.float32), "fields": fields,
            "fractions": fracs, "box": (r0, r1, c0, c1), "grid": n_grid}


def render_atlas(params: AtlasParams) -> tuple[np.ndarray, np.ndarray]:
    """Render one exam: (hu (S, H, W) float32, mask (S, H, W) uint8 subtype codes), deterministic in ``params``."""
    p = params
    out = render_layers(p)
    hu, fracs, n_grid = out["hu"], out["fractions"], out["grid"]
    r0, r1, c0, c1 = out["box"]
    sub = int(round(p.slice_thickness_mm / SUB_MM))

    def slab(v: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """(D, r1 - r0, c1 - c0) render box -> (S, R, R) slabs: the mean of each slab's sub-slices."""
        out = np.full((p.n_slices, n_grid, n_grid), fill, dtype=np.float32)
        out[:, r0:r1, c0:c1] = v.reshape(p.n_slices, sub, *v.shape[1:]).mean(axis=1)
        return out

    hu = _resize(slab(hu, -1000.0), p.size)
    rng = np.random.default_rng(p.noise_seed)
    sigma = p.noise_corr_mm / p.pixel_spacing_mm
    noise = ndimage.gaussian_filter(rng.standard_normal(hu.shape, dtype=np.float32), (0, sigma, sigma))
    noise *= p.noise_hu / max(float(noise.std()), 1e-6)
    hu = (hu + noise).astype(np.float32)
    mask = np.zeros(hu.shape, dtype=np.uint8)
    if fracs:
        slabs = np.stack([_resize(slab(f), p.size) for f in fracs])     # (L, S, H, W)
        best = slabs.argmax(axis=0)
        on = slabs.max(axis=0) >= MASK_THRESHOLD
        codes = np.asarray([SUBTYPES.index(les.subtype) + 1 for les in p.lesions], dtype=np.uint8)
        mask[on] = codes[best[on]]
        min_px = MIN_AREA_MM2 / p.pixel_spacing_mm ** 2
        for code in set(codes.tolist()):
            small = (mask == code).sum(axis=(1, 2)) < min_px
            mask[small[:, None, None] & (mask == code)] = 0
    return hu, mask
