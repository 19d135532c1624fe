"""Rendering a phantom exam from its parameters: partial-volume HU slices and the lesion mask (deterministic)."""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy import ndimage

from ich.phantom.config import MASK_THRESHOLD, SUB_Z, SUBTYPE_CODES
from ich.phantom.params import Lesion, PhantomParams, head_outline, level_scale, obliquity

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


# ----------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------

def _occ(sd, pix: float):
    """Fraction of a pixel inside the region ``sd > 0`` (sd: signed distance in mm, + inside)."""
    return np.clip(sd * np.float32(1.0 / pix) + np.float32(0.5), 0.0, 1.0)


def _band(d, half, pix: float):
    """Fraction of a pixel inside the slab ``|d| < half`` (exact for a 1-D box of width ``pix``)."""
    h = np.float32(pix / 2)
    return np.clip((np.minimum(d + h, half) - np.maximum(d - h, -half)) * np.float32(1.0 / pix), 0.0, 1.0)


def _paint(img, alpha, value) -> None:
    """img <- img * (1 - alpha) + value * alpha, in place."""
    img += alpha * (value - img)


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


class _Texture:
    """A smooth random 3-D field (a sum of plane waves) that makes sulci meander."""

    def __init__(self, seed: int, n: int = 7):
        rng = np.random.default_rng(seed)
        wavelength = rng.uniform(20.0, 60.0, n)
        direction = rng.normal(size=(n, 3))
        direction[:, 2] *= 0.6
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        self.k = (2 * np.pi / wavelength)[:, None] * direction          # (n, 3) rad/mm
        self.phase = rng.uniform(0, 2 * np.pi, n)
        self.amp = rng.uniform(0.5, 1.0, n) * (3.0 / np.sqrt(n))
        self.salt = rng.uniform(0, 100.0, 3)

    def warp(self, x, v, z: float):
        """Field value and its in-plane gradient (rad, rad/mm)."""
        f = np.zeros_like(x)
        gx = np.zeros_like(x)
        gv = np.zeros_like(x)
        for (kx, kv, kz), ph, a in zip(self.k, self.phase, self.amp):
            arg = np.float32(kx) * x + np.float32(kv) * v + np.float32(kz * z + ph)
            f += np.float32(a) * np.sin(arg)
            c = np.float32(a) * np.cos(arg)
            gx += np.float32(kx) * c
            gv += np.float32(kv) * c
        return f, gx, gv


def _head_frame(p: PhantomParams):
    """Pixel-centre coordinates in the head frame: x (mm, image right), v (mm, anterior); (H, W) each."""
    n, pix = p.size, p.pixel_spacing_mm
    axis = (np.arange(n, dtype=np.float32) - np.float32((n - 1) / 2)) * np.float32(pix)
    ximg, yimg = np.meshgrid(axis, axis)  # (H, W): x to the image right, y down (posterior)
    dx = ximg - np.float32(p.shift_mm[0])
    dy = yimg - np.float32(p.shift_mm[1])
    a = math.radians(p.rotation_deg)
    ca, sa = np.float32(math.cos(a)), np.float32(math.sin(a))
    x = ca * dx + sa * dy
    v = -(-sa * dx + ca * dy)
    fov = (ximg ** 2 + yimg ** 2) <= np.float32((n * pix / 2) ** 2)  # circular reconstruction field
    return x, v, fov


def _ellipse_sd(x, v, cx, cv, rx, rv, angle=0.0):
    """Approximate signed distance (mm, + inside) to an ellipse."""
    dx, dv = x - np.float32(cx), v - np.float32(cv)
    if angle:
        c, s = np.float32(math.cos(angle)), np.float32(math.sin(angle))
        dx, dv = c * dx + s * dv, -s * dx + c * dv
    q = np.sqrt((dx / np.float32(rx)) ** 2 + (dv / np.float32(rv)) ** 2)
    return (1 - q) * np.float32(min(rx, rv))


def _hash01(idx, salt: float):
    """A deterministic pseudo-random number in [0, 1) per integer-valued ``idx`` (float32 arrays)."""
    h = np.sin(idx * np.float32(12.9898) + np.float32(salt)) * np.float32(43758.547)
    return h - np.floor(h)


def _bar(x, v, p0, p1, pix: float, half_width):
    """Occupancy of a straight bar from p0 to p1 (head-frame mm) with the given half width."""
    tx, tv = p1[0] - p0[0], p1[1] - p0[1]
    ln = math.hypot(tx, tv)
    along = ((x - np.float32(p0[0])) * np.float32(tx / ln) + (v - np.float32(p0[1])) * np.float32(tv / ln))
    across = ((x - np.float32(p0[0])) * np.float32(tv / ln) - (v - np.float32(p0[1])) * np.float32(tx / ln))
    return along, across, ln


def _render_anatomy(p: PhantomParams, k: int, geo: dict, tex: _Texture):
    """One slice of anatomy: the HU image and the fields lesions need (all (H, W) float32)."""
    pix = p.pixel_spacing_mm
    x, v, r, theta, outline = geo["x"], geo["v"], geo["r"], geo["theta"], geo["outline"]
    u = (k + 0.5) / p.n_slices
    z = k * p.slice_thickness_mm
    s = level_scale(p, u)
    ob = obliquity(p, u)
    hu = p.tissue_hu
    a_in = p.head_a_mm * s - (p.scalp_mm + p.skull_mm) * ob  # inner-table semi-axes at this level
    b_in = p.head_b_mm * s - (p.scalp_mm + p.skull_mm) * ob
    vs = p.ventricle_scale

    # --- scalp, skull (outer table, diploe, inner table)
    img = np.full(x.shape, -1000.0, dtype=np.float32)
    d = outline * np.float32(s) - r                                 # depth below the skin (mm)
    low = max(0.0, 0.5 - u) / 0.5
    scalp = np.float32(p.scalp_mm * ob) * (1 + np.float32(1.4 * low) * np.abs(np.cos(theta)))  # temporalis
    skull = np.float32(p.skull_mm * ob)
    if u < 0.25:  # thick frontal bone low in the head
        skull = skull * (1 + np.float32(3.0 * (0.25 - u) / 0.25) * np.maximum(np.sin(theta), 0) ** 4)
    skull_in = scalp + skull
    _paint(img, _occ(d, pix), hu["scalp"])
    _paint(img, _band(d - 0.45 * scalp, 0.15 * scalp, pix), hu["fat"])
    _paint(img, _occ(np.minimum(d - scalp, skull_in - d), pix), hu["cortical"])
    _paint(img, _occ(np.minimum(d - scalp - 0.3 * skull, skull_in - 0.3 * skull - d), pix), hu["diploe"])
    if u < 0.25:  # frontal sinus, inside the thick frontal bone
        fs = _ellipse_sd(x, v, 0.0, float(head_outline(p, math.pi / 2)) * s - p.scalp_mm - 0.5 * p.skull_mm * 3.0,
                         12.0, 6.0 * (0.25 - u) / 0.25 + 1.0)
        _paint(img, _occ(fs, pix) * _occ(d - scalp - 1.5, pix), -900.0)
    e = d - skull_in                                                 # depth below the inner table (mm)
    icv = _occ(e, pix)                                               # intracranial fraction

    # --- skull base (lowest slices): petrous ridges, clivus with the sphenoid sinus
    if u < 0.22:
        w = (0.22 - u) / 0.22
        base = np.zeros_like(x)
        for side in (1, -1):
            along, across, ln = _bar(x, v, (side * 1.0 * a_in, -0.32 * b_in), (side * 9.0, 0.06 * b_in), pix, 0)
            bar = _band(across, (1.2 + 5.0 * w) * (1.0 - 0.7 * np.clip(along / ln, 0, 1)), pix)
            base = np.maximum(base, bar * _occ(np.minimum(along, ln - along), pix))
        base = np.maximum(base, _occ(_ellipse_sd(x, v, 0.0, 0.1 * b_in, 8.0 + 5 * w, 6.0 + 4 * w), pix))
        _paint(img, base * icv, hu["cortical"] * 0.85)
        sinus = _occ(_ellipse_sd(x, v, 0.0, 0.1 * b_in + 4.0, 5.0 + 5 * w, 2.5 + 3 * w), pix) * icv
        _paint(img, sinus, -950.0)
        icv = icv * (1 - base)
    b = e - np.float32(p.csf_mm)                                     # depth below the brain surface (mm)
    brain = _occ(b, pix) * icv

    # --- cortex: radial sulci that meander, each with its own depth and width; a grey ribbon lines them
    wz, gx, gv = tex.warp(x, v, z)
    r_safe = np.maximum(r, np.float32(2.0))
    ng = np.float32(p.n_gyri)
    phase = ng * theta + wz
    idx = np.round(phase * np.float32(1 / np.pi))
    dphase = np.abs(phase - np.float32(np.pi) * idx)
    grad = np.sqrt((gx - ng * v / r_safe ** 2) ** 2 + (gv + ng * x / r_safe ** 2) ** 2)
    dist_sulcus = dphase / np.maximum(grad, np.float32(1e-3))       # mm to the nearest sulcus line
    depth_lim = np.float32(p.sulcal_depth_mm) * (np.float32(0.3) + np.float32(1.1) * _hash01(idx, tex.salt[0]))
    half_w = np.float32(p.sulcus_mm / 2) * (np.float32(0.5) + _hash01(idx, tex.salt[1]))
    half_w = half_w * (np.float32(1.0) - np.float32(0.5) * np.clip(b / depth_lim, 0, 1))  # wedge: wide at the surface
    sulci = _band(dist_sulcus, half_w, pix) * _occ(depth_lim - b, pix)
    d_seg = np.sqrt(np.maximum(dist_sulcus - half_w, 0) ** 2 + np.maximum(b - depth_lim, 0) ** 2)
    grey = np.maximum(_occ(np.float32(p.gm_mm) - b, pix), _occ(np.float32(p.gm_mm) - d_seg, pix))

    csf_extra = np.zeros_like(x)                                     # fissures and cisterns
    vent = np.zeros_like(x)                                          # ventricles
    deep = np.zeros_like(x)                                          # deep grey nuclei (fraction)
    # --- interhemispheric fissure and falx (interrupted by the corpus callosum at ventricle level)
    falx_ok = None
    if u > 0.3:
        if 0.42 < u < 0.66:
            falx_ok = _occ(np.abs(v + 0.05 * b_in) - 0.45 * b_in, pix)
        elif u <= 0.42:
            falx_ok = np.maximum(_occ(v - 0.4 * b_in, pix), _occ(-v - 0.5 * b_in, pix))
        else:
            falx_ok = np.ones_like(x)
        csf_extra = np.maximum(csf_extra, _band(x, np.float32(0.6 + 0.4 * p.sulcus_mm), pix) * falx_ok)
    # --- posterior fossa: pons, prepontine cistern, fourth ventricle
    if u < 0.24:
        pons = _ellipse_sd(x, v, 0.0, -0.05 * b_in, 12.5, 11.0)
        deep = np.maximum(deep, 0.4 * _occ(pons, pix))
        cist = np.minimum(_ellipse_sd(x, v, 0.0, -0.05 * b_in + 1.5, 14.0, 13.0), -pons)
        csf_extra = np.maximum(csf_extra, _occ(cist, pix) * _occ(v + 0.05 * b_in, pix))
        vent = np.maximum(vent, _occ(_ellipse_sd(x, v, 0.0, -0.05 * b_in - 15.0, 5.5 * vs, 2.5 * vs), pix))
    # --- midbrain level: ambient and suprasellar cisterns
    if 0.2 < u < 0.34:
        mb = _ellipse_sd(x, v, 0.0, -0.1 * b_in, 11.5, 10.0)
        ring = _band(mb + 1.0 + 0.4 * vs, 0.8 + 0.4 * vs, pix) * _occ(-v - 0.02 * b_in, pix)
        phi = np.arctan2(v - np.float32(0.08 * b_in), x)
        star = _ellipse_sd(x, v, 0.0, 0.08 * b_in, 8.0 * vs, 7.0 * vs) + 2.0 * np.cos(5 * phi - np.float32(np.pi / 2))
        csf_extra = np.maximum(csf_extra, np.maximum(ring, _occ(star, pix)))
        deep = np.maximum(deep, 0.5 * _occ(mb, pix))
    # --- Sylvian fissures, with the insular cortex medial to them
    if 0.24 < u < 0.48:
        g = _smoothstep((0.48 - u) / 0.06) * _smoothstep((u - 0.24) / 0.04)
        for side in (1, -1):
            along, across, ln = _bar(x, v, (side * 1.1 * a_in, 0.12 * b_in), (side * 0.42 * a_in, 0.0), pix, 0)
            wiggle = np.float32(1.5) * np.sin(along * np.float32(0.3) + np.float32(tex.salt[2]))
            syl = _band(across + wiggle, g * (0.6 + 0.5 * p.sulcus_mm), pix) * _occ(np.minimum(along, ln - along), pix)
            csf_extra = np.maximum(csf_extra, syl)
            deep = np.maximum(deep, g * 0.8 * _band(across, 4.0, pix) * _occ(along - ln + 6, pix) * _occ(ln + 3 - along, pix))
    # --- basal ganglia and thalami
    if 0.32 < u < 0.52:
        g = _smoothstep((0.52 - u) / 0.06) * _smoothstep((u - 0.32) / 0.05)
        for side in (1, -1):
            caud = _occ(_ellipse_sd(x, v, side * (9.0 * vs + 4.0), 0.2 * b_in, 5.0, 8.0, angle=-side * 0.3), pix)
            lent = _occ(_ellipse_sd(x, v, side * (18.0 + 3 * vs), 0.03 * b_in, 6.0, 15.0, angle=side * 0.3), pix)
            thal = _occ(_ellipse_sd(x, v, side * 9.0, -0.12 * b_in, 8.0, 11.0), pix) * (u < 0.47)
            deep = np.maximum(deep, g * np.maximum(np.maximum(caud, lent), 0.9 * thal))
    # --- lateral ventricles: frontal horns, bodies, atria and occipital horns
    if 0.35 < u < 0.68:
        g = _smoothstep((0.68 - u) / 0.1) * _smoothstep((u - 0.35) / 0.06)
        vn = v * np.float32(1 / b_in)
        h = np.float32(vs) * (2.8 + 3.5 * np.exp(-((vn + 0.3) / 0.1) ** 2) + 1.5 * np.exp(-((vn - 0.2) / 0.1) ** 2))
        h = np.maximum(h * np.float32(g) - np.float32(2.0 * (1 - g)), 0)  # shrink to nothing, never to a thin line
        if u < 0.46:  # frontal horns and atria only; the thalami sit between them
            cut = _smoothstep((np.abs(vn + 0.05) - 0.1) / 0.08)
            h = np.maximum(h * cut - np.float32(2.0) * (1 - cut), 0)
        lo_v, hi_v = -0.5 - 0.04 * vs, 0.34
        along = np.minimum(vn - lo_v, hi_v - vn) * np.float32(b_in)
        for side in (1, -1):
            xc = side * (1.0 + h + np.float32(vs * 90.0) * np.maximum(-vn - 0.12, 0) ** 2)
            sd = np.minimum(h - np.abs(x - xc), along)
            vent = np.maximum(vent, _occ(sd, pix))
    # --- third ventricle: a midline slit
    if 0.3 < u < 0.46:
        vent = np.maximum(vent, _occ(_ellipse_sd(x, v, 0.0, -0.04 * b_in, 1.3 * vs, 0.12 * b_in), pix))

    # --- compose
    tissue = np.float32(hu["white"]) + np.float32(hu["grey"] - hu["white"]) * grey
    tissue += (np.float32(hu["deep_grey"]) - tissue) * deep
    _paint(img, icv, hu["csf"])
    _paint(img, brain, tissue)
    csf_space = np.maximum(sulci * brain, csf_extra * icv)
    vent = vent * icv
    _paint(img, csf_space, hu["csf"])
    _paint(img, vent, hu["csf"])
    if falx_ok is not None:  # the falx: a thin dense sheet in the fissure
        _paint(img, _band(x, np.float32(0.5), pix) * falx_ok * _occ(e - 1.0, pix) * icv, hu["falx"])
    pineal, choroid = p.calcification_hu  # bright calcifications (distractors, not hemorrhage)
    if pineal and 0.36 < u < 0.46:
        _paint(img, _occ(_ellipse_sd(x, v, 0.0, -0.2 * b_in, 2.5, 2.5), pix), pineal)
    if choroid and 0.42 < u < 0.54:
        for side in (1, -1):
            xc = side * (1.0 + 6.3 * vs + vs * 90.0 * 0.18 ** 2)
            _paint(img, _occ(_ellipse_sd(x, v, xc, -0.3 * b_in, 3.0, 3.5), pix) * vent, choroid)
    fields = {"icv": icv, "brain": brain, "csf": np.maximum(np.maximum(csf_space, vent), icv * (1 - brain)),
              "vent": vent, "e": e, "tissue": tissue}
    return img, fields


def _lesion_occupancy(p: PhantomParams, les: Lesion, k: int, geo: dict, fields: dict):
    """Fraction (H, W) of each pixel of slice k filled by the lesion's blood (and its oedema rim)."""
    pix = p.pixel_spacing_mm
    x, v, theta = geo["x"], geo["v"], geo["theta"]
    z0 = k * p.slice_thickness_mm
    occ = np.zeros_like(x)
    oed = np.zeros_like(x)
    for f in SUB_Z:
        zn = (z0 + f * p.slice_thickness_mm - les.z_mm) / les.z_half_mm
        if abs(zn) >= 1:
            continue
        if les.subtype in ("epidural", "subdural"):
            u = (k + 0.5) / p.n_slices
            dth = np.angle(np.exp(1j * (theta - les.theta))).astype(np.float32)
            arc = dth * geo["outline"] * np.float32(level_scale(p, u))
            q2 = (arc / np.float32(les.arc_half_mm)) ** 2 + np.float32(zn * zn)
            if les.subtype == "epidural":
                t = les.thickness_mm * np.maximum(1 - q2, 0)                    # biconvex lens
            else:
                t = les.thickness_mm * np.maximum(1 - q2 ** 2, 0) ** 0.5        # crescent with tapered ends
            occ += _occ(t - fields["e"], pix) * (t > 0.1)
            continue
        dx, dv = x - np.float32(les.x_mm), v - np.float32(les.v_mm)
        c, s = np.float32(math.cos(les.orient)), np.float32(math.sin(les.orient))
        dx, dv = c * dx + s * dv, -s * dx + c * dv
        dxn, dvn = dx / np.float32(les.rx_mm), dv / np.float32(les.rv_mm)
        q = np.sqrt(dxn ** 2 + dvn ** 2 + np.float32(zn * zn))
        phi = np.arctan2(dvn, dxn)
        rho = np.ones_like(q)
        for j in range(0, len(les.bumps), 3):
            amp, ph, tw = les.bumps[j:j + 3]
            rho += np.float32(amp) * np.cos(np.float32(j // 3 + 2) * phi + np.float32(ph + tw * zn))
        rmin = np.float32(min(les.rx_mm, les.rv_mm))
        sd = (rho - q) * rmin
        occ += _occ(sd, pix)
        if les.oedema_mm > 0:
            oed += _occ(sd + np.float32(les.oedema_mm), pix)
    occ *= np.float32(1 / len(SUB_Z))
    oed *= np.float32(1 / len(SUB_Z))
    if les.subtype == "intraparenchymal":
        occ *= fields["brain"]
        oed = oed * fields["brain"]
    elif les.subtype == "intraventricular":
        occ *= fields["vent"]
        if les.level_mm is not None:
            occ *= _occ(np.float32(les.level_mm) - v, pix)
    elif les.subtype == "subarachnoid":
        occ *= fields["csf"]
    else:
        occ *= fields["icv"]
    return occ, oed


def render_phantom(params: PhantomParams) -> tuple[np.ndarray, np.ndarray]:
    """Render one exam (deterministic: the same params give the same bytes).

    Args:
        params: from ``sample_phantom_params`` (or ``PhantomParams.from_json``).

    Returns:
        (hu, mask): float32 HU (S, H, W), slice 0 lowest; uint8 subtype codes (S, H, W).
    """
    p = params
    x, v, fov = _head_frame(p)
    S, n, pix = p.n_slices, p.size, p.pixel_spacing_mm
    # work on the head's bounding box (plus a margin for the blur); outside it is air
    theta = np.arctan2(v, x)
    inside = np.sqrt(x * x + v * v) <= head_outline(p, theta) + np.float32(4 * pix + 2.0)
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)) if rows.size else (slice(0, 1), slice(0, 1))
    x, v, theta = x[box], v[box], theta[box]
    geo = {"x": x, "v": v, "r": np.sqrt(x * x + v * v), "theta": theta,
           "outline": head_outline(p, theta).astype(np.float32)}
    tex = _Texture(p.texture_seed)
    hu = np.full((S, n, n), -1000.0, dtype=np.float32)
    mask = np.zeros((S, n, n), dtype=np.uint8)
    for k in range(S):
        img, fields = _render_anatomy(p, k, geo, tex)
        for les in p.lesions:
            half = les.z_half_mm + p.slice_thickness_mm
            if abs(k * p.slice_thickness_mm - les.z_mm) >= half:
                continue
            occ, oed = _lesion_occupancy(p, les, k, geo, fields)
            if les.oedema_mm > 0:
                _paint(img, oed, fields["tissue"] - 12.0)
            _paint(img, occ, les.hu)
            mask[k][box][occ >= MASK_THRESHOLD] = SUBTYPE_CODES[les.subtype]
        hu[k][box] = img
    # scanner blur and spatially correlated noise (in-plane), then the circular field of view
    psf = 0.45 / pix
    if psf > 0.25:
        hu[(slice(None), *box)] = ndimage.gaussian_filter(hu[(slice(None), *box)], sigma=(0, psf, psf), truncate=3.0)
    rng = np.random.default_rng(p.texture_seed)
    noise = rng.standard_normal(hu.shape, dtype=np.float32)
    corr = p.noise_corr_mm / pix
    if corr > 0.25:
        noise = ndimage.gaussian_filter(noise, sigma=(0, corr, corr), truncate=3.0)
        taps = np.exp(-0.5 * (np.arange(-int(3.0 * corr + 0.5), int(3.0 * corr + 0.5) + 1) / corr) ** 2)
        noise *= np.float32(taps.sum() ** 2 / (taps ** 2).sum())  # back to unit variance
    hu += np.float32(p.noise_hu) * noise
    hu[:, ~fov] = -1024.0
    return hu, mask
