"""The one recipe: every entry point (CLI train/study, presets, Train page, Home) resolves the same configs."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from ich import recipe
from ich.config import make_config
from ich.study import cell_config, make_study, plan_cells, resolve_study

REPO = Path(__file__).resolve().parents[1]


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse ``python -m ich`` arguments with the real CLI parser."""
    from ich.cli import build_parser

    return build_parser().parse_args(argv)


@pytest.fixture
def encoder(tmp_path):
    import torch

    from ich.models import build_encoder, save_encoder

    torch.manual_seed(0)
    return save_encoder(tmp_path / "enc.pt", build_encoder("compact", in_channels=1, embed_dim=32, width=16),
                        {"windows": ["brain"], "input_size": 64})


def test_fairness_settings_are_the_same_for_every_arm(tiny_dataset):
    weak = recipe.run_config(str(tiny_dataset), supervision="weak", budget=48)
    strong = recipe.run_config(str(tiny_dataset), supervision="strong", budget=48)
    for key in recipe.FAIRNESS_KEYS:
        section, name = key.split(".")
        assert getattr(getattr(weak, section), name) == getattr(getattr(strong, section), name), key
    assert weak.train.steps_per_epoch == 64 and weak.train.validation == "paid"


@pytest.mark.parametrize("request_", [
    dict(supervision="weak", budget=24, seed=3),
    dict(supervision="mixed", budget=40, seed=1, slice_fraction=0.25, overrides={"train.lr": 3e-4}),
    dict(supervision="strong", budget=None, seed=0, overrides={"train.lr_factors": [1.0, 2.0],
                                                               "train.validation": "free", "train.patience": 3}),
])
def test_train_argv_resolves_to_the_same_config(tiny_dataset, encoder, tmp_path, request_):
    from ich.commands.train import build_config

    request_ = {**request_, "init": str(encoder)}
    cfg = recipe.run_config(str(tiny_dataset), **request_)
    argv = recipe.train_argv(str(tiny_dataset), tmp_path / "run", **request_)
    assert build_config(parse(argv)) == cfg


@pytest.mark.parametrize("fields", [
    dict(),
    dict(supervisions=["weak", "strong", "mixed"], budgets=[4, 8], seeds=[5], slice_fractions=[0.25, 0.5],
         overrides={"train.epochs": 2, "train.lr_factors": [1.0]}, name="mine", finetune="none"),
    dict(label_noise=["", "exam=0.9/0.97", "exam=0.8/0.8,slice=0.9/1"]),
    dict(acquisition=["random", "coreset"], label_noise=["", "exam=0.9/0.9"], overrides={"train.rounds": 4}),
    dict(acquisition=["random", "attention"], overrides={"train.guide_exams": 12}),
])
def test_study_argv_resolves_to_the_same_spec(tiny_dataset, tmp_path, fields):
    from ich.commands.study import build_spec

    spec = make_study("quick", dataset=str(tiny_dataset), **fields)
    assert build_spec(parse(recipe.study_argv(spec, tmp_path / "s"))) == spec


def test_train_cli_and_study_cells_share_the_recipe(tiny_dataset, encoder):
    spec, _ = resolve_study(make_study("quick", dataset=str(tiny_dataset), init=str(encoder)))
    for cell in plan_cells(spec)[:4]:
        assert cell_config(spec, cell) == recipe.run_config(
            spec.dataset, supervision=cell.supervision, budget=cell.budget, seed=cell.seed, init=str(encoder),
            finetune="none")


def test_a_noisy_cell_is_a_train_run_with_the_same_label_noise(tiny_dataset, encoder):
    from ich.commands.train import build_config

    spec, _ = resolve_study(make_study("quick", dataset=str(tiny_dataset), init=str(encoder),
                                       label_noise=["clean", "exam=0.9/0.97"]))
    cell = next(c for c in plan_cells(spec) if c.arm == "weak-exam-sens90-spec97")
    argv = recipe.train_argv(spec.dataset, "out", supervision="weak", budget=cell.budget, seed=cell.seed,
                             init=str(encoder), finetune="none") + ["--label-noise", "exam=0.90/0.970"]
    assert cell_config(spec, cell) == build_config(parse(argv))
    assert cell_config(spec, cell).train.label_noise == "exam=0.9/0.97"


def test_unknown_override_names_the_key(tiny_dataset):
    with pytest.raises(ValueError, match="did you mean 'train.patience'"):
        recipe.run_config(str(tiny_dataset), overrides={"train.patiense": 3})


def test_reference_preset_keeps_the_free_validation_split(tiny_dataset):
    cfg = make_config(str(tiny_dataset), preset="reference", supervision="weak", budget=24,
                      overrides={"model.init": "imagenet:weights.pth"})
    assert cfg.train.validation == "free" and cfg.train.lr_factors == (1.0,)


@pytest.fixture
def app_root(tmp_path, monkeypatch, tiny_dataset, encoder):
    """A data root with the tiny dataset and its auto encoder (so init=auto needs no pretraining)."""
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root / "datasets" / "tiny")
    from ich.study import default_encoder_path

    auto = default_encoder_path(root / "datasets" / "tiny")
    auto.parent.mkdir(parents=True)
    shutil.copy(encoder, auto)
    monkeypatch.setenv("ICH_DATA", str(root))
    monkeypatch.chdir(REPO)
    main = sys.modules["__main__"]
    yield root
    sys.modules["__main__"] = main


@pytest.mark.slow
def test_quick_study_and_train_page_grid_write_the_same_aucs(app_root, tmp_path):
    """Done-when of the recipe issue: the quick preset and a Train-page grid with the same arms, budgets, seeds
    and encoder train the same cells and write the same summary.csv AUCs."""
    from streamlit.testing.v1 import AppTest

    from ich.cli import main
    from ich.study import default_encoder_path

    assert default_encoder_path(app_root / "datasets" / "tiny").is_file()   # init=auto needs no pretraining
    dataset = str(app_root / "datasets" / "tiny")
    at = AppTest.from_file(str(REPO / "pages" / "2_Train.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    at.radio(key="train_mode").set_value("study grid (budgets x seeds)")
    at.text_input(key="train_budgets").set_value("4,8")
    at.number_input(key="train_seeds").set_value(1)
    at.number_input(key="train_epochs").set_value(2)
    at.text_input(key="train_factors").set_value("1")
    at.number_input(key="train_steps").set_value(4)
    at.run()
    assert not at.exception, at.exception
    import shlex

    page_argv = shlex.split(at.code[0].value)[3:]          # drop "python -m ich"
    page_out = tmp_path / "page-grid"
    page_argv[page_argv.index("--out") + 1] = str(page_out)

    quick = make_study("quick", dataset=dataset, budgets=[4, 8], seeds=[0], overrides={"train.epochs": 2, "train.lr_factors": [1.0],
                                                                                  "train.steps_per_epoch": 4})
    quick_out = tmp_path / "quick"
    assert main(recipe.study_argv(quick, quick_out) + ["--executor", "inline", "--quiet"]) == 0
    assert main(page_argv + ["--executor", "inline", "--quiet"]) == 0
    a = pd.read_csv(quick_out / "summary.csv")
    b = pd.read_csv(page_out / "summary.csv")
    cols = ["row", "arm", "budget", "seed", "exam_auc", "validation", "train_labels", "val_labels"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    assert a["exam_auc"].notna().any()


def test_changed_settings_keep_only_what_differs_from_the_recipe():
    assert recipe.changed_settings({"train.steps_per_epoch": 64, "train.lr_factors": [0.3, 1.0, 3.0],
                                    "train.lr": 3e-4, "model.attention_activation": "sparsemax"}) == \
        {"train.lr": 3e-4, "model.attention_activation": "sparsemax"}


def test_the_recipe_is_fp32_on_a_cpu_with_native_bf16(tiny_dataset, encoder, monkeypatch):
    """Precision used to follow the CPU (bf16 where native): the same request must give the same numbers everywhere."""
    import torch

    from ich import device
    from ich.pretrain import PretrainConfig

    monkeypatch.setattr(device, "cpu_supports_bf16", lambda: True)
    cpu = torch.device("cpu")
    assert device.resolve_precision("auto", cpu) == "bf16"                 # the opt-in still follows the CPU
    for sup in ("weak", "strong", "mixed"):
        assert device.resolve_precision(recipe.run_config(str(tiny_dataset), supervision=sup, budget=24)
                                        .train.precision, cpu) == "fp32"
    assert device.resolve_precision(PretrainConfig().precision, cpu) == "fp32"
    spec, _ = resolve_study(make_study("quick", dataset=str(tiny_dataset), init=str(encoder)))
    assert {device.resolve_precision(cell_config(spec, c).train.precision, cpu) for c in plan_cells(spec)} == {"fp32"}


@pytest.mark.parametrize("made, refused", [("bf16", True), ("fp32", False), (None, False)])
def test_auto_init_refuses_an_encoder_pretrained_in_another_precision(tiny_dataset, tmp_path, made, refused):
    import torch

    from ich.models import build_encoder, save_encoder
    from ich.study import default_encoder_path

    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root / "datasets" / "tiny")
    auto = default_encoder_path(root / "datasets" / "tiny")
    auto.parent.mkdir(parents=True)
    meta = {"windows": ["brain"], "input_size": 64, **({"precision": made} if made else {})}
    torch.manual_seed(0)
    save_encoder(auto, build_encoder("compact", in_channels=1, embed_dim=32, width=16), meta)
    spec = make_study("quick", dataset=str(root / "datasets" / "tiny"))
    if refused:
        with pytest.raises(ValueError, match=r"pretrained in bf16, but today's recipe pretrains in fp32.*Delete"):
            resolve_study(spec)
    else:
        resolved, info = resolve_study(spec)
        assert resolved.init == str(auto) and info["pretrained_now"] is False
