"""Shared fixtures: a tmp_path LanceDB store, CPU only, no network."""
from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

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
