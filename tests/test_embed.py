"""Tests for ich.embed: alignment with the slice table, cache hits, invalidation."""

import numpy as np
import pytest
import torch

from _blobs import write_blob_dataset
from ich.data import window_slices
from ich.embed import clear_cache, default_cache_dir, embed_dataset, exam_rows
from ich.models import build_encoder
from ich.preprocess import resize


class Counting(torch.nn.Module):
    """Wraps an encoder and counts the slices it embeds."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += len(x)
        return self.inner(x)


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    return write_blob_dataset(tmp_path_factory.mktemp("embed") / "ds", 8, seed=2, size=32, slices=(4, 7))


def encoder(seed=0):
    torch.manual_seed(seed)
    return Counting(build_encoder("compact", embed_dim=8, width=8)).eval()


META = {"windows": ["brain"], "input_size": 32}


def test_embeddings_align_with_the_slice_table(blobs, tmp_path):
    enc = encoder()
    emb, index = embed_dataset(blobs, enc, META, tmp_path)
    assert emb.shape == (len(blobs.slices), 8) and emb.dtype == np.float32
    assert enc.calls == len(blobs.slices)
    exam_id = blobs.exams.exam_id.iloc[3]
    start, stop = index[exam_id]
    assert stop - start == blobs.exams.n_slices.iloc[3]
    assert (blobs.slices.iloc[start:stop].exam_id == exam_id).all()
    x = window_slices(torch.from_numpy(resize(np.array(blobs.load_raw(exam_id)), 32)), ("brain",))
    with torch.no_grad():
        np.testing.assert_allclose(emb[start:stop], enc(x).numpy(), rtol=1e-4, atol=1e-5)
    assert index == exam_rows(blobs)


def test_cache_hit_and_invalidation(blobs, tmp_path):
    enc = encoder()
    first, _ = embed_dataset(blobs, enc, META, tmp_path)
    n = enc.calls
    again, _ = embed_dataset(blobs, enc, META, tmp_path)
    assert enc.calls == n                                  # read from the cache, the encoder was not run
    np.testing.assert_array_equal(first, again)

    embed_dataset(blobs, enc, {"windows": ["brain"], "input_size": 16}, tmp_path)   # preprocessing changed
    assert enc.calls == 2 * n
    embed_dataset(blobs, enc, {"windows": ["subdural"], "input_size": 32}, tmp_path)
    assert enc.calls == 3 * n
    assert len(list(tmp_path.glob("*/info.json"))) == 3

    with torch.no_grad():                                   # encoder weights changed (file replaced)
        enc.inner.proj.bias.add_(1.0)
    changed, _ = embed_dataset(blobs, enc, META, tmp_path)
    assert enc.calls == 4 * n and not np.allclose(changed, first)
    assert len(list(tmp_path.glob("*/info.json"))) == 3     # the stale entry of the old weights was removed


def test_incomplete_entry_is_recomputed(blobs, tmp_path):
    enc = encoder()
    embed_dataset(blobs, enc, META, tmp_path)
    (info,) = tmp_path.glob("*/info.json")
    info.unlink()                                           # looks like an interrupted write
    embed_dataset(blobs, enc, META, tmp_path)
    assert enc.calls == 2 * len(blobs.slices)
    assert clear_cache(tmp_path) == 1 and not list(tmp_path.glob("*/info.json"))


def test_errors_and_paths(blobs, tmp_path):
    with pytest.raises(ValueError, match="must include 'input_size'"):
        embed_dataset(blobs, encoder(), {"windows": ["brain"]}, tmp_path)
    with pytest.raises(ValueError, match="precision must be 'fp32' or 'bf16'"):
        embed_dataset(blobs, encoder(), META, tmp_path, precision="fp16")
    assert default_cache_dir(tmp_path / "enc.pt") == tmp_path / "enc.pt.embeddings"
