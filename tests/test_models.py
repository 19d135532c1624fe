"""Contract tests for ich.models: every pooling, both encoders, freezing, encoder files."""

import pytest
import torch

from ich.config import ModelConfig, RunConfig, DataConfig
from ich.models import (ENCODERS, POOLINGS, MILModel, MILOutput, build_encoder, build_model, freeze_encoder,
                        load_encoder, load_imagenet_resnet18, read_encoder_meta, save_encoder, state_checksum)

POOL_VARIANTS = [("attention", "sparsemax"), ("attention", "softmax"), ("gated_attention", "sparsemax"),
                 ("gated_attention", "softmax"), ("mean", "sparsemax"), ("max", "sparsemax")]


def tiny_model(pooling="attention", activation="sparsemax", **kw) -> MILModel:
    torch.manual_seed(0)
    mc = ModelConfig(width=8, embed_dim=16, attention_dim=8, pooling=pooling, attention_activation=activation, **kw)
    return build_model(mc, in_channels=1)


def bags(B=2, S=5, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, S, 1, size, size, generator=g)


def test_registries_cover_the_config_options():
    from ich.config import ENCODER_NAMES, POOLING_NAMES
    assert set(ENCODERS) == set(ENCODER_NAMES) and set(POOLINGS) == set(POOLING_NAMES)


@pytest.mark.parametrize("pooling,activation", POOL_VARIANTS)
def test_pooling_contract(pooling, activation):
    model = tiny_model(pooling, activation).eval()
    x = bags(B=3, S=6)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4], dtype=torch.bool)
    out = model(x, mask)
    assert isinstance(out, MILOutput)
    assert out.logit.shape == (3,) and out.slice_logits.shape == (3, 6) and out.attention.shape == (3, 6)
    for t in out:
        assert torch.isfinite(t).all() and t.dtype == torch.float32
    torch.testing.assert_close(out.attention.sum(dim=1), torch.ones(3))        # rows sum to 1
    assert (out.attention >= 0).all() and (out.attention[~mask] == 0).all()   # padding gets nothing
    assert (out.slice_logits[~mask] == 0).all()

    # variable slice counts: a padded exam scores exactly like the exam alone
    alone = model(x[1:2, :4])
    torch.testing.assert_close(alone.logit, out.logit[1:2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(alone.attention, out.attention[1:2, :4], rtol=1e-5, atol=1e-5)

    # permutation invariance of the exam logit; attention and slice logits follow the slices
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    permuted = model(x[:1, perm])
    torch.testing.assert_close(permuted.logit, out.logit[:1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(permuted.attention, out.attention[:1, perm], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(permuted.slice_logits, out.slice_logits[:1, perm], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pooling,activation", POOL_VARIANTS)
def test_every_trainable_parameter_gets_a_gradient(pooling, activation):
    model = tiny_model(pooling, activation, embedding_dropout=0.0, attention_dropout=0.0).train()
    x = bags(B=2, S=5)
    mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2], dtype=torch.bool)
    out = model(x, mask)
    (out.logit.sum() + out.slice_logits.sum()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
    assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.startswith("pooling."))\
        or pooling in ("mean", "max")


def test_sparsemax_gives_exact_zeros_softmax_does_not():
    torch.manual_seed(0)
    h = torch.randn(1, 8, 16)
    mask = torch.ones(1, 8, dtype=torch.bool)
    for activation, expect_zero in (("sparsemax", True), ("softmax", False)):
        pool = POOLINGS["attention"](ModelConfig(embed_dim=16, attention_dim=8, attention_dropout=0.0,
                                                 attention_activation=activation))
        with torch.no_grad():   # widely spread scores: score_i = 10 * h_i0 (through tanh of a scaled V)
            pool.V.weight.zero_(); pool.V.bias.zero_(); pool.V.weight[0, 0] = 1.0
            pool.w.weight.zero_(); pool.w.weight[0, 0] = 10.0
        _, a = pool(h, mask)
        assert bool((a == 0).any()) is expect_zero
        torch.testing.assert_close(a.sum(), torch.tensor(1.0))


def test_single_slice_bag_gets_all_attention():
    model = tiny_model().eval()
    out = model(bags(B=1, S=1))
    assert out.attention.item() == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["compact", "resnet18"])
@pytest.mark.parametrize("channels", [1, 3])
def test_encoders_shapes(name, channels):
    enc = build_encoder(name, in_channels=channels, embed_dim=24, width=8)
    out = enc(torch.rand(2, channels, 64, 64))
    assert out.shape == (2, 24) and torch.isfinite(out).all()


def test_compact_meanmax_pooling_keeps_a_small_finding_visible():
    """One bright 8x8 px spot on a 128 px slice moves the max half of the embedding far more than the mean half."""
    torch.manual_seed(0)
    enc = build_encoder("compact", embed_dim=16, width=8).eval()
    assert enc.pool == "meanmax" and enc.proj.out_features == 8
    x = torch.full((1, 1, 128, 128), 0.4)
    y = x.clone()
    y[..., 60:68, 60:68] = 1.0
    with torch.no_grad():
        d = (enc(y) - enc(x)).abs()[0]                                    # (16,) = mean half, max half
    assert d[8:].sum() > 5 * d[:8].sum()
    mean_only = build_encoder("compact", embed_dim=15, width=8, pool="mean")
    assert mean_only(x).shape == (1, 15)
    with pytest.raises(ValueError, match="even embed_dim"):
        build_encoder("compact", embed_dim=15, width=8)
    with pytest.raises(ValueError, match="pool must be one of"):
        build_encoder("compact", width=8, pool="sum")


def test_resnet18_refuses_other_channel_counts():
    with pytest.raises(ValueError, match="1 or 3 input channels"):
        build_encoder("resnet18", in_channels=2)
    with pytest.raises(ValueError, match="encoder must be one of"):
        build_encoder("vit")


def test_partial_freezing_follows_the_reference():
    enc = build_encoder("resnet18", in_channels=1, embed_dim=8)
    freeze_encoder(enc, "partial")
    frozen = {n for n, p in enc.named_parameters() if not p.requires_grad}
    assert "net.conv1.weight" in frozen and "net.layer2.1.bn2.bias" in frozen
    assert "net.bn1.weight" not in frozen and "net.layer3.0.conv1.weight" not in frozen and "net.fc.weight" not in frozen
    compact = build_encoder("compact", width=8)
    freeze_encoder(compact, "partial")
    assert {n.split(".")[0] for n, p in compact.named_parameters() if not p.requires_grad} == {"stem", "stage1"}
    freeze_encoder(compact, "none")
    assert not any(p.requires_grad for p in compact.parameters())


def test_encoder_file_round_trip(tmp_path):
    enc = build_encoder("compact", in_channels=3, embed_dim=16, width=8).eval()
    path = save_encoder(tmp_path / "enc.pt", enc, {"windows": ["brain", "subdural", "bone"], "input_size": 64,
                                                   "method": "simclr", "epochs": 3})
    loaded, meta = load_encoder(path)
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x), enc(x))
    assert meta["kind"] == "ich-encoder" and meta["encoder"] == "compact" and meta["in_channels"] == 3
    assert meta["embed_dim"] == 16 and meta["windows"] == ["brain", "subdural", "bone"] and meta["method"] == "simclr"
    assert meta["checksum"] == state_checksum(enc) and "state_dict" not in meta
    assert "state_dict" in read_encoder_meta(path)


def test_encoder_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="ich pretrain"):
        load_encoder(tmp_path / "missing.pt")
    torch.save({"kind": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an ich encoder file"):
        load_encoder(tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"must include \['input_size'\]"):
        save_encoder(tmp_path / "e.pt", build_encoder("compact", width=8), {"windows": ["brain"]})


def test_build_model_from_encoder_file_checks_the_config(tmp_path):
    enc = build_encoder("compact", in_channels=1, embed_dim=16, width=8)
    path = save_encoder(tmp_path / "enc.pt", enc, {"windows": ["brain"], "input_size": 64})
    mc = ModelConfig(width=8, embed_dim=16, init=str(path), finetune="none")
    model = build_model(mc, in_channels=1)
    assert state_checksum(model.encoder) == state_checksum(enc)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.pooling.parameters()) and model.head.weight.requires_grad
    with pytest.raises(ValueError, match=r"embed_dim: file 16 vs config 32"):
        build_model(ModelConfig(width=8, embed_dim=32, init=str(path), finetune="none"), in_channels=1)


def test_imagenet_weights_from_a_local_file(tmp_path):
    import torchvision
    ref = torchvision.models.resnet18(weights=None)
    torch.save(ref.state_dict(), tmp_path / "resnet18.pth")
    cfg = RunConfig(data=DataConfig(windows=("brain",)),
                    model=ModelConfig(encoder="resnet18", embed_dim=8, init=f"imagenet:{tmp_path / 'resnet18.pth'}",
                                      finetune="partial"))
    model = build_model(cfg)
    torch.testing.assert_close(model.encoder.net.conv1.weight, ref.conv1.weight)
    assert not model.encoder.net.layer1[0].conv1.weight.requires_grad
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not look like a torchvision resnet18"):
        load_imagenet_resnet18(tmp_path / "bad.pth", build_encoder("resnet18"))
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_imagenet_resnet18(tmp_path / "none.pth", build_encoder("resnet18"))


def test_slice_logits_match_the_bag_path():
    model = tiny_model().eval()
    x = bags(B=1, S=4)
    torch.testing.assert_close(model.slice_logits(x[0]), model(x).slice_logits[0], rtol=1e-5, atol=1e-5)
