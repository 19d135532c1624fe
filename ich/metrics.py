"""Pure-numpy statistics for every reported number: exam AUC and DeLong, operating points, sequence F1, pixel scores.

Conventions
-----------
- Metrics take ``(y_true, y_score)`` in that order. ``y_true`` holds 0/1 (or bool) labels,
  ``y_score`` real-valued scores where larger means "more likely positive".
- **One-class input** (tiny label budgets make it common: a fold with no positive or no
  negative exam) never raises: every exam-level statistic returns ``nan`` and says so in its
  docstring. Malformed input (wrong shapes, labels other than 0/1, NaN scores) raises
  ``ValueError`` naming the parameter.
- Every random function takes ``seed`` and uses ``np.random.default_rng(seed)``.

Exam level (paper-protocol.md §8.1): ``roc_auc``, ``roc_points``, ``average_precision``,
``delong_auc_variance``, ``auc_ci``, ``delong_test`` (paired, like ``pROC::roc.test``),
``bootstrap_auc_diff`` (paired bootstrap cross-check), ``operating_point`` (cutoff "d" or
Youden). Slice level (§8.2): ``find_runs``, ``strong_flags``, ``weak_flags``,
``sequence_f1``, ``mean_sequence_f1``. Pixel level (§8.3, §1.4): ``otsu_binarize``, ``dice``,
``boxes_from_mask``, ``mask_from_boxes``, ``pointing_game``, ``summarize_by_subtype``.
Across seeds: ``mean_ci``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy.special import ndtr, ndtri

#: Default minimum predicted-run length per estimator (paper-protocol.md §8.2, step 4).
#: ``"weak_hshap"`` is nominally 3 in the reference code but effectively 2 (a quirk).
DEFAULT_MIN_LENGTH: dict[str, int] = {"strong": 4, "weak": 2, "weak_hshap": 2}

_ALTERNATIVES = ("two-sided", "greater", "less")
_NAN = float("nan")


# ----------------------------------------------------------------------------- validation
def _check_choice(name: str, value: str, options: Sequence[str]) -> None:
    if value not in options:
        import difflib

        close = difflib.get_close_matches(str(value), options, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{name} must be one of {list(options)}, got {value!r}{hint}")


def _check_scores(y_score, name: str = "y_score", n: int | None = None) -> np.ndarray:
    try:
        s = np.asarray(y_score, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be an array of numbers, got {type(y_score).__name__}") from err
    if s.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one score per exam), got shape {s.shape}")
    if n is not None and s.shape[0] != n:
        raise ValueError(f"{name} must have one score per label ({n}), got {s.shape[0]}")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{name} must be finite, found {int(np.sum(~np.isfinite(s)))} NaN/inf values")
    return s


def _check_labels(y_true, name: str = "y_true") -> np.ndarray:
    try:
        y = np.asarray(y_true, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{name} must hold 0/1 labels without missing values; drop unlabeled exams first"
        ) from err
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {y.shape}")
    bad = ~np.isin(y, (0.0, 1.0))
    if bad.any():
        found = np.unique(y[bad])[:5].tolist()
        raise ValueError(f"{name} must hold only 0/1 labels, found {found}")
    return y.astype(bool)


def _check_binary(y_true, *scores, names=("y_score",)) -> tuple[np.ndarray, ...]:
    y = _check_labels(y_true)
    return (y,) + tuple(_check_scores(s, nm, y.shape[0]) for s, nm in zip(scores, names))


def _one_class(y: np.ndarray) -> bool:
    return y.all() or not y.any()


# ------------------------------------------------------------------------ midranks / AUC
def _midranks(x: np.ndarray) -> np.ndarray:
    """Midranks (1-based, ties get the mean of their ranks) along the last axis.

    ``x`` is (K, N) or (N,); returns float64 of the same shape. This is the ranking step of
    Sun & Xu (2014), "Fast implementation of DeLong's algorithm", IEEE SPL 21(11).
    """
    x = np.atleast_2d(x)
    k, n = x.shape
    order = np.argsort(x, axis=1, kind="mergesort")  # (K, N)
    xs = np.take_along_axis(x, order, axis=1)  # (K, N), each row sorted
    new = np.ones((k, n), dtype=bool)  # True where a tie group starts
    np.not_equal(xs[:, 1:], xs[:, :-1], out=new[:, 1:])
    flat = new.ravel()
    group = np.cumsum(flat) - 1  # (K*N,) tie-group id
    start_col = np.flatnonzero(flat) % n  # (G,) 0-based column where each group starts
    size = np.bincount(group)  # (G,)
    group_rank = start_col + (size + 1) / 2.0  # mean of ranks start+1 .. start+size
    ranks_sorted = group_rank[group].reshape(k, n)
    out = np.empty_like(ranks_sorted)
    np.put_along_axis(out, order, ranks_sorted, axis=1)
    return out


def _delong_components(y: np.ndarray, scores: np.ndarray):
    """AUCs and DeLong structural components for K score vectors on the same exams.

    Args:
        y: (N,) bool labels with both classes present.
        scores: (K, N) scores.

    Returns:
        aucs (K,), v10 (K, m) per-positive components, v01 (K, n) per-negative components,
        where m = #positives, n = #negatives. ``v10[k, i]`` is the fraction of negatives that
        positive i outranks (ties 1/2); ``v01[k, j]`` the fraction of positives outranking
        negative j.
    """
    x = scores[:, y]  # (K, m)
    z = scores[:, ~y]  # (K, n)
    m, n = x.shape[1], z.shape[1]
    tx = _midranks(x)
    tz = _midranks(z)
    t_all = _midranks(np.concatenate([x, z], axis=1))  # (K, m + n)
    aucs = (t_all[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (t_all[:, :m] - tx) / n
    v01 = 1.0 - (t_all[:, m:] - tz) / m
    return aucs, v10, v01


def _delong_cov(v10: np.ndarray, v01: np.ndarray) -> np.ndarray:
    """DeLong covariance matrix (K, K) of the K AUCs: S10/m + S01/n (sample covariances, ddof=1)."""
    m, n = v10.shape[1], v01.shape[1]
    if m < 2 or n < 2:
        k = v10.shape[0]
        return np.full((k, k), np.nan)
    s10 = np.atleast_2d(np.cov(v10, ddof=1))
    s01 = np.atleast_2d(np.cov(v01, ddof=1))
    return s10 / m + s01 / n


def roc_auc(y_true, y_score) -> float:
    """Area under the ROC curve (Mann–Whitney statistic; tied scores count 1/2).

    Equals ``sklearn.metrics.roc_auc_score``. Scores are never flipped: an AUC below 0.5
    means the score ranks negatives higher.

    Args:
        y_true: (N,) 0/1 labels.
        y_score: (N,) scores, larger = more likely positive.

    Returns:
        The AUC in [0, 1], or ``nan`` when ``y_true`` has only one class (or is empty).

    Raises:
        ValueError: shapes differ, labels are not 0/1, or scores are not finite.
    """
    y, s = _check_binary(y_true, y_score)
    if _one_class(y):
        return _NAN
    aucs, _, _ = _delong_components(y, s[None, :])
    return float(aucs[0])


def roc_points(y_true, y_score, *, drop_intermediate: bool = True):
    """ROC curve points, as ``sklearn.metrics.roc_curve(y_true, y_score)``.

    ``drop_intermediate=True`` (sklearn's and the reference's default) drops collinear points;
    the "d" and Youden cutoffs in ``operating_point`` are read from these points, as in the
    reference's ``utils.location_performance_t``.

    Args:
        y_true: (N,) 0/1 labels.
        y_score: (N,) scores.

    Returns:
        ``(fpr, tpr, thresholds)``, each (P,) float64; a point is "score >= threshold", the
        first threshold is ``inf``. On one-class input the undefined rate (tpr without
        positives, fpr without negatives) is all ``nan``.
    """
    from sklearn.exceptions import UndefinedMetricWarning
    from sklearn.metrics import roc_curve

    y, s = _check_binary(y_true, y_score)
    if y.size == 0:
        empty = np.array([], dtype=np.float64)
        return empty, empty.copy(), empty.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        fpr, tpr, thr = roc_curve(y.astype(int), s, drop_intermediate=drop_intermediate)
    return fpr.astype(np.float64), tpr.astype(np.float64), thr.astype(np.float64)


def average_precision(y_true, y_score) -> float:
    """Average precision (area under the precision–recall curve, step-wise), via scikit-learn.

    Returns:
        AP in [0, 1], or ``nan`` on one-class input (no positives: undefined; no negatives:
        trivially 1, reported as ``nan`` to match the other metrics).
    """
    from sklearn.metrics import average_precision_score

    y, s = _check_binary(y_true, y_score)
    if _one_class(y):
        return _NAN
    return float(average_precision_score(y.astype(int), s))


# --------------------------------------------------------------------------------- DeLong
def delong_auc_variance(y_true, y_score) -> tuple[float, float]:
    """AUC and its DeLong variance (DeLong et al. 1988; fast midrank algorithm of Sun & Xu 2014).

    Variance = var(V10)/m + var(V01)/n with sample variances (ddof=1) of the structural
    components, as in ``pROC::var(roc, method="delong")``.

    Returns:
        ``(auc, var)``. One-class input gives ``(nan, nan)``; with both classes present but
        fewer than 2 positives or 2 negatives, the variance is ``nan``.
    """
    y, s = _check_binary(y_true, y_score)
    if _one_class(y):
        return _NAN, _NAN
    aucs, v10, v01 = _delong_components(y, s[None, :])
    return float(aucs[0]), float(_delong_cov(v10, v01)[0, 0])


def _z_crit(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    return float(ndtri(0.5 + level / 2.0))


def _stratified_indices(rng: np.random.Generator, y: np.ndarray, n_boot: int) -> np.ndarray:
    """(n_boot, N) bootstrap indices that resample positives and negatives separately."""
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    ip = pos[rng.integers(0, pos.size, size=(n_boot, pos.size))]
    ineg = neg[rng.integers(0, neg.size, size=(n_boot, neg.size))]
    return np.concatenate([ip, ineg], axis=1)


def _boot_aucs(y: np.ndarray, scores: np.ndarray, n_boot: int, seed: int, chunk: int = 256) -> np.ndarray:
    """(K, n_boot) AUCs of K score vectors on the same stratified resamples of the exams."""
    rng = np.random.default_rng(seed)
    idx = _stratified_indices(rng, y, n_boot)  # (B, N); positives first
    m = int(y.sum())
    n = y.size - m
    out = np.empty((scores.shape[0], n_boot))
    for k in range(scores.shape[0]):
        for b0 in range(0, n_boot, chunk):
            sb = scores[k][idx[b0 : b0 + chunk]]  # (b, N)
            ranks = _midranks(sb)
            out[k, b0 : b0 + chunk] = (ranks[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    return out


def _check_n_boot(n_boot: int) -> None:
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 10:
        raise ValueError(f"n_boot must be an integer >= 10, got {n_boot!r}")


def auc_ci(
    y_true,
    y_score,
    level: float = 0.95,
    method: str = "delong",
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """AUC with a confidence interval.

    - ``"delong"``: AUC ± z·sqrt(DeLong variance), clipped to [0, 1] (as ``pROC::ci.auc``).
    - ``"bootstrap"``: percentile interval over ``n_boot`` stratified resamples (positives and
      negatives resampled separately, so no resample is one-class), seeded by ``seed``.

    Returns:
        ``(auc, low, high)``. One-class input gives ``(nan, nan, nan)``; fewer than 2 exams
        of a class gives a finite AUC with ``nan`` bounds.

    Raises:
        ValueError: unknown ``method``, ``level`` outside (0, 1), or malformed input.
    """
    _check_choice("method", method, ("delong", "bootstrap"))
    z = _z_crit(level)
    y, s = _check_binary(y_true, y_score)
    if _one_class(y):
        return _NAN, _NAN, _NAN
    if method == "delong":
        auc, var = delong_auc_variance(y, s)
        if not np.isfinite(var):
            return auc, _NAN, _NAN
        half = z * math.sqrt(var)
        return auc, max(0.0, auc - half), min(1.0, auc + half)
    _check_n_boot(n_boot)
    auc = roc_auc(y, s)
    if min(y.sum(), (~y).sum()) < 2:
        return auc, _NAN, _NAN
    boots = _boot_aucs(y, s[None, :], n_boot, seed)[0]
    lo, hi = np.quantile(boots, [0.5 - level / 2.0, 0.5 + level / 2.0])
    return auc, float(lo), float(hi)


def _p_from_z(z: float, alternative: str) -> float:
    if np.isnan(z):
        return _NAN
    if alternative == "greater":
        return float(ndtr(-z))
    if alternative == "less":
        return float(ndtr(z))
    return float(min(1.0, 2.0 * ndtr(-abs(z))))


def delong_test(
    y_true,
    score_a,
    score_b,
    alternative: str = "two-sided",
    level: float = 0.95,
) -> dict[str, float]:
    """Paired DeLong test of two AUCs on the same exams (``pROC::roc.test(a, b, method="delong")``).

    z = (AUC_a − AUC_b) / sqrt(V_a + V_b − 2·Cov_ab), with the DeLong (co)variances.
    ``alternative="greater"`` tests H1: AUC_a > AUC_b (p = P(Z ≥ z)), ``"less"`` H1: AUC_a <
    AUC_b, ``"two-sided"`` H1: AUC_a ≠ AUC_b. The reference study called
    ``roc.test(wl, sl, alternative="greater")``, i.e. ``score_a`` = weak learner.

    Args:
        y_true: (N,) 0/1 labels.
        score_a, score_b: (N,) scores of the two models for the same exams, same order.
        alternative: "two-sided" | "greater" | "less".
        level: level of the (always two-sided) confidence interval of the difference.

    Returns:
        dict with ``auc_a, auc_b, diff`` (= auc_a − auc_b), ``diff_ci_low, diff_ci_high``,
        ``z, p_value``. One-class input: every value is ``nan``. If the variance of the
        difference is 0 (e.g. identical scores), z is 0 when diff is 0, else ±inf.
    """
    _check_choice("alternative", alternative, _ALTERNATIVES)
    zc = _z_crit(level)
    y, a, b = _check_binary(y_true, score_a, score_b, names=("score_a", "score_b"))
    keys = ("auc_a", "auc_b", "diff", "diff_ci_low", "diff_ci_high", "z", "p_value")
    if _one_class(y):
        return dict.fromkeys(keys, _NAN)
    aucs, v10, v01 = _delong_components(y, np.stack([a, b]))
    cov = _delong_cov(v10, v01)
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    se = math.sqrt(max(var, 0.0)) if np.isfinite(var) else _NAN
    if np.isnan(se):
        z = _NAN
    elif se == 0.0:
        z = 0.0 if diff == 0.0 else math.copysign(math.inf, diff)
    else:
        z = diff / se
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "diff": diff,
        "diff_ci_low": diff - zc * se,
        "diff_ci_high": diff + zc * se,
        "z": float(z),
        "p_value": _p_from_z(z, alternative),
    }


def bootstrap_auc_diff(
    y_true,
    score_a,
    score_b,
    alternative: str = "two-sided",
    level: float = 0.95,
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Paired bootstrap of AUC_a − AUC_b: an independent cross-check of ``delong_test``.

    Each resample draws exams with replacement, positives and negatives separately
    (stratified, as pROC does), and scores both models on the same draw.

    Returns:
        dict with ``auc_a, auc_b, diff`` (on the full data), ``diff_ci_low, diff_ci_high``
        (percentile interval at ``level``), ``se`` (sd of the resampled differences),
        ``z = diff / se`` and ``p_value`` from the normal approximation (``pROC``'s
        ``method="bootstrap"``), and ``p_empirical``: the fraction of resamples contradicting
        H1 (for "greater": P(Δ* ≤ 0); "less": P(Δ* ≥ 0); two-sided: twice the smaller one,
        capped at 1). One-class input, or fewer than 2 exams of a class: all ``nan``.
    """
    _check_choice("alternative", alternative, _ALTERNATIVES)
    _check_n_boot(n_boot)
    _z_crit(level)
    y, a, b = _check_binary(y_true, score_a, score_b, names=("score_a", "score_b"))
    keys = ("auc_a", "auc_b", "diff", "diff_ci_low", "diff_ci_high", "se", "z", "p_value", "p_empirical")
    if _one_class(y) or min(y.sum(), (~y).sum()) < 2:
        return dict.fromkeys(keys, _NAN)
    scores = np.stack([a, b])
    aucs, _, _ = _delong_components(y, scores)
    boots = _boot_aucs(y, scores, n_boot, seed)  # (2, B)
    d = boots[0] - boots[1]
    diff = float(aucs[0] - aucs[1])
    se = float(np.std(d, ddof=1))
    if se == 0.0:
        z = 0.0 if diff == 0.0 else math.copysign(math.inf, diff)
    else:
        z = diff / se
    p_le, p_ge = float(np.mean(d <= 0)), float(np.mean(d >= 0))
    p_emp = {"greater": p_le, "less": p_ge, "two-sided": min(1.0, 2.0 * min(p_le, p_ge))}[alternative]
    lo, hi = np.quantile(d, [0.5 - level / 2.0, 0.5 + level / 2.0])
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "diff": diff,
        "diff_ci_low": float(lo),
        "diff_ci_high": float(hi),
        "se": se,
        "z": float(z),
        "p_value": _p_from_z(z, alternative),
        "p_empirical": p_emp,
    }


# ------------------------------------------------------------------------ operating points
def operating_point(y_true, y_score, rule: str = "closest") -> dict[str, float]:
    """Cutoff read from the ROC curve, with the sensitivity and specificity it gives.

    - ``"closest"``: the ROC point nearest (FPR, TPR) = (0, 1) — the reference's cutoff "d".
    - ``"youden"``: the point maximising TPR − FPR.

    Points are those of ``roc_points`` (sklearn, collinear points dropped); ties go to the
    first point (highest threshold), as the reference's ``np.argmin`` / ``np.argmax``. The
    prediction rule is "positive when score >= threshold".

    Returns:
        dict with ``threshold, sensitivity, specificity``; all ``nan`` on one-class input.
    """
    _check_choice("rule", rule, ("closest", "youden"))
    y, s = _check_binary(y_true, y_score)
    if _one_class(y):
        return {"threshold": _NAN, "sensitivity": _NAN, "specificity": _NAN}
    fpr, tpr, thr = roc_points(y, s)
    if rule == "closest":
        i = int(np.argmin(np.hypot(fpr, 1.0 - tpr)))
    else:
        i = int(np.argmax(tpr - fpr))
    return {"threshold": float(thr[i]), "sensitivity": float(tpr[i]), "specificity": float(1.0 - fpr[i])}


def at_threshold(y_true, y_score, threshold: float) -> dict[str, float]:
    """Sensitivity and specificity of the rule "positive when score >= threshold" at a fixed threshold.

    Used to apply a cutoff chosen on other data (the validation split) to this data; ``nan`` for a
    ``nan`` threshold or a class that is absent.
    """
    y, s = _check_binary(y_true, y_score)
    t = float(threshold)
    pos, neg = y == 1, y == 0
    sens = float(np.mean(s[pos] >= t)) if pos.any() and not math.isnan(t) else _NAN
    spec = float(np.mean(s[neg] < t)) if neg.any() and not math.isnan(t) else _NAN
    return {"threshold": t, "sensitivity": sens, "specificity": spec}


# --------------------------------------------------------------- slice-level sequence F1
def find_runs(mask_1d) -> list[tuple[int, int]]:
    """Runs of consecutive positive slices, in slice (z) order.

    Args:
        mask_1d: (S,) bool / 0-1 array; nonzero = positive slice.

    Returns:
        ``[(start, end), ...]`` with ``end`` inclusive; ``[]`` when nothing is positive.
    """
    m = np.asarray(mask_1d)
    if m.ndim != 1:
        raise ValueError(f"mask_1d must be 1-D (one value per slice), got shape {m.shape}")
    padded = np.concatenate([[False], m.astype(bool), [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return [(int(s), int(e) - 1) for s, e in zip(edges[::2], edges[1::2])]


def strong_flags(slice_probs, t: float) -> np.ndarray:
    """Strong learner's slice mask (§8.2 step 3): slice probability >= ``t`` (the ROC cutoff).

    Returns (S,) bool.
    """
    p = _check_scores(slice_probs, "slice_probs")
    return p >= t


def weak_flags(weights, normalize: bool = False) -> np.ndarray:
    """Weak learner's slice mask (§8.2 step 3): weight >= 1/n, n = number of slices in the exam.

    Args:
        weights: (S,) attention weights (sparsemax, already summing to 1), or h-Shap values.
        normalize: divide ``weights`` by their sum first (the reference does this for h-Shap,
            not for attention). A zero sum gives an all-False mask.

    Returns:
        (S,) bool.
    """
    w = _check_scores(weights, "weights")
    if w.size == 0:
        return np.zeros(0, dtype=bool)
    if normalize:
        total = w.sum()
        if total == 0:
            return np.zeros(w.size, dtype=bool)
        w = w / total
    return w >= 1.0 / w.size


def _check_run_params(min_length: int, offset: int) -> None:
    if not isinstance(min_length, (int, np.integer)) or min_length < 1:
        raise ValueError(f"min_length must be an integer >= 1, got {min_length!r}")
    if not isinstance(offset, (int, np.integer)) or offset < 0:
        raise ValueError(f"offset must be an integer >= 0, got {offset!r}")


def sequence_f1(
    true_slice_labels,
    slice_scores,
    positive_mask,
    *,
    min_length: int,
    offset: int = 0,
) -> dict:
    """Hemorrhage-sequence detection for one exam (paper-protocol.md §8.2, steps 4–6).

    Quantities:
      - *true runs*: runs of ``true_slice_labels == 1``.
      - *predicted runs*: runs of ``positive_mask`` (the flagged slices) of length >= ``min_length``.
        Pass an all-False mask for an exam that was not called positive.
      - *top slice* of a predicted run: argmax of ``slice_scores`` (the estimator: slice
        probability for the strong learner, attention for the weak one) within the run;
        the first maximum on ties.
      - a true run (start, end) is *hit* when any top slice lies in [start − offset, end + offset].
      - ``tp`` = number of true runs hit; ``pp`` = tp + number of predicted runs whose top slice
        hit no true run (so two predicted runs on one true run count once, and one predicted run
        can hit two true runs when ``offset`` > 0 — the reference's counting); ``gt`` = number of
        true runs.
      - precision = tp/pp, recall = tp/gt, F1 = 2PR/(P+R), with 0/0 read as 0, except that F1 is
        ``nan`` when gt = 0 and pp = 0 (a negative exam correctly left silent). The reference
        adds ε = 1e-8 to denominators; the difference is below 1e-7.

    Args:
        true_slice_labels: (S,) 0/1 slice labels in z order.
        slice_scores: (S,) estimator values used to choose top slices.
        positive_mask: (S,) bool slice flags (``strong_flags`` / ``weak_flags``).
        min_length: minimum predicted-run length (``DEFAULT_MIN_LENGTH``: strong 4, weak 2).
        offset: tolerance in slices around each true run (0 in the TPR notebooks, 4 in the
            label-budget F1 notebook).

    Returns:
        dict with ``tp, pp, gt, precision, recall, f1`` and, for TPR plots, ``true_runs``,
        ``pred_runs``, ``top_slices`` and ``hit`` (0/1 per true run).
    """
    _check_run_params(min_length, offset)
    labels = _check_labels(true_slice_labels, "true_slice_labels")
    scores = _check_scores(slice_scores, "slice_scores", labels.size)
    mask = np.asarray(positive_mask)
    if mask.shape != labels.shape:
        raise ValueError(f"positive_mask must have shape {labels.shape}, got {mask.shape}")
    true_runs = find_runs(labels)
    pred_runs = [r for r in find_runs(mask) if r[1] - r[0] + 1 >= min_length]
    top = [s + int(np.argmax(scores[s : e + 1])) for s, e in pred_runs]
    used: set[int] = set()
    hit = []
    for s, e in true_runs:
        found = [i for i, k in enumerate(top) if s - offset <= k <= e + offset]
        used.update(found)
        hit.append(int(bool(found)))
    tp = sum(hit)
    pp = tp + (len(pred_runs) - len(used))
    gt = len(true_runs)
    precision = tp / pp if pp else 0.0
    recall = tp / gt if gt else 0.0
    if gt == 0 and pp == 0:
        f1 = _NAN
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "tp": tp,
        "pp": pp,
        "gt": gt,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "true_runs": true_runs,
        "pred_runs": pred_runs,
        "top_slices": top,
        "hit": hit,
    }


def mean_sequence_f1(exams: Iterable[Sequence], min_length: int, offset: int = 0) -> dict:
    """Exam-averaged sequence F1 with the exam decision rule (§8.2 steps 2 and 6).

    Args:
        exams: iterable of ``(true_slice_labels, slice_scores, exam_called_positive,
            slice_flag_mask)`` per exam. ``exam_called_positive`` is the exam decision at the
            cutoff t (weak: exam probability >= t; strong: max slice probability >= t); an exam
            not called positive gets no predicted runs whatever its mask.
        min_length, offset: as in ``sequence_f1``.

    Returns:
        dict with ``f1, precision, recall`` (means over scored exams), ``n_scored`` and
        ``n_skipped`` (exams with gt = 0 and pp = 0, which are dropped). ``f1`` etc. are
        ``nan`` when no exam is scored.
    """
    _check_run_params(min_length, offset)
    rows = []
    n_skipped = 0
    for i, exam in enumerate(exams):
        if len(exam) != 4:
            raise ValueError(
                f"exams[{i}] must be (true_slice_labels, slice_scores, exam_called_positive, "
                f"slice_flag_mask), got {len(exam)} items"
            )
        labels, scores, called, mask = exam
        mask = np.asarray(mask, dtype=bool)
        if not bool(called):
            mask = np.zeros_like(mask)
        r = sequence_f1(labels, scores, mask, min_length=min_length, offset=offset)
        if np.isnan(r["f1"]):
            n_skipped += 1
        else:
            rows.append((r["f1"], r["precision"], r["recall"]))
    if not rows:
        return {"f1": _NAN, "precision": _NAN, "recall": _NAN, "n_scored": 0, "n_skipped": n_skipped}
    f1, p, rc = np.mean(np.asarray(rows), axis=0)
    return {"f1": float(f1), "precision": float(p), "recall": float(rc), "n_scored": len(rows), "n_skipped": n_skipped}


# ------------------------------------------------------------------------- pixel level
def _check_map(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) map, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite, found NaN/inf values")
    return a


def otsu_binarize(saliency, nbins: int = 1024) -> np.ndarray:
    """Binarise a saliency map with Otsu's threshold (reference: ``threshold_otsu(nbins=1024)``).

    Args:
        saliency: (H, W) map.
        nbins: histogram bins for Otsu.

    Returns:
        (H, W) bool mask of pixels strictly above the threshold; all False for a constant map.
    """
    from skimage.filters import threshold_otsu

    s = _check_map(saliency, "saliency")
    if s.min() == s.max():
        return np.zeros(s.shape, dtype=bool)
    return s > threshold_otsu(s.ravel(), nbins=nbins)


def dice(pred_mask, true_mask, empty_score: float = _NAN) -> float:
    """Pixel Dice = 2|A∩B| / (|A| + |B|) (= the binary F1 the reference computed with sklearn).

    Args:
        pred_mask, true_mask: (H, W) masks of the same shape; nonzero = inside.
        empty_score: value returned when both masks are empty (default ``nan``: nothing to
            localise). The reference used ``zero_division=0`` (0.0), but only scored slices
            with a lesion, so it never met this case.

    Returns:
        Dice in [0, 1]; 0 when exactly one mask is empty.
    """
    a, b = np.asarray(pred_mask) != 0, np.asarray(true_mask) != 0
    if a.shape != b.shape:
        raise ValueError(f"pred_mask and true_mask must have the same shape, got {a.shape} and {b.shape}")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return float(empty_score)
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def boxes_from_mask(mask2d, plus_one: bool = False) -> list[tuple[int, int, int, int]]:
    """Bounding boxes ``(x, y, w, h)`` of the 8-connected components of a slice mask.

    Reference rule (CT-ICH ``masks_to_bboxes.py``, ``plus_one=False``): x = min col,
    y = min row, w = max col − min col, h = max row − min row — one pixel short in each
    direction — and components with w = 0 or h = 0 (single rows/columns) are dropped.
    ``plus_one=True`` gives the corrected boxes (w = max col − min col + 1, ...), keeping all.

    Args:
        mask2d: (H, W) mask; nonzero = lesion (subtype codes are merged).

    Returns:
        Boxes in raster order of their components' first pixel.
    """
    from skimage.measure import label, regionprops

    m = np.asarray(mask2d)
    if m.ndim != 2:
        raise ValueError(f"mask2d must be a 2-D (H, W) mask, got shape {m.shape}")
    boxes = []
    for region in regionprops(label(m != 0, connectivity=2)):
        r0, c0, r1, c1 = region.bbox  # r1, c1 exclusive
        w, h = c1 - 1 - c0, r1 - 1 - r0
        if plus_one:
            w, h = w + 1, h + 1
        elif w == 0 or h == 0:
            continue
        boxes.append((int(c0), int(r0), int(w), int(h)))
    return boxes


def mask_from_boxes(shape: tuple[int, int], boxes: Iterable[Sequence[float]]) -> np.ndarray:
    """Union of filled boxes, ``mask[y:y+h, x:x+w] = True`` as the reference (clipped to the image).

    Args:
        shape: (H, W).
        boxes: ``(x, y, w, h)`` per box, pixels; floats are truncated to int.

    Returns:
        (H, W) bool mask.
    """
    if len(shape) != 2:
        raise ValueError(f"shape must be (H, W), got {shape!r}")
    out = np.zeros(tuple(int(v) for v in shape), dtype=bool)
    for i, box in enumerate(boxes):
        if len(box) != 4:
            raise ValueError(f"boxes[{i}] must be (x, y, w, h), got {box!r}")
        x, y, w, h = (int(v) for v in box)
        if w < 0 or h < 0:
            raise ValueError(f"boxes[{i}] has a negative size (w={w}, h={h})")
        out[max(y, 0) : max(y + h, 0), max(x, 0) : max(x + w, 0)] = True
    return out


def pointing_game(saliency, true_mask) -> bool:
    """Whether the hottest pixel of a saliency map lies inside the lesion.

    Ties: a hit only when **every** pixel sharing the maximum is inside the lesion, so the
    result does not depend on scan order and a flat map cannot score by luck.

    Args:
        saliency: (H, W) map.
        true_mask: (H, W) mask; nonzero = lesion.

    Raises:
        ValueError: shapes differ, or the mask is empty (score only slices with a lesion).
    """
    s = _check_map(saliency, "saliency")
    t = np.asarray(true_mask) != 0
    if t.shape != s.shape:
        raise ValueError(f"saliency and true_mask must have the same shape, got {s.shape} and {t.shape}")
    if not t.any():
        raise ValueError("true_mask is empty: the pointing game needs a lesion; score only slices with one")
    return bool(np.all(t[s == s.max()]))


def summarize_by_subtype(rows, value: str = "dice", by: Sequence[str] = ()):
    """Median and IQR of a per-slice score per hemorrhage subtype, plus "Any" (§8.3 step 4).

    A slice with exactly one subtype counts for that subtype and for "Any"; a slice with
    several counts for "Any" only; a slice with none is left out.

    Args:
        rows: DataFrame or iterable of mappings, each with ``"subtypes"`` (a collection of
            subtype names; any naming, e.g. ``labels.SUBTYPES`` or abbreviations), the numeric
            column ``value``, and the grouping columns ``by`` (e.g. ``("model", "explainer")``).
        value: the score column to summarise; NaN scores are left out.
        by: extra grouping columns, kept in the output.

    Returns:
        DataFrame with columns ``*by, subtype, n, median, q1, q3, iqr`` (quartiles with
        numpy's linear interpolation); "Any" first, then subtypes sorted by name.
    """
    import pandas as pd

    records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)
    out: dict[tuple, list[float]] = {}
    for i, r in enumerate(records):
        if not isinstance(r, Mapping):
            raise ValueError(f"rows[{i}] must be a mapping with 'subtypes' and {value!r}, got {type(r).__name__}")
        missing = [k for k in ("subtypes", value, *by) if k not in r]
        if missing:
            raise ValueError(f"rows[{i}] is missing {missing}; it has {sorted(r)}")
        v = float(r[value])
        if np.isnan(v):
            continue
        sub = r["subtypes"]
        types = sorted({sub} if isinstance(sub, str) else set(sub))
        if not types:
            continue
        key = tuple(r[k] for k in by)
        out.setdefault(key + ("Any",), []).append(v)
        if len(types) == 1:
            out.setdefault(key + (types[0],), []).append(v)
    table = []
    for key, vals in out.items():
        q1, med, q3 = np.quantile(np.asarray(vals), [0.25, 0.5, 0.75])
        table.append((*key, len(vals), float(med), float(q1), float(q3), float(q3 - q1)))
    cols = [*by, "subtype", "n", "median", "q1", "q3", "iqr"]
    df = pd.DataFrame(table, columns=cols)
    if df.empty:
        return df
    df["_order"] = df["subtype"].map(lambda t: (t != "Any", str(t)))
    return df.sort_values([*by, "_order"]).drop(columns="_order").reset_index(drop=True)


# ----------------------------------------------------------------------- across seeds
def mean_ci(values, level: float = 0.95) -> tuple[float, float, float]:
    """Mean across seeds/runs with a Student-t confidence interval.

    Args:
        values: 1-D numbers (e.g. one AUC per seed); NaN values are left out.
        level: confidence level.

    Returns:
        ``(mean, low, high)``. One finite value: ``(value, nan, nan)``; none: all ``nan``.
    """
    from scipy.stats import t as student_t

    _z_crit(level)
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return _NAN, _NAN, _NAN
    mean = float(v.mean())
    if v.size == 1:
        return mean, _NAN, _NAN
    half = float(student_t.ppf(0.5 + level / 2.0, df=v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return mean, mean - half, mean + half
