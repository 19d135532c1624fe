"""Tests for ich.views: windows (presets and free), overlays, legends, L/R marks and the PNG triptych."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ich import views


def test_free_window_level_matches_the_preset_and_is_validated():
    hu = np.linspace(-100, 200, 64 * 64, dtype=np.float32).reshape(64, 64)
    np.testing.assert_array_equal(views.render_slice(hu, "brain"), views.render_slice(hu, (40.0, 80.0)))
    wide = views.render_slice(hu, (50.0, 400.0))
    assert wide.shape == (64, 64, 3) and wide[0, 0, 0] > 0            # -100 HU is grey, not black, in a wide window
    with pytest.raises(ValueError, match="positive width"):
        views.render_slice(hu, (40.0, 0.0))
    with pytest.raises(ValueError, match="window must be one of"):
        views.render_slice(hu, "lung")


def test_mask_subtypes_are_coloured_and_listed_in_the_legend():
    hu = np.zeros((8, 8), np.float32)
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 2:4] = 5                                                 # subdural
    rgb = views.render_slice(hu, "brain", mask)
    assert tuple(rgb[3, 3]) != tuple(rgb[0, 0])
    html = views.subtype_legend_html()
    assert all(name in html for name in views.SUBTYPE_COLOURS) and "rgb(0, 158, 115)" in html


def test_heat_legend_runs_from_black_to_yellow():
    bar = views.heat_legend_image(100, 10)
    assert bar.shape == (10, 100, 3)
    assert tuple(bar[0, 0]) == (0, 0, 0) and tuple(bar[0, -1]) == (255, 255, 0)


def test_triptych_is_a_png_of_three_panels_and_marks_are_drawn():
    a = np.zeros((32, 32, 3), np.uint8)
    marked = views.orientation_marks(a)
    assert marked.shape == a.shape and marked.any()
    png = views.triptych_png([a, a, a], ["slice 3", "gradcam", "truth"], size=64)
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.size == (3 * (64 + 8) + 8, 64 + 22 + 16)
    with pytest.raises(ValueError, match="one caption per image"):
        views.triptych_png([a], [])
