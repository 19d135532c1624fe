"""Tests for ich.phantom: config validation, determinism, anatomy, lesions, prevalence, the store fast path."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from ich.labels import SUBTYPES
from ich.phantom import (MASK_THRESHOLD, PHANTOM_PRESETS, PhantomConfig, PhantomParams, exam_id_for, exam_seed,
                         make_phantoms, phantom_config, render_phantom, sample_phantom_params,
                         write_phantom_dataset)

SMALL = phantom_config("default", size=64, n_slices=(10, 12))


def _render(seed, cfg=SMALL):
    return render_phantom(sample_phantom_params(seed, cfg))


# ---------------------------------------------------------------- config

def test_config_json_round_trip():
    for cfg in PHANTOM_PRESETS.values():
        again = PhantomConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert again == cfg
        assert isinstance(again.blood_hu, tuple)


def test_config_unknown_key_did_you_mean():
    with pytest.raises(ValueError, match="unknown PhantomConfig key 'noise_hus'.*did you mean 'noise_hu'"):
        PhantomConfig.from_dict({"noise_hus": [1.0, 2.0]})


def test_config_reversed_range():
    with pytest.raises(ValueError, match=r"blood_hu must be a \(low, high\) pair with low <= high"):
        PhantomConfig(blood_hu=(90.0, 50.0))


def test_config_probability_out_of_range():
    with pytest.raises(ValueError, match=r"p_positive must be a probability in \[0, 1\], not 1.5"):
        PhantomConfig(p_positive=1.5)


def test_config_wrong_subtype_weights():
    with pytest.raises(ValueError, match="subtype_weights must be 5 non-negative numbers"):
        PhantomConfig(subtype_weights=(1.0, 1.0))


def test_config_fractional_slices():
    with pytest.raises(ValueError, match="n_slices must be two integers"):
        PhantomConfig(n_slices=(8.5, 12))


def test_config_size_too_small():
    with pytest.raises(ValueError, match="size must be an integer between 16 and 1024 pixels, not 8"):
        PhantomConfig(size=8)


def test_unknown_difficulty_did_you_mean():
    with pytest.raises(ValueError, match="difficulty must be one of .*did you mean 'hard'"):
        phantom_config("hrad")


def test_unknown_override_did_you_mean():
    with pytest.raises(ValueError, match="did you mean 'p_positive'"):
        phantom_config("easy", p_postive=0.3)


def test_presets_order_by_difficulty():
    easy, default, hard = (PHANTOM_PRESETS[k] for k in ("easy", "default", "hard"))
    assert easy.blood_hu[0] > default.blood_hu[0] > hard.blood_hu[0]
    assert easy.lesion_size_mm[0] > default.lesion_size_mm[0] >= hard.lesion_size_mm[0]
    assert easy.noise_hu[1] <= default.noise_hu[1] <= hard.noise_hu[1]


def test_sample_rejects_wrong_rng_type():
    with pytest.raises(TypeError, match="rng must be a numpy Generator, a SeedSequence or an int seed, not str"):
        sample_phantom_params("0")


def test_make_phantoms_negative_count():
    with pytest.raises(ValueError, match="n_exams must be a non-negative integer, not -1"):
        list(make_phantoms(-1, seed=0))


# ---------------------------------------------------------------- determinism and params

def test_same_seed_same_bytes_and_different_seed_differs():
    hu1, m1 = _render(3)
    hu2, m2 = _render(3)
    assert hu1.tobytes() == hu2.tobytes() and m1.tobytes() == m2.tobytes()
    hu3, _ = _render(4)
    assert hu3.shape != hu1.shape or not np.array_equal(hu1, hu3)


def test_params_json_round_trip_replays_the_exam():
    params = sample_phantom_params(exam_seed(0, 5), phantom_config("default", size=64, p_positive=1.0))
    assert params.lesions
    text = json.dumps(params.to_dict())  # JSON-serialisable: only plain numbers, strings, lists, dicts
    again = PhantomParams.from_json(text)
    assert again == params
    hu1, m1 = render_phantom(params)
    hu2, m2 = render_phantom(again)
    assert hu1.tobytes() == hu2.tobytes() and m1.tobytes() == m2.tobytes()


def test_params_of_every_subtype_are_plain_json():
    cfg = phantom_config("default", size=64, p_positive=1.0, lesions_per_exam=(3, 3))
    for i in range(20):
        params = sample_phantom_params(exam_seed(1, i), cfg)
        assert PhantomParams.from_dict(json.loads(json.dumps(params.to_dict()))) == params
    assert {les.subtype for i in range(20) for les in sample_phantom_params(exam_seed(1, i), cfg).lesions} == set(
        SUBTYPES)


def test_params_unknown_field():
    d = sample_phantom_params(0, SMALL).to_dict()
    d["skul_mm"] = 3.0
    with pytest.raises(ValueError, match="unknown PhantomParams field 'skul_mm'.*did you mean 'skull_mm'"):
        PhantomParams.from_dict(d)


def test_exam_does_not_depend_on_dataset_size():
    three = list(make_phantoms(3, seed=7, cfg=SMALL))
    five = list(make_phantoms(5, seed=7, cfg=SMALL))
    assert [e[0] for e in five] == ["PH000000", "PH000001", "PH000002", "PH000003", "PH000004"]
    for (id_a, p_a, hu_a, m_a), (id_b, p_b, hu_b, m_b) in zip(three, five):
        assert id_a == id_b and p_a == p_b
        assert hu_a.tobytes() == hu_b.tobytes() and m_a.tobytes() == m_b.tobytes()
    (_, p_last, _, _), = make_phantoms(1, seed=7, cfg=SMALL, start=4)
    assert p_last == five[4][1] and exam_id_for(4) == five[4][0]


# ---------------------------------------------------------------- anatomy

def test_shapes_dtypes_and_codes():
    hu, mask = _render(1)
    assert hu.dtype == np.float32 and mask.dtype == np.uint8
    assert hu.shape == mask.shape and hu.shape[1:] == (64, 64) and 10 <= hu.shape[0] <= 12
    assert set(np.unique(mask)) <= set(range(len(SUBTYPES) + 1))


def test_anatomy_has_air_bone_brain_and_csf():
    cfg = phantom_config("default", size=128, n_slices=(30, 30), p_positive=0.0, calcification_p=0.0)
    hu, mask = render_phantom(sample_phantom_params(2, cfg))
    assert not mask.any()
    mid = hu[15]                                       # u = 0.52: lateral ventricle level
    assert np.median(mid[:8, 40:88]) < -900            # air above the head
    assert (mid > 700).mean() > 0.02                   # a skull ring
    centre = mid[40:88, 40:88]
    brain = centre[(centre > 15) & (centre < 50)]
    assert brain.size > 0.6 * centre.size              # mostly brain (grey and white matter)
    assert ((centre > -5) & (centre < 18)).mean() > 0.03  # CSF: ventricles, fissure
    head_area = (hu > -200).sum(axis=(1, 2))
    assert head_area[-1] < 0.6 * head_area[15] and head_area[0] < head_area[15]  # roughly ellipsoidal


def test_noise_level_and_correlation():
    cfg = phantom_config("default", size=256, n_slices=(2, 2), noise_hu=(4.0, 4.0), p_positive=0.0,
                         head_scale=(0.9, 0.9), max_shift_mm=0.0)
    hu, _ = render_phantom(sample_phantom_params(0, cfg))
    air = hu[:, 100:156, 2:20]                         # inside the field of view, beside the head
    assert np.all(np.abs(air.mean() + 1000) < 1.0)
    assert 3.5 < air.std() < 4.5
    a = air - air.mean()
    corr = (a[:, :, 1:] * a[:, :, :-1]).mean() / a.var()
    assert corr > 0.3                                  # spatially correlated, not white


@pytest.mark.parametrize("subtype", SUBTYPES)
def test_each_subtype_renders_as_blood_over_contiguous_slices(subtype):
    weights = tuple(1.0 if s == subtype else 0.0 for s in SUBTYPES)
    cfg = phantom_config("easy", size=64, n_slices=(16, 16), p_positive=1.0, lesions_per_exam=(1, 1),
                         subtype_weights=weights, lesion_size_mm=(25.0, 40.0), blood_hu=(80.0, 90.0))
    code = SUBTYPES.index(subtype) + 1
    for seed in range(3):
        params = sample_phantom_params(seed, cfg)
        assert [les.subtype for les in params.lesions] == [subtype]
        hu, mask = render_phantom(params)
        assert set(np.unique(mask)) == {0, code}
        rows = np.flatnonzero(mask.any(axis=(1, 2)))
        assert rows[-1] - rows[0] + 1 == rows.size     # one 3-D object: contiguous slices
        assert hu[mask == code].mean() > 55            # acute blood is bright


def test_mask_marks_blood_fraction_above_threshold():
    cfg = phantom_config("easy", size=64, n_slices=(12, 12), p_positive=1.0, noise_hu=(0.0, 0.0))
    params = sample_phantom_params(11, cfg)
    hu, mask = render_phantom(params)
    assert mask.any() and 0 < MASK_THRESHOLD < 1
    blood = min(les.hu for les in params.lesions)
    assert np.median(hu[mask > 0]) > blood - 30        # mostly blood where labelled


def test_default_prevalence_near_rsna():
    cfg = phantom_config("default", size=64)
    # exam prevalence from params alone (cheap): p_positive = 0.42, a few lesions fall between slices
    pos = np.mean([bool(sample_phantom_params(exam_seed(0, i), cfg).lesions) for i in range(400)])
    assert 0.35 < pos < 0.5
    n_pos = n_all = 0
    for _, _, _, mask in make_phantoms(30, seed=0, cfg=cfg):
        lab = mask.any(axis=(1, 2))
        n_pos, n_all = n_pos + lab.sum(), n_all + lab.size
    assert 0.1 < n_pos / n_all < 0.25                 # RSNA: 14% of slices; ours ~20% (bleeds large enough for 128 px)


# ---------------------------------------------------------------- store fast path

def test_tiny_dataset_fixture(tiny_dataset):
    import ich

    ds = ich.open_dataset(tiny_dataset)
    summary = ds.summary()
    assert summary["exams"] == 24 and summary["source"] == "phantom" and summary["size"] == 64
    assert 0 < summary["positive_exams"] < 24 and summary["exams_with_masks"] == 24
    assert ds.exams["n_slices"].between(8, 12).all()
    assert ds.meta["report"]["difficulty"] == "easy" and ds.meta["report"]["seed"] == 0
    # the cache holds the rendered exam, rounded to whole HU
    cfg = PhantomConfig.from_dict(ds.meta["report"]["config"])
    hu, mask = render_phantom(sample_phantom_params(exam_seed(0, 3), cfg))
    np.testing.assert_array_equal(ds.load_raw("PH000003"), np.clip(np.rint(hu), -1024, 3071).astype(np.int16))
    np.testing.assert_array_equal(ds.load_mask("PH000003"), mask)
    rows = ds.exam_slices("PH000003")
    np.testing.assert_array_equal(rows["label"].to_numpy(dtype=int), mask.any(axis=(1, 2)).astype(int))


def test_write_phantom_dataset_refuses_existing_folder(tiny_dataset):
    with pytest.raises(FileExistsError, match="already exists and holds an ich dataset"):
        write_phantom_dataset(tiny_dataset, 2, seed=0)


def test_config_replace_keeps_validation():
    with pytest.raises(ValueError, match="noise_hu, max_rotation_deg and max_shift_mm must not be negative"):
        dataclasses.replace(PhantomConfig(), noise_hu=(-1.0, 2.0))
