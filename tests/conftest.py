"""Shared fixtures: a tmp_path LanceDB store, CPU only, no network."""
from __future__ import annotations

import os

from ravlm_core.config import apply_environment

apply_environment()  # no network, before any test module imports Prefect or transformers
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # the tests run on the CPU

import pytest

from ravlm_core.store import Store


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(str(tmp_path / "lancedb"))


def pytest_collection_modifyitems(items):
    """A test on the Prefect harness must say so (`server`), or `pytest -m "not server"` would start a server."""
    unmarked = [item.nodeid for item in items
                if "harness" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("server")]
    if unmarked:
        raise pytest.UsageError(f"mark these tests @pytest.mark.server: {', '.join(unmarked)}")


@pytest.fixture(scope="session")
def harness():
    """Prefect's test harness: a throwaway server and database, shared by every CLI process the tests start."""
    from prefect.settings import get_current_settings
    from prefect.testing.utilities import prefect_test_harness

    # The first start of a fresh Prefect home runs its migrations (~20 s on 2 cores).
    with prefect_test_harness(server_startup_timeout=180):
        yield str(get_current_settings().api.url)
