"""Shared fixtures. The tiny checkpoints are built once per version of make_tiny.py."""

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS / "fixtures"))

import make_tiny  # noqa: E402

CACHE = TESTS / ".cache"


def tiny_checkpoint(kind: str) -> Path:
    """tests/.cache/<kind>-<hash of make_tiny.py>, built into a temp dir and renamed into place,
    so a concurrent session never sees a half-written checkpoint."""
    digest = hashlib.sha256(Path(make_tiny.__file__).read_bytes()).hexdigest()[:12]
    path = CACHE / f"{kind}-{digest}"
    if path.is_dir():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=CACHE))
    try:
        make_tiny.build(kind, tmp)
        os.rename(tmp, path)
    except OSError:
        if not path.is_dir():  # not lost a race to another session: a real error
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


@pytest.fixture(scope="session")
def dense_text_path() -> Path:
    return tiny_checkpoint("dense_text")


@pytest.fixture(scope="session")
def dense_vl_path() -> Path:
    return tiny_checkpoint("dense_vl")


@pytest.fixture(scope="session")
def moe_vl_path() -> Path:
    return tiny_checkpoint("moe_vl")


@pytest.fixture(scope="session")
def moe_per_expert_path() -> Path:
    return tiny_checkpoint("moe_text_per_expert")
