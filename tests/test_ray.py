"""The Ray executor: the tiny study through a local Ray instance gives the same summary as in-process runs."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

from ich.study import make_study, run_study  # noqa: E402


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    import torch

    from ich.models import build_encoder, save_encoder

    torch.manual_seed(0)
    enc = build_encoder("compact", in_channels=1, embed_dim=32, width=16)
    return save_encoder(tmp_path_factory.mktemp("enc") / "enc.pt", enc, {"windows": ["brain"], "input_size": 64})


@pytest.mark.slow
def test_ray_matches_inline(tiny_dataset, encoder_file, tmp_path):
    spec = make_study("tiny", dataset=str(tiny_dataset), init=str(encoder_file), pixel_slices=2)
    inline, _ = run_study(spec, tmp_path / "inline", executor="inline")
    ray_cells, ray_agg = run_study(spec, tmp_path / "ray", executor="ray", workers=2, cpus_per_cell=1)
    assert (ray_cells["state"] == "done").all() and len(ray_cells) == 8
    cols = ["exam_auc", "exam_auc_ci_low", "exam_auc_ci_high", "slice_auc", "sequence_f1", "pixel_dice", "n_labels"]
    assert ray_cells[cols].to_numpy() == pytest.approx(inline[cols].to_numpy(), abs=1e-9, nan_ok=True)
    import ray

    assert not ray.is_initialized()                                # the local instance was stopped again


def test_bad_ray_resources():
    from ich.executors import RayExecutor

    with pytest.raises(ValueError, match="cpus_per_task must be a number >= 0"):
        RayExecutor(cpus_per_task=-1)
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        RayExecutor(workers=0)
