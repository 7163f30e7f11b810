"""Shared test setup.

- The whole session uses a temporary cache folder (``LANDMARKS_CACHE``), so tests never write to
  ``~/.cache/thousand-landmarks`` (subprocesses and notebook kernels inherit it); it is removed at the end.
- Matplotlib draws off-screen (``MPLBACKEND=Agg``).
- ``standin`` tests (run with ``make test-standin``) need the real stand-in dataset
``../shared/datasets/thousand-standin``
  next to the repository (or ``$THOUSAND_STANDIN``); without it they are skipped with that reason.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STANDIN_DIR = os.environ.get("THOUSAND_STANDIN") or os.path.normpath(
    os.path.join(REPO_ROOT, "..", "shared", "datasets", "thousand-standin"))

_saved_env: dict = {}
_session_cache: list = []


def pytest_configure(config):
    cache = tempfile.mkdtemp(prefix="landmarks-test-cache-")
    _session_cache.append(cache)
    for key, value in (("LANDMARKS_CACHE", cache), ("MPLBACKEND", "Agg")):
        _saved_env[key] = os.environ.get(key)
        os.environ[key] = value


def pytest_unconfigure(config):
    for key, value in _saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    for d in _session_cache:
        shutil.rmtree(d, ignore_errors=True)


def standin_available() -> bool:
    return os.path.exists(os.path.join(STANDIN_DIR, "train", "landmarks.csv"))


def pytest_collection_modifyitems(config, items):
    if standin_available():
        return
    skip = pytest.mark.skip(reason=f"standin test needs the stand-in dataset at {STANDIN_DIR} (not found; set "
                                   f"THOUSAND_STANDIN to its folder)")
    for item in items:
        if "standin" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cache_dir():
    """The session's temporary cache folder (also ``$LANDMARKS_CACHE``)."""
    return os.environ["LANDMARKS_CACHE"]


@pytest.fixture(scope="session")
def standin_dir():
    """The stand-in dataset folder (the test is skipped when it is absent)."""
    if not standin_available():
        pytest.skip(f"needs the stand-in dataset at {STANDIN_DIR}")
    return STANDIN_DIR


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A tiny synthetic contest-format dataset (24 training and 6 test images, 68 points), written once per
    session; returns ``synthetic.write_dataset``'s summary dict (``out_dir``, paths, counts)."""
    from landmarks_lib.data import synthetic

    out = tmp_path_factory.mktemp("tiny-synthetic")
    return synthetic.write_dataset(out / "data", n_train=24, n_test=6, num_points=68, seed=0)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A tiny contest-format dataset (3 training and 2 test images, 15 points), written once per test module: the
    template ``ds`` copies."""
    from landmarks_lib.data import synthetic

    d = tmp_path_factory.mktemp("pristine") / "data"
    synthetic.write_dataset(d, n_train=3, n_test=2, num_points=15, seed=0, min_size=32, max_size=40)
    return d


@pytest.fixture
def ds(pristine, tmp_path):
    """A fresh copy of ``pristine`` (links kept as links) for a test to damage."""
    import shutil

    d = tmp_path / "data"
    shutil.copytree(pristine, d, symlinks=True)
    return d
