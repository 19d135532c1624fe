"""A phantom's knobs: ``PhantomConfig`` (distributions of anatomy, bleeds, noise), its presets and constants."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from ich.config import check_probabilities, check_subtype_weights, preset_with_overrides, reject_unknown_keys
from ich.labels import SUBTYPES

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


PARAMS_VERSION = 1
MASK_THRESHOLD = 0.4           # blood fraction above which a voxel is labelled
SUBTYPE_CODES: dict[str, int] = {s: i + 1 for i, s in enumerate(SUBTYPES)}
SUB_Z = (-1.0 / 3.0, 0.0, 1.0 / 3.0)  # sub-slice samples (fractions of the slice thickness) for partial volume


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PhantomConfig:
    """Distributions that phantom exams are drawn from (ranges are (low, high), inclusive).

    Difficulty presets live in ``PHANTOM_PRESETS``; tune any field with ``dataclasses.replace``.
    """

    size: int = 256                                  # in-plane pixels, H = W
    fov_mm: float = 240.0                            # reconstruction field of view; pixel spacing = fov_mm / size
    n_slices: tuple[int, int] = (24, 40)             # slices per exam
    slice_thickness_mm: float = 5.0                  # slice thickness = slice spacing
    head_scale: tuple[float, float] = (0.9, 1.08)    # head size factor (1 = 148 x 184 mm outer diameters)
    max_rotation_deg: float = 12.0                   # in-plane head rotation, uniform in +-this
    max_shift_mm: float = 10.0                       # in-plane head shift, uniform in +-this per axis
    atrophy: tuple[float, float] = (0.0, 1.0)        # 0 = young brain, 1 = wide sulci and big ventricles
    grey_hu: tuple[float, float] = (36.0, 43.0)      # cortical grey matter
    grey_white_gap_hu: tuple[float, float] = (8.0, 13.0)  # grey minus white matter
    csf_hu: tuple[float, float] = (3.0, 12.0)        # ventricles, sulci, cisterns
    noise_hu: tuple[float, float] = (2.0, 3.0)       # image noise standard deviation
    noise_corr_mm: float = 0.9                       # spatial correlation (Gaussian sigma) of the noise
    calcification_p: float = 0.3                     # chance of pineal / choroid calcifications (bright distractors)
    p_positive: float = 0.42                         # chance that an exam has hemorrhage
    lesions_per_exam: tuple[int, int] = (1, 3)       # lesions in a positive exam, uniform
    subtype_weights: tuple[float, float, float, float, float] = (0.10, 0.26, 0.16, 0.14, 0.34)  # SUBTYPES order
    blood_hu: tuple[float, float] = (70.0, 95.0)     # acute blood density
    blood_hu_power: float = 1.0                      # hu = lo + (hi - lo) * U**power: > 1 favours faint lesions
    lesion_size_mm: tuple[float, float] = (30.0, 80.0)  # characteristic lesion extent, log-uniform
    oedema_p: float = 0.5                            # chance that an intraparenchymal bleed has an oedema rim

    def __post_init__(self):
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, list):  # JSON gives lists; keep the dataclass hashable
                object.__setattr__(self, name, tuple(value))
        if not isinstance(self.size, int) or not 16 <= self.size <= 1024:
            raise ValueError(f"size must be an integer between 16 and 1024 pixels, not {self.size!r}")
        for name in ("n_slices", "lesions_per_exam"):
            lo, hi = self._pair(name)
            if int(lo) != lo or int(hi) != hi:
                raise ValueError(f"{name} must be two integers (low, high), not {getattr(self, name)!r}")
        if self.n_slices[0] < 1:
            raise ValueError(f"n_slices must be at least 1, not {self.n_slices!r}")
        if self.lesions_per_exam[0] < 1:
            raise ValueError(f"lesions_per_exam must be at least (1, 1), not {self.lesions_per_exam!r}")
        for name in ("head_scale", "atrophy", "grey_hu", "grey_white_gap_hu", "csf_hu", "noise_hu",
                     "blood_hu", "lesion_size_mm"):
            self._pair(name)
        for name in ("fov_mm", "slice_thickness_mm", "noise_corr_mm", "blood_hu_power"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, not {getattr(self, name)!r}")
        if self.head_scale[0] <= 0 or self.lesion_size_mm[0] <= 0:
            raise ValueError("head_scale and lesion_size_mm must be positive ranges, "
                             f"not {self.head_scale!r} and {self.lesion_size_mm!r}")
        if self.noise_hu[0] < 0 or self.max_rotation_deg < 0 or self.max_shift_mm < 0:
            raise ValueError("noise_hu, max_rotation_deg and max_shift_mm must not be negative")
        check_probabilities(self, ("p_positive", "calcification_p", "oedema_p"))
        check_subtype_weights(self.subtype_weights, SUBTYPES)

    def _pair(self, name: str) -> tuple:
        value = getattr(self, name)
        if not isinstance(value, tuple) or len(value) != 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) or value[0] > value[1]:
            raise ValueError(f"{name} must be a (low, high) pair with low <= high, not {value!r}")
        return value

    @property
    def pixel_spacing_mm(self) -> float:
        return self.fov_mm / self.size

    def to_dict(self) -> dict:
        """A JSON-ready dict (tuples become lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "PhantomConfig":
        """Build a config from a dict such as ``to_dict()`` gives; unknown keys are rejected."""
        reject_unknown_keys(d, cls, what="PhantomConfig")
        return cls(**d)


PHANTOM_PRESETS: dict[str, PhantomConfig] = {
    # large, bright, frequent bleeds on a quiet image: learners reach AUC > 0.9 quickly
    "easy": PhantomConfig(noise_hu=(2.0, 3.0), calcification_p=0.0, p_positive=0.5, lesions_per_exam=(1, 2),
                          subtype_weights=(0.2, 0.3, 0.15, 0.05, 0.3), blood_hu=(80.0, 95.0),
                          blood_hu_power=1.0, lesion_size_mm=(40.0, 80.0)),
    # calibrated so that label budgets matter at 128 px (see "Calibration" in the module docstring)
    "default": PhantomConfig(),
    # small and faint bleeds common, more noise and bright distractors (the first default): beyond what
    # the frozen 128 px compact encoder sees: weak 0.52-0.63, strong 0.48-0.52 from 12 labels to all (README)
    "hard": PhantomConfig(noise_hu=(2.5, 5.0), calcification_p=0.5, subtype_weights=(0.07, 0.24, 0.15, 0.22, 0.32),
                          blood_hu=(48.0, 85.0), blood_hu_power=1.5, lesion_size_mm=(4.0, 70.0)),
}


def phantom_config(difficulty: str | PhantomConfig = "default", **overrides) -> PhantomConfig:
    """The preset named ``difficulty`` (easy, default, hard), with fields replaced by ``overrides``."""
    return preset_with_overrides(difficulty, PHANTOM_PRESETS, PhantomConfig, overrides)
