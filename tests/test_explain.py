"""Tests of ich.explain: Captum maps on toy models with known answers, exam-level importance, map scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ich.explain import (METHODS, explain_exam, explain_slices, gradcam_layer, heat_colors, overlay, resize_maps,
                         score_map, slice_ablation)
from ich.metrics import pointing_game
from ich.models import AttentionPool, MILModel, build_model

SIZE = 32
WINDOW = (slice(4, 16), slice(4, 16))       # the only region the toy encoder looks at
LESION = (slice(8, 12), slice(8, 12))       # a bright square inside the window
DISTRACTOR = (slice(20, 26), slice(20, 26))  # an equally bright square outside the window


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class WindowEncoder(nn.Module):
    """Embedding = mean of relu(x - 0.5) inside a fixed window: only bright pixels in the window matter.

    ``stage3`` (a 1x1 conv + ReLU on the windowed image) is where Grad-CAM reads, as in the compact encoder.
    """

    def __init__(self, embed_dim: int = 2):
        super().__init__()
        window = torch.zeros(1, 1, SIZE, SIZE)
        window[(0, 0) + WINDOW] = 1.0
        self.register_buffer("window", window)
        conv = nn.Conv2d(1, 1, 1)
        with torch.no_grad():
            conv.weight.fill_(1.0)
            conv.bias.fill_(-0.5)
        self.stage3 = nn.Sequential(conv, nn.ReLU())
        self.proj = nn.Linear(1, embed_dim)
        with torch.no_grad():
            self.proj.weight.fill_(1.0)
            self.proj.bias.zero_()

    def forward(self, x):
        f = self.stage3(x * self.window)            # (N, 1, H, W), zero outside the window
        return self.proj(f.mean(dim=(2, 3)) * 100)  # (N, D)


def toy_model(attention_scale: float = 50.0) -> MILModel:
    """A MIL model whose slice logit is 2 * embedding sum - 1 and whose sparsemax attends to bright slices only."""
    pool = AttentionPool(embed_dim=2, attention_dim=1, dropout=0.0, activation="sparsemax")
    model = MILModel(WindowEncoder(), pool, embed_dim=2, embedding_dropout=0.0)
    with torch.no_grad():
        pool.V.weight.fill_(1.0)
        pool.V.bias.zero_()
        pool.w.weight.fill_(attention_scale)
        pool.w.bias.zero_()
        model.head.weight.fill_(1.0)
        model.head.bias.fill_(-1.0)
    return model.eval()


def toy_slices(n: int = 3, lesion_slices=(0,)) -> torch.Tensor:
    """(n, 1, SIZE, SIZE): grey background, a distractor everywhere, the lesion on ``lesion_slices``."""
    x = torch.full((n, 1, SIZE, SIZE), 0.2)
    x[(slice(None), 0) + DISTRACTOR] = 1.0
    for s in lesion_slices:
        x[(s, 0) + LESION] = 1.0
    return x


def region(sl) -> np.ndarray:
    m = np.zeros((SIZE, SIZE), dtype=bool)
    m[sl] = True
    return m


# ------------------------------------------------------------------------------ known answers
@pytest.mark.parametrize("method", ["gradcam", "ig", "saliency", "occlusion"])
def test_hottest_pixel_lies_in_the_lesion_the_toy_model_uses(method):
    model = toy_model()
    maps = explain_slices(model, toy_slices(2, lesion_slices=(0, 1)), method=method, window=4, stride=2)
    assert maps.shape == (2, SIZE, SIZE) and maps.dtype == np.float32
    for m in maps:
        assert pointing_game(m, region(LESION))
        assert not pointing_game(m, region(DISTRACTOR))
        assert np.abs(m[region(DISTRACTOR)]).max() == 0


def test_gradcam_and_ig_localise_only_the_lesion():
    model = toy_model()
    x = toy_slices(1)
    for method in ("gradcam", "ig"):
        m = explain_slices(model, x, method=method)[0]
        assert score_map(m, region(LESION).astype(np.uint8))["dice_mask"] > 0.6, method


def test_ig_delta_is_the_completeness_gap():
    model = toy_model()
    x = toy_slices(2, lesion_slices=(0,))
    maps, delta = explain_slices(model, x, method="ig", n_steps=16, return_delta=True)
    with torch.no_grad():
        gap = (model.slice_logits(x) - model.slice_logits(torch.zeros_like(x))).numpy()
    np.testing.assert_allclose(maps.reshape(2, -1).sum(axis=1) - gap, delta, atol=1e-4)
    assert np.abs(delta[0]) < 0.05 * abs(gap[0])


def test_delta_is_nan_for_methods_without_one():
    _, delta = explain_slices(toy_model(), toy_slices(2), method="gradcam", return_delta=True)
    assert delta.shape == (2,) and np.isnan(delta).all()


# ------------------------------------------------------------------------------ chunking and modes
@pytest.mark.parametrize("method", ["gradcam", "ig", "saliency", "occlusion"])
def test_chunked_and_unchunked_runs_agree(method):
    torch.manual_seed(0)
    from ich.config import ModelConfig

    model = build_model(ModelConfig(width=8, embed_dim=8, attention_dim=4), in_channels=2).eval()
    x = torch.rand(5, 2, 32, 32)
    kw = dict(method=method, n_steps=8, window=8, stride=8)
    whole = explain_slices(model, x, batch_size=5, internal_batch_size=None, **kw)
    chunks = explain_slices(model, x, batch_size=2, internal_batch_size=3, **kw)
    single = np.concatenate([explain_slices(model, x[i:i + 1], **kw) for i in range(5)])
    scale = np.abs(whole).max()
    assert scale > 0
    np.testing.assert_allclose(chunks, whole, atol=1e-4 * scale)
    np.testing.assert_allclose(single, whole, atol=1e-4 * scale)


def test_runs_in_fp32_eval_mode_and_restores_the_training_flag():
    torch.manual_seed(0)
    from ich.config import ModelConfig

    model = build_model(ModelConfig(width=8, embed_dim=8, attention_dim=4), in_channels=1)
    x = torch.rand(3, 1, 32, 32)
    ref = explain_slices(model.eval(), x, method="saliency")
    model.train()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = explain_slices(model, x, method="saliency")
    assert model.training
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)


def test_gradcam_works_when_every_parameter_is_frozen():
    model = toy_model()
    for p in model.parameters():
        p.requires_grad_(False)
    m = explain_slices(model, toy_slices(1), method="gradcam")[0]
    assert pointing_game(m, region(LESION))


def test_random_control_is_seeded():
    x = toy_slices(2)
    a = explain_slices(toy_model(), x, method="random", seed=3)
    b = explain_slices(toy_model(), x, method="random", seed=3)
    c = explain_slices(toy_model(), x, method="random", seed=4)
    assert a.shape == (2, SIZE, SIZE)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_gradcam_layer_of_the_registered_encoders():
    from ich.config import ModelConfig

    compact = build_model(ModelConfig(width=8, embed_dim=8), in_channels=1)
    assert gradcam_layer(compact) is compact.encoder.stage3
    resnet = build_model(ModelConfig(encoder="resnet18", embed_dim=8), in_channels=1)
    assert gradcam_layer(resnet) is resnet.encoder.net.layer4
    maps = explain_slices(resnet.eval(), torch.rand(2, 1, 64, 64), method="gradcam")
    assert maps.shape == (2, 64, 64) and (maps >= 0).all()


def test_gradcam_layer_falls_back_to_the_last_conv():
    encoder = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = MILModel(encoder, AttentionPool(embed_dim=4), embed_dim=4).eval()
    assert gradcam_layer(model) is encoder[2]
    assert explain_slices(model, toy_slices(2), method="gradcam").shape == (2, SIZE, SIZE)


def test_gradcam_needs_a_convolution():
    model = MILModel(nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 2)), AttentionPool(embed_dim=2),
                     embed_dim=2)
    with pytest.raises(ValueError, match="Grad-CAM needs a convolutional encoder"):
        explain_slices(model, toy_slices(1), method="gradcam")


# ------------------------------------------------------------------------------ exam level
def test_exam_target_gives_blank_maps_where_sparsemax_gives_zero_attention():
    model = toy_model()
    x = toy_slices(4, lesion_slices=(2,))
    x[(1, 0) + LESION] = 0.7                 # a faint lesion: evidence for the slice head, outscored in the pool
    imp = explain_exam(model, x)
    assert imp["attention"][2] == pytest.approx(1.0)
    assert (imp["attention"][[0, 1, 3]] == 0).all()
    for method in ("saliency", "ig", "gradcam"):
        maps = explain_slices(model, x, method=method, target="exam", n_steps=8)
        assert maps.shape == (4, SIZE, SIZE)
        assert (maps[[0, 1, 3]] == 0).all(), method
        assert np.abs(maps[2]).max() > 0, method
    # the slice target still explains the unattended faint lesion through the head
    assert imp["slice_logits"][1] > imp["slice_logits"][0]
    assert pointing_game(explain_slices(model, x, method="saliency")[1], region(LESION))


def test_slice_ablation_matches_removing_each_slice():
    torch.manual_seed(1)
    from ich.config import ModelConfig

    model = build_model(ModelConfig(width=8, embed_dim=8, attention_dim=4, attention_activation="softmax"),
                        in_channels=1).eval()
    x = torch.rand(5, 1, 32, 32)
    got = slice_ablation(model, x.unsqueeze(0))
    with torch.no_grad():
        full = model(x.unsqueeze(0)).logit.item()
        want = [full - model(torch.cat([x[:i], x[i + 1:]]).unsqueeze(0)).logit.item() for i in range(5)]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_slice_ablation_of_the_toy_exam():
    model = toy_model()
    abl = slice_ablation(model, toy_slices(3, lesion_slices=(1,)))
    assert abl[1] > 0.5
    np.testing.assert_allclose(abl[[0, 2]], 0.0, atol=1e-6)


# ------------------------------------------------------------------------------ scores
def _disc(cy, cx, r, size=48) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2).astype(np.uint8)


def test_score_map_of_a_perfect_map():
    mask = _disc(20, 24, 6) * 3            # subtype codes count as lesion
    s = score_map(mask.astype(float), mask)
    assert s["dice_mask"] == 1.0 and s["pointing"] == 1.0 and s["lesion_pixels"] == int((mask > 0).sum())
    # the reference's box is one pixel short of the bounding box on the far side of each axis
    rows, cols = np.flatnonzero((mask > 0).any(1)), np.flatnonzero((mask > 0).any(0))
    box = np.zeros(mask.shape, bool)
    box[rows[0]:rows[-1], cols[0]:cols[-1]] = True
    lesion = mask > 0
    assert s["dice_boxes"] == pytest.approx(2 * (lesion & box).sum() / (lesion.sum() + box.sum()))
    assert s["dice_boxes"] < 1.0


def test_score_map_of_a_map_hot_elsewhere():
    mask = _disc(20, 24, 6)
    s = score_map(_disc(40, 8, 4).astype(float), mask)
    assert s["dice_mask"] == 0.0 and s["dice_boxes"] == 0.0 and s["pointing"] == 0.0


def test_score_map_without_lesion_is_nan():
    s = score_map(np.random.default_rng(0).random((16, 16)), np.zeros((16, 16)))
    assert np.isnan(s["dice_mask"]) and np.isnan(s["pointing"]) and s["lesion_pixels"] == 0


def test_score_map_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        score_map(np.zeros((8, 8)), np.zeros((8, 9)))


def test_resize_maps():
    a = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    np.testing.assert_array_equal(resize_maps(a, 4), a)
    b = resize_maps(a, (8, 8))
    assert b.shape == (2, 8, 8) and b.dtype == np.float32
    assert b[0].mean() == pytest.approx(a[0].mean(), rel=1e-5)


# ------------------------------------------------------------------------------ pictures
def test_overlay_draws_heat_and_outline():
    img = np.full((16, 16), 0.5, np.float32)
    heat = np.zeros((16, 16), np.float32)
    heat[2:4, 2:4] = 1.0
    mask = np.zeros((16, 16), np.uint8)
    mask[8:12, 8:12] = 1
    rgb = overlay(img, heat, mask)
    assert rgb.shape == (16, 16, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (128, 128, 128)                 # untouched grey
    assert rgb[2, 2, 0] > rgb[2, 2, 2]                          # hot: red over blue
    assert tuple(rgb[8, 8]) == (0, 255, 0)                      # outline
    assert tuple(rgb[10, 10]) == (128, 128, 128)                # inside the outline stays grey
    np.testing.assert_allclose(heat_colors(np.array([0.0, 0.5, 1.0])), [[0, 0, 0], [1, 0, 0], [1, 1, 0]])


def test_overlay_wrong_shape():
    with pytest.raises(ValueError, match="same shape"):
        overlay(np.zeros((4, 4)), np.zeros((4, 5)))


# ------------------------------------------------------------------------------ bad input
def test_unknown_method():
    with pytest.raises(ValueError, match="did you mean 'gradcam'"):
        explain_slices(toy_model(), toy_slices(1), method="gradcm")
    assert "random" in METHODS


def test_unknown_target():
    with pytest.raises(ValueError, match="target must be one of"):
        explain_slices(toy_model(), toy_slices(1), target="bag")


def test_wrong_slice_shape():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        explain_slices(toy_model(), torch.rand(SIZE, SIZE))


def test_integer_slices_are_refused():
    with pytest.raises(ValueError, match="floating point"):
        explain_slices(toy_model(), torch.zeros(1, 1, SIZE, SIZE, dtype=torch.int16))


def test_occlusion_of_the_exam_logit_is_refused():
    with pytest.raises(ValueError, match="slice_ablation"):
        explain_slices(toy_model(), toy_slices(2), method="occlusion", target="exam")


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        explain_slices(toy_model(), toy_slices(1), batch_size=0)


def test_bag_with_two_exams_is_refused():
    with pytest.raises(ValueError, match="one exam"):
        slice_ablation(toy_model(), torch.rand(2, 3, 1, SIZE, SIZE))


def test_explain_exam_in_bf16_matches_fp32():
    """The encoder pass may run in bf16 as predict does; pooling, head and ablation stay float32."""
    model = toy_model()
    x = toy_slices(4, lesion_slices=(2,))
    a, b = explain_exam(model, x), explain_exam(model, x, precision="bf16")
    assert b["exam_logit"] == pytest.approx(a["exam_logit"], rel=0.02, abs=0.05)
    for key in ("attention", "slice_logits", "ablation"):
        assert b[key].dtype == np.float32
        np.testing.assert_allclose(b[key], a[key], rtol=0.02, atol=0.05)
