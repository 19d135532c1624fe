"""Keyed pseudonyms: HMAC-SHA256 of identifying values (PatientID, series UIDs) with a per-installation secret.

An unsalted hash of a patient ID can be reversed by trying every ID (all 8-digit IDs take
minutes); an HMAC cannot be recomputed without the key. The key is 32 random bytes
(``secrets.token_bytes``) created once in ``<data root>/.pseudonym-key`` with mode 0600
(``$ICH_PSEUDONYM_KEY`` names another file, e.g. in tests). The same key gives the same
pseudonyms on every import, so re-imports and joins stay stable; losing the key only means
new imports get new ids. Never copy the key next to the datasets you share.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from functools import lru_cache
from pathlib import Path

KEY_ENV = "ICH_PSEUDONYM_KEY"
KEY_FILE = ".pseudonym-key"
KEY_BYTES = 32


def key_path() -> Path:
    """Where the key lives: ``$ICH_PSEUDONYM_KEY``, else ``<data root>/.pseudonym-key``."""
    from ich.paths import data_root

    env = os.environ.get(KEY_ENV, "").strip()
    return Path(env) if env else data_root() / KEY_FILE


def _create(path: Path) -> None:
    """Write a new random key to ``path`` (0600) unless one appears first (two processes may race)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_BYTES))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic and never replaces a key another process just created
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


@lru_cache(maxsize=8)
def _load(path_str: str) -> bytes:
    path = Path(path_str)
    if not path.exists():
        _create(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, 0o600)  # a key others can read is no secret
    key = path.read_bytes()
    if len(key) < 16:
        raise ValueError(f"{path} holds {len(key)} bytes, not a pseudonym key (at least 16 random bytes); "
                         f"delete it to create a new key (pseudonyms of new imports will then change), "
                         f"or point ${KEY_ENV} at the right key file")
    return key


def secret_key() -> bytes:
    """The installation's key (created on first use)."""
    return _load(str(key_path()))


def pseudonym(value: object, *, kind: str = "id", length: int = 16) -> str:
    """``length`` hex digits of HMAC-SHA256(key, f"{kind}:{value}"): stable per installation, not reversible.

    ``kind`` separates namespaces (a patient and an exam with the same raw value get different pseudonyms).
    """
    if not 8 <= length <= 64:
        raise ValueError(f"length must be 8..64 hex digits, not {length}")
    mac = hmac.new(secret_key(), f"{kind}:{value}".encode("utf-8"), hashlib.sha256)
    return mac.hexdigest()[:length]


def exam_pseudonym(series_uid: str) -> str:
    """The exam id of a user-data series: ``exam-`` + 12 hex digits keyed on its SeriesInstanceUID.

    Never derived from folder or file names (they often carry a patient's name or record number).
    """
    return f"exam-{pseudonym(series_uid, kind='exam', length=12)}"
