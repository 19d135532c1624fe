"""Tests for ich.atlas: bleeds land in their compartment, tissue HU ranges, determinism, the synth/import round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("nilearn")

from ich import atlas, synth  # noqa: E402
from ich.labels import SUBTYPES  # noqa: E402

SIZE = 64   # render grid 64 px (3.75 mm): fast, and compartments are checked on the same grid


def _only(subtype: str, **kw) -> atlas.AtlasConfig:
    w = tuple(1.0 if s == subtype else 0.0 for s in SUBTYPES)
    return atlas.atlas_config("default", size=SIZE, p_positive=1.0, lesions_per_exam=(1, 1), subtype_weights=w, **kw)


@pytest.fixture(scope="module")
def layers():
    """One rendered exam per subtype (seeds 0-2 each) as noise-free 1 mm layers."""
    out = {}
    for subtype in SUBTYPES:
        out[subtype] = [atlas.render_layers(atlas.sample_atlas_params(s, _only(subtype))) for s in range(3)]
    return out


def test_atlas_maps_describe_a_brain():
    m = atlas.atlas_maps()
    gm, wm, dist, vent = m.channels
    envelope_ml = (dist < 0).sum() / 1000
    assert 1500 < envelope_ml < 2100                    # adult intracranial brain + CSF
    assert 8 < (vent > 0.5).sum() / 1000 < 40           # two lateral ventricles (~8 mL each)
    assert (gm[vent > 0.9] + wm[vent > 0.9]).max() < 0.4  # ventricles are CSF
    for name, pts in m.sites.items():
        assert len(pts) > 100, name


def test_each_subtype_lands_in_its_compartment(layers):
    for subtype, exams in layers.items():
        seen = 0
        for lay in exams:
            f = lay["fields"]
            for frac in lay["fractions"]:
                blood = frac > 0.5
                seen += int(blood.sum())
                if not blood.any():
                    continue
                if subtype == "subarachnoid":     # atlas CSF outside the ventricles
                    assert (f["csf_extra"][blood] > 0.05).all()
                    assert (f["vent"][blood] < 0.5).mean() > 0.99
                elif subtype == "intraventricular":
                    assert (f["vent"][blood] > 0.1).all()
                elif subtype == "intraparenchymal":
                    assert ((f["gm"] + f["wm"])[blood] > 0.3).all()
                else:                              # epidural / subdural: under the inner table, above the brain
                    d = f["dist"][blood]
                    assert (d <= f["inner_table"] + 0.6 * 3.75).all()          # never inside the bone
                    assert (d >= -36.0).all()                                  # a layer, not deep brain
                    assert np.median(d) > -12.0
                    if subtype == "subdural":                                  # one side of the falx
                        sides = np.sign(f["x_mm"][blood])
                        assert abs(sides.mean()) > 0.99
        assert seen > 20, f"{subtype}: no blood rendered in 3 exams"


def test_tissue_hu_ranges_hold(layers):
    cfg = atlas.AtlasConfig()
    for lay in layers["subdural"]:
        f, hu = lay["fields"], lay["tissue_hu"]
        deep = f["dist"] < -15                      # away from the skull's cupping
        gm, wm = f["gm"] > 0.95, f["wm"] > 0.95
        csf = (f["gm"] + f["wm"] < 0.02) & (f["dist"] < -1)
        assert cfg.grey_hu[0] - 0.5 <= hu[gm & deep].min() and hu[gm & deep].max() <= cfg.grey_hu[1] + 0.5
        assert cfg.white_hu[0] - 0.5 <= hu[wm & deep].min() and hu[wm & deep].max() <= cfg.white_hu[1] + 0.5
        assert cfg.csf_hu[0] - 0.5 <= hu[csf].min() and hu[csf].max() <= cfg.csf_hu[1] + 4.5
        assert hu.max() > 1000                      # cortical bone
        assert hu.min() < -990                      # air around the head
        blood = lay["hu"][np.sum(lay["fractions"], axis=0) > 0.99]
        assert blood.size and 50 <= blood.min() and blood.max() <= 80


def test_render_and_mask_rule():
    p = atlas.sample_atlas_params(3, _only("intraparenchymal", volume_scale=3.0))
    hu, mask = atlas.render_atlas(p)
    assert hu.shape == mask.shape == (p.n_slices, SIZE, SIZE) and hu.dtype == np.float32 and mask.dtype == np.uint8
    assert 24 <= p.n_slices <= 34                    # skull base to vertex at 5 mm
    assert set(np.unique(mask)) <= {0, SUBTYPES.index("intraparenchymal") + 1}
    area = (mask > 0).sum(axis=(1, 2)) * p.pixel_spacing_mm ** 2
    assert area.max() > 0 and ((area == 0) | (area >= atlas.MIN_AREA_MM2)).all()   # stated partial-volume rule
    brain = hu[p.n_slices // 2][SIZE // 2 - 5:SIZE // 2 + 5, SIZE // 2 - 5:SIZE // 2 + 5]
    assert 10 < float(np.median(brain)) < 50


def test_same_seed_same_bytes_and_import_round_trip(tmp_path):
    kw = dict(seed=2, size=48, anatomy="atlas", workers=1, p_positive=1.0)
    s1 = synth.write_synth_dataset(tmp_path / "a", 2, **kw)
    synth.write_synth_dataset(tmp_path / "b", 2, **kw)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) > 20
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    meta = json.loads((tmp_path / "a" / "synth.json").read_text())
    assert meta["anatomy"] == "atlas" and meta["config"]["anatomy"] == "atlas"
    params = atlas.AtlasParams.from_dict(json.loads((tmp_path / "a" / "params" / "PH000000.json").read_text()))
    assert params.size == 48

    from ich.sources import import_phantom
    from ich.store import open_dataset

    report = import_phantom(tmp_path / "a", tmp_path / "ds", size=48, workers=1, on_error="raise")
    assert report["exams"] == 2 and report["slices"] == s1["slices"], report
    ds = open_dataset(tmp_path / "ds")
    assert int(ds.exams["label"].sum()) == s1["positive_exams"]
    assert int(ds.slices["label"].sum()) == s1["positive_slices"]
    assert ds.exams["has_mask"].all()


def test_config_errors():
    with pytest.raises(ValueError, match="difficulty must be one of"):
        atlas.atlas_config("hardest")
    with pytest.raises(ValueError, match="unknown AtlasConfig field 'volum_scale'"):
        atlas.atlas_config("default", volum_scale=2.0)
    with pytest.raises(ValueError, match="blood_hu must be a"):
        atlas.AtlasConfig(blood_hu=(80.0, 50.0))
    with pytest.raises(ValueError, match="--anatomy must be one of"):
        synth.write_synth_dataset("unused", 1, anatomy="mri")
    assert atlas.AtlasConfig.from_dict(atlas.AtlasConfig().to_dict()) == atlas.AtlasConfig()
    from ich.commands.synth import DIFFICULTIES

    assert sorted(atlas.ATLAS_PRESETS) == sorted(DIFFICULTIES)
