"""Shared pytest fixtures and markers for the ich test suite."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
# one pseudonym key per test session, never the developer's data/.pseudonym-key (subprocesses inherit it)
_KEY_DIR = tempfile.mkdtemp(prefix="ich-test-key-")
os.environ["ICH_PSEUDONYM_KEY"] = os.path.join(_KEY_DIR, "pseudonym-key")
atexit.register(shutil.rmtree, _KEY_DIR, True)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~5 s on a 2-core CPU")
    config.addinivalue_line("markers", "browser: drives a real chromium against the app")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """An ich dataset of 24 easy phantom exams (64 x 64, 8-12 slices, seed 0), rendered straight into the store."""
    from ich.phantom import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("tiny_dataset") / "phantom", 24, seed=0, size=64,
                                 difficulty="easy", slices=(8, 12))


@pytest.fixture(scope="session")
def tiny_dicom_phantom(tmp_path_factory):
    """A `python -m ich synth` tree of 4 easy exams (64 x 64, 8-12 slices, seed 1: PH000002-3 are positive)."""
    from ich.synth import write_synth_dataset

    out = tmp_path_factory.mktemp("tiny_dicom_phantom") / "phantom"
    write_synth_dataset(out, 4, seed=1, size=64, difficulty="easy", slices=(8, 12), workers=1)
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: tiny models run faster so on shared 2-core machines (restored afterwards)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_phantom_run(tmp_path_factory, tiny_dataset):
    """A finished tiny weak run (2 epochs) trained on ``tiny_dataset``: for scoring, OOD and upload tests."""
    from ich.config import make_config
    from ich.train import fit

    run = tmp_path_factory.mktemp("tiny_phantom_run") / "run"
    fit(make_config(str(tiny_dataset), preset="tiny", overrides={"train.epochs": 2, "train.threads": 1}), run)
    return run
