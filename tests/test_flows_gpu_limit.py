"""GPU tasks hold a slot of the server-wide `ravlm-gpu` tag limit: never more of them at once than its slots."""
from __future__ import annotations

import time

import pytest
from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import GPU_TAG, on_device
from ravlm_core.config import Settings
from tasks.embed import embed_shard

pytestmark = pytest.mark.server


@task
def hold_the_device(i: int) -> tuple[float, float]:
    started = time.monotonic()
    time.sleep(0.5)
    return started, time.monotonic()


@flow(task_runner=ThreadPoolTaskRunner(max_workers=3))
def three_tasks_on(device: str) -> list[tuple[float, float]]:
    return on_device(device, Settings(gpu_concurrency=1))(hold_the_device).map(range(3)).result()


def overlaps(spans: list[tuple[float, float]]) -> int:
    spans = sorted(spans)
    return sum(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))


def test_tasks_on_a_gpu_run_one_at_a_time_and_cpu_tasks_are_left_alone(harness):
    from prefect.client.orchestration import get_client

    assert on_device("cpu", Settings())(embed_shard) is embed_shard
    assert overlaps(three_tasks_on("cpu")) == 2  # three threads, nothing in the way: all at once

    assert GPU_TAG in on_device("cuda:0", Settings())(embed_shard).tags
    assert overlaps(three_tasks_on("cuda")) == 0
    with get_client(sync_client=True) as client:
        assert client.read_concurrency_limit_by_tag(GPU_TAG).concurrency_limit == 1
