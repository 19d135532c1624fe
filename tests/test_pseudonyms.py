"""Tests for ich.pseudonyms: a per-installation key, HMAC pseudonyms that cannot be recomputed without it."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

import _datasets as D
from ich import pseudonyms, sources
from ich.store import open_dataset

PATIENT = "1234567"  # a 7-digit record number: an unsalted hash of it is reversed in milliseconds


@pytest.fixture
def key_file(tmp_path, monkeypatch):
    path = tmp_path / "keys" / "pseudonym-key"
    monkeypatch.setenv(pseudonyms.KEY_ENV, str(path))
    return path


def _import(src, out):
    return open_dataset(out) if sources.import_folder(src, out, size=D.PX, workers=1) else None


@pytest.fixture
def folder(tmp_path):
    hu, _ = D.head_volume(4)
    D.write_series(hu, tmp_path / "src" / "s", patient_id=PATIENT, series_key="pseudo")
    return tmp_path / "src"


def test_key_is_created_once_random_and_private(key_file):
    assert not key_file.exists()
    a = pseudonyms.pseudonym("x")
    assert key_file.is_file() and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_bytes()
    assert len(key) == 32 and pseudonyms.pseudonym("x") == a and key_file.read_bytes() == key
    assert [p.name for p in key_file.parent.iterdir()] == [key_file.name]  # no temporary file left


def test_key_readable_by_others_is_made_private_and_a_short_key_is_refused(key_file, monkeypatch):
    key_file.parent.mkdir(parents=True)
    key_file.write_bytes(os.urandom(32))
    os.chmod(key_file, 0o644)
    pseudonyms.pseudonym("x")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    short = key_file.with_name("short")
    short.write_bytes(b"abc")
    monkeypatch.setenv(pseudonyms.KEY_ENV, str(short))
    with pytest.raises(ValueError, match="holds 3 bytes, not a pseudonym key.*delete it"):
        pseudonyms.pseudonym("x")


def test_patient_id_cannot_be_recomputed_without_the_key(key_file, folder, tmp_path, monkeypatch):
    ds = _import(folder, tmp_path / "out")
    stored = ds.exams["patient_id"].iloc[0]
    # an attacker with the tables but not the key: unsalted hashes of the ID (and chains of them) miss
    guesses = set()
    for text in (PATIENT, hashlib.sha256(PATIENT.encode()).hexdigest()[:16]):
        digest = hashlib.sha256(text.encode()).hexdigest()
        guesses |= {digest[:n] for n in (12, 16)}
    assert stored not in guesses
    # ... and so does the right construction with any other key
    monkeypatch.setenv(pseudonyms.KEY_ENV, str(tmp_path / "other-key"))
    other = _import(folder, tmp_path / "out-other-key")
    assert other.exams["patient_id"].iloc[0] != stored
    assert other.exams["exam_id"].iloc[0] != ds.exams["exam_id"].iloc[0]


def test_same_key_gives_the_same_ids_on_every_import(key_file, folder, tmp_path):
    a, b = _import(folder, tmp_path / "a"), _import(folder, tmp_path / "b")
    assert a.exams[["exam_id", "patient_id"]].equals(b.exams[["exam_id", "patient_id"]])
    assert a.exams["exam_id"].iloc[0].startswith("exam-") and len(a.exams["patient_id"].iloc[0]) == 16


def test_pseudonym_length_is_checked(key_file):
    with pytest.raises(ValueError, match="length must be 8..64 hex digits, not 4"):
        pseudonyms.pseudonym("x", length=4)
