"""Shared pytest fixtures and markers for the ich test suite."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~5 s on a 2-core CPU")
    config.addinivalue_line("markers", "browser: drives a real chromium against the app")
