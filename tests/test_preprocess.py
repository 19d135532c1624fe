"""HU conversion, the RSNA 12-bit fix, windowing and resizing: the pixel rules every importer and loader share."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ich.labels import WINDOWS
from ich.preprocess import (HU_MAX, HU_MIN, fix_12bit, needs_12bit_fix, resize, stack_windows, to_hu, to_int16_hu,
                            window)


def test_modality_lut_and_the_rsna_12_bit_fix():
    assert to_hu(np.array([0, 1000], np.uint16), 1.0, -1024.0).tolist() == [-1024.0, -24.0]
    assert to_hu(np.array([10], np.int16), 2.0, 0.0).dtype == np.float32
    assert needs_12bit_fix(12, 0, 0.0) and not needs_12bit_fix(12, 0, -1024.0) and not needs_12bit_fix(16, 0, 0.0)
    raw, intercept = fix_12bit(np.array([3096, 3097, 4095, 0], np.uint16))   # the wrapped values (data-formats §1.3)
    assert intercept == -1000.0 and raw.tolist() == [0, 1, 999, 1000]


def test_windows_map_level_and_width_to_0_1_for_arrays_and_tensors():
    level, width = WINDOWS["brain"]
    hu = np.array([level - width, level, level + width], np.float32)
    assert window(hu, level, width).tolist() == [0.0, 0.5, 1.0]
    assert torch.equal(window(torch.from_numpy(hu), level, width), torch.tensor([0.0, 0.5, 1.0]))
    stacked = stack_windows(np.zeros((3, 4, 4), np.float32), ("brain", "bone"))
    assert stacked.shape == (3, 2, 4, 4)
    with pytest.raises(ValueError, match="window must be one of"):
        stack_windows(np.zeros((4, 4)), ("lung",))


def test_resize_keeps_dtype_and_labels_stay_labels():
    mask = np.zeros((2, 8, 8), np.uint8)
    mask[:, 2:6, 2:6] = 3
    small = resize(mask, 4, nearest=True)
    assert small.dtype == np.uint8 and set(np.unique(small)) == {0, 3}      # nearest: no invented codes
    hu = np.full((1, 8, 8), 40, np.int16)
    assert resize(hu, 16).dtype == np.int16 and (resize(hu, 16) == 40).all()
    assert resize(hu, 8) is hu                                              # nothing to do: no copy
    with pytest.raises(ValueError, match=r"\(S, H, W\)"):
        resize(np.zeros((8, 8)), 4)


def test_the_cache_range_is_int16_and_clipped():
    out = to_int16_hu(np.array([-5000.4, 12.6, 9999.0]))
    assert out.dtype == np.int16 and out.tolist() == [HU_MIN, 13, HU_MAX]
