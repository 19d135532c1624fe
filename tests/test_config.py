"""Tests for ich.config: validation messages, presets, JSON round trip, overrides."""

import dataclasses

import pytest

from ich.config import (PRESETS, DataConfig, ModelConfig, RunConfig, TrainConfig, make_config, parse_value,
                        preset_dict, with_overrides)


def test_defaults_round_trip_json():
    cfg = make_config("data/x", supervision="strong", budget=40, seed=3)
    again = RunConfig.from_json(cfg.to_json())
    assert again == cfg
    assert isinstance(again.data.windows, tuple)
    assert again.train.budget == 40 and again.seed == 3 and again.in_channels == 1


@pytest.mark.parametrize("preset", ["tiny", "default"])
@pytest.mark.parametrize("supervision", ["weak", "strong", "mixed"])
def test_presets_build(preset, supervision):
    cfg = make_config("d", preset=preset, supervision=supervision, budget=50)
    assert cfg.preset == preset and cfg.train.supervision == supervision


def test_reference_preset_resolves_per_supervision_and_budget():
    over = {"model.init": "imagenet:/w/resnet18.pth"}
    weak = make_config("d", preset="reference", supervision="weak", budget=100, overrides=over)
    strong = make_config("d", preset="reference", supervision="strong", budget=5000, overrides=over)
    full = make_config("d", preset="reference", supervision="weak", budget=None, overrides=over)
    assert (weak.train.optimizer, weak.train.lr, weak.train.momentum) == ("sgd", 1e-3, 0.9)
    assert (strong.train.optimizer, strong.train.lr, strong.train.weight_decay) == ("adam", 1e-5, 1e-7)
    assert weak.train.val_every == 16 and strong.train.val_every == 1 and weak.train.patience == 4
    assert full.train.epochs == 15 and full.train.patience is None
    assert weak.model.finetune == "partial" and weak.model.encoder == "resnet18"
    assert weak.train.sampling == "reference" and weak.train.schedule == "step"
    assert weak.data.input_size is None and weak.data.windows == ("brain",)


def test_reference_preset_without_weights_says_how_to_fix():
    with pytest.raises(ValueError, match="--init imagenet:PATH"):
        make_config("d", preset="reference")


def test_unknown_key_did_you_mean():
    with pytest.raises(ValueError, match=r"unknown config key 'train.lrr'.*did you mean 'train.lr'"):
        RunConfig.from_dict({"train": {"lrr": 0.1}})
    with pytest.raises(ValueError, match=r"did you mean 'model'"):
        RunConfig.from_dict({"modle": {}})
    with pytest.raises(ValueError, match=r"did you mean 'train'"):
        make_config("d", overrides={"trian.lr": 0.1})


@pytest.mark.parametrize("section,key,value,match", [
    ("model", "pooling", "atention", r"\['attention', 'gated_attention', 'mean', 'max'\].*did you mean 'attention'"),
    ("model", "encoder", "resnet", r"must be one of \['compact', 'resnet18'\]"),
    ("model", "attention_activation", "entmax", r"sparsemax.*softmax"),
    ("model", "embedding_dropout", 1.0, r"in \[0, 1\)"),
    ("train", "supervision", "semi", r"\['weak', 'strong', 'mixed'\]"),
    ("train", "budget", 0, r"train.budget must be >= 1"),
    ("train", "budget", 2.5, r"train.budget must be an integer"),
    ("train", "sampling", "ratio", r"\['prevalence', 'reference'\]"),
    ("train", "lr", -1.0, r"train.lr must be > 0"),
    ("train", "optimizer", "adamw2", r"did you mean 'adamw'"),
    ("data", "windows", ["brain", "blood"], r"\['brain', 'subdural', 'bone'\]"),
    ("data", "input_size", 8, r"input_size must be >= 16"),
])
def test_bad_values_name_the_options(section, key, value, match):
    with pytest.raises(ValueError, match=match):
        RunConfig.from_dict({section: {key: value}})


def test_cross_field_rules():
    with pytest.raises(ValueError, match="--finetune all"):
        ModelConfig(finetune="none")
    with pytest.raises(ValueError, match="--encoder resnet18"):
        ModelConfig(init="imagenet:/x.pth")
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        TrainConfig(supervision="mixed", budget=10, slice_fraction=1.0)
    with pytest.raises(ValueError, match="resnet18 encoder takes 1 window"):
        RunConfig(data=DataConfig(windows=("brain", "bone")), model=ModelConfig(encoder="resnet18"))


def test_frozen_and_overrides():
    cfg = make_config("d")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0
    new = with_overrides(cfg, {"train.lr": 3e-4, "seed": 5, "data.windows": ["brain", "subdural"]})
    assert new.train.lr == 3e-4 and new.seed == 5 and new.in_channels == 2 and cfg.train.lr != 3e-4
    assert parse_value("3e-4") == 3e-4 and parse_value("null") is None and parse_value("sgd") == "sgd"
    assert parse_value('["brain","bone"]') == ["brain", "bone"]


def test_presets_are_plain_data():
    assert set(PRESETS) == {"tiny", "default", "reference"}
    with pytest.raises(ValueError, match=r"preset must be one of \['tiny', 'default', 'reference'\]"):
        preset_dict("fast")
