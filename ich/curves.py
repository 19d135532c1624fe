"""Learning curves: inverse power-law fits AUC(n) = a - b * n^(-c) with CI bands, labels needed, and label ratios.

A fit uses every (budget, seed) point of one arm (``scipy.optimize.curve_fit`` with bounds
0 <= a <= 1, b >= 0, 0 < c <= 5). Its uncertainty comes from a bootstrap over seeds: each
replicate resamples, within every budget, that budget's seed values with replacement and
refits (so a budget's spread across seeds is what the band reflects). With one seed per
budget there is nothing to resample and the parameters are drawn from the fit's normal
approximation (``curve_fit``'s covariance) instead. Bands, "labels needed to reach AUC x"
and the weak-vs-strong label ratio at equal AUC are percentile intervals over these
replicates; a target above a replicate's asymptote a needs infinitely many labels in it.

Units: n is labels bought (exams for weak, slices for strong); the ratio
``n_strong(x) / n_weak(x)`` is therefore slice labels per exam label at equal AUC (the
reference reports about 35 at full data, paper-protocol.md §9.1).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

BOUNDS = ((0.0, 0.0, 1e-3), (1.0, np.inf, 5.0))   # (a, b, c) lower, upper
MAX_NFEV = 400                                      # function evaluations per fit (trf); a replicate that
                                                    # does not converge within it is dropped


def power_law(n, a: float, b: float, c: float):
    """AUC(n) = a - b * n^(-c): ``a`` the asymptote, ``b`` the gap at n = 1, ``c`` the decay rate."""
    return a - b * np.power(np.asarray(n, dtype=np.float64), -c)


def _jacobian(n, a: float, b: float, c: float) -> np.ndarray:
    """d power_law / d(a, b, c) at budgets n: (len(n), 3)."""
    n = np.asarray(n, dtype=np.float64)
    p = np.power(n, -c)
    return np.stack([np.ones_like(n), -p, b * p * np.log(n)], axis=1)


def inverse_power_law(auc, a: float, b: float, c: float):
    """Labels n with power_law(n) = auc: (b / (a - auc))^(1/c); inf where auc >= a (never reached)."""
    auc = np.asarray(auc, dtype=np.float64)
    gap = a - auc
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        n = np.where(gap > 0, np.power(b / np.where(gap > 0, gap, 1.0), 1.0 / c), np.inf)
    return np.where(b <= 0, np.where(gap > 0, 1.0, np.inf), n)


@dataclass(frozen=True)
class PowerLawFit:
    """A fitted learning curve with parameter replicates for intervals (see the module docstring)."""

    a: float
    b: float
    c: float
    n_min: float                        # smallest observed budget
    n_max: float                        # largest observed budget
    n_points: int                       # (budget, seed) points fitted
    rmse: float                         # root-mean-square residual of the points
    method: str                         # "bootstrap" (over seeds) | "covariance" (curve_fit normal approximation)
    level: float = 0.95
    replicates: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)), repr=False)  # (R, 3) a, b, c

    @property
    def params(self) -> tuple[float, float, float]:
        return self.a, self.b, self.c

    def predict(self, n) -> np.ndarray:
        """AUC at budgets ``n`` (any shape)."""
        return power_law(n, self.a, self.b, self.c)

    def band(self, n, level: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) percentile band of the curve at budgets ``n`` (NaN without replicates)."""
        n = np.asarray(n, dtype=np.float64)
        if len(self.replicates) == 0:
            return np.full(n.shape, np.nan), np.full(n.shape, np.nan)
        level = self.level if level is None else level
        r = self.replicates
        with np.errstate(over="ignore"):
            curves = r[:, :1] - r[:, 1:2] * np.power(n.reshape(1, -1), -r[:, 2:3])      # (R, len(n))
        lo, hi = np.quantile(curves, [0.5 - level / 2, 0.5 + level / 2], axis=0)
        return lo.reshape(n.shape), hi.reshape(n.shape)

    def labels_needed(self, target: float, level: float | None = None) -> dict:
        """Labels to reach AUC ``target``, with a percentile interval.

        Returns:
            ``{"target", "n", "low", "high", "extrapolated"}``; ``n`` is inf when ``target`` is at or above
            the asymptote ``a``; ``extrapolated`` when ``n`` lies outside the observed budgets.
        """
        level = self.level if level is None else level
        n = float(inverse_power_law(target, *self.params))
        lo = hi = float("nan")
        if len(self.replicates):
            ns = inverse_power_law(target, self.replicates[:, 0], self.replicates[:, 1], self.replicates[:, 2])
            lo, hi = (float(v) for v in np.quantile(ns, [0.5 - level / 2, 0.5 + level / 2], method="lower"))
        return {"target": float(target), "n": n, "low": lo, "high": hi,
                "extrapolated": bool(not (self.n_min <= n <= self.n_max))}

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "c": self.c, "n_min": self.n_min, "n_max": self.n_max,
                "n_points": self.n_points, "rmse": self.rmse, "method": self.method, "level": self.level,
                "n_replicates": int(len(self.replicates))}


def _fit_once(n: np.ndarray, y: np.ndarray, p0=None) -> tuple[np.ndarray, np.ndarray]:
    from scipy.optimize import curve_fit

    if p0 is None:
        a0 = float(min(1.0, max(y.max() + 0.02, 0.51)))
        c0 = 0.5
        b0 = float(max(a0 - y.min(), 1e-3) * n.min() ** c0)
        p0 = (a0, b0, c0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        popt, pcov = curve_fit(power_law, n, y, p0=p0, bounds=BOUNDS, jac=_jacobian, max_nfev=MAX_NFEV)
    return popt, pcov


def fit_power_law(budgets, values, *, n_boot: int = 300, level: float = 0.95, seed: int = 0) -> PowerLawFit:
    """Fit AUC(n) = a - b n^-c to learning-curve points and bootstrap its uncertainty.

    Args:
        budgets: (P,) labels of each point (n >= 1).
        values: (P,) the figure at each point (e.g. exam AUC per (budget, seed)); NaN points are dropped.
        n_boot: bootstrap (or normal-approximation) replicates for intervals.
        level: interval level.
        seed: seeds the replicates.

    Returns:
        A ``PowerLawFit``.

    Raises:
        ValueError: fewer than 3 distinct budgets (3 parameters), or the fit does not converge.
    """
    n = np.asarray(budgets, dtype=np.float64).ravel()
    y = np.asarray(values, dtype=np.float64).ravel()
    if n.shape != y.shape:
        raise ValueError(f"budgets and values must have the same length, not {n.shape} and {y.shape}")
    keep = np.isfinite(n) & np.isfinite(y)
    n, y = n[keep], y[keep]
    if (n < 1).any():
        raise ValueError(f"budgets must be >= 1 label, not {n[n < 1][:3].tolist()}")
    levels = np.unique(n)
    if len(levels) < 3:
        raise ValueError(f"a power-law fit needs points at >= 3 distinct budgets (3 parameters), not {len(levels)} "
                         f"({levels.tolist()}); add budgets to the study")
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"n_boot must be a non-negative integer, not {n_boot!r}")
    try:
        popt, pcov = _fit_once(n, y)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"the power-law fit did not converge ({err}); the points may not rise with the budget") \
            from err
    rmse = float(np.sqrt(np.mean((power_law(n, *popt) - y) ** 2)))
    rng = np.random.default_rng(seed)
    by_level = [np.flatnonzero(n == v) for v in levels]
    reps: list[np.ndarray] = []
    if n_boot and max(len(ix) for ix in by_level) > 1:
        method = "bootstrap"
        for _ in range(n_boot):
            pick = np.concatenate([rng.choice(ix, size=len(ix), replace=True) for ix in by_level])
            try:
                reps.append(_fit_once(n[pick], y[pick], p0=popt)[0])
            except (RuntimeError, ValueError):
                continue
    elif n_boot:
        method = "covariance"
        if np.all(np.isfinite(pcov)):
            draws = rng.multivariate_normal(popt, pcov, size=n_boot, check_valid="ignore")
            lo, hi = np.array(BOUNDS[0]), np.array(BOUNDS[1])
            reps = list(np.clip(draws, lo, hi))
    else:
        method = "none"
    return PowerLawFit(a=float(popt[0]), b=float(popt[1]), c=float(popt[2]), n_min=float(n.min()),
                       n_max=float(n.max()), n_points=int(len(n)), rmse=rmse, method=method, level=level,
                       replicates=np.array(reps, dtype=np.float64).reshape(-1, 3))


def fit_study_curves(cells, *, metric: str = "exam_auc", n_boot: int = 300, level: float = 0.95,
                     seed: int = 0) -> dict:
    """One fit per arm of a study's cell table (``study.summarise_study``): ``{arm: PowerLawFit | str}``.

    An arm whose fit is impossible maps to the reason (a string) instead of a fit. Arm k's
    bootstrap is seeded with ``seed + k``, so the arms' replicates are independent.
    """
    out: dict = {}
    done = cells[cells["state"] == "done"]
    for k, (arm, grp) in enumerate(done.groupby("arm", sort=False)):
        try:
            out[arm] = fit_power_law(grp["budget"].to_numpy(float), grp[metric].to_numpy(float), n_boot=n_boot,
                                     level=level, seed=seed + k)
        except ValueError as err:
            out[arm] = str(err)
    return out


def label_ratio(fit_num: PowerLawFit, fit_den: PowerLawFit, target: float, level: float = 0.95) -> dict:
    """Labels ratio at equal AUC: n_num(target) / n_den(target), with a percentile interval.

    With ``fit_num`` the strong arm and ``fit_den`` the weak arm this is slice labels per exam label
    needed for the same AUC. Replicates of the two fits are paired by index (independent bootstraps).

    Returns:
        ``{"target", "ratio", "low", "high", "n_num", "n_den"}``; ``ratio`` is inf/NaN when an arm never
        reaches the target.
    """
    n_num = float(inverse_power_law(target, *fit_num.params))
    n_den = float(inverse_power_law(target, *fit_den.params))
    ratio = _safe_ratio(n_num, n_den)
    lo = hi = float("nan")
    k = min(len(fit_num.replicates), len(fit_den.replicates))
    if k:
        a, b = fit_num.replicates[:k], fit_den.replicates[:k]
        r = _safe_ratio(inverse_power_law(target, a[:, 0], a[:, 1], a[:, 2]),
                        inverse_power_law(target, b[:, 0], b[:, 1], b[:, 2]))
        r = r[~np.isnan(r)]
        if len(r):
            lo, hi = (float(v) for v in np.quantile(r, [0.5 - level / 2, 0.5 + level / 2], method="lower"))
    return {"target": float(target), "ratio": ratio, "low": lo, "high": hi, "n_num": n_num, "n_den": n_den}


def _safe_ratio(num, den):
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = num / den
    r = np.where(np.isinf(num) & np.isinf(den), np.nan, r)
    return float(r) if r.ndim == 0 else r


def common_targets(fits: dict, k: int = 3) -> list[float]:
    """``k`` AUC targets every fitted arm reaches inside its observed budgets (for ratio tables)."""
    ok = [f for f in fits.values() if isinstance(f, PowerLawFit)]
    if not ok:
        return []
    lo = max(float(f.predict(f.n_min)) for f in ok)
    hi = min(float(f.predict(f.n_max)) for f in ok)
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return []
    return [round(float(v), 3) for v in np.linspace(lo, hi, k + 2)[1:-1]]
