"""A failed unit of work names itself in one line, and says whether a retry can help, even after pickling."""
from __future__ import annotations

import pickle
import re

import pytest
from prefect.states import Failed

from ravlm_core.errors import UnitFailed, UserError, naming
from tasks.retry import transient


def test_an_error_gains_the_name_of_the_unit_and_its_first_line():
    with pytest.raises(UnitFailed) as failed:
        with naming("embedding shard data/parquet/images-1.parquet"):
            raise OSError("disk quota exceeded\nwhile writing lance fragment 17")
    assert str(failed.value) == "embedding shard data/parquet/images-1.parquet: OSError: disk quota exceeded"
    assert isinstance(failed.value.__cause__, OSError)


def test_user_errors_pass_through_unchanged():
    with pytest.raises(UserError, match="^manifest.csv row 3"):
        with naming("scanning folder"):
            raise UserError("manifest.csv row 3: no image column")


def test_the_retry_verdict_survives_pickling_to_and_from_workers():
    broken = pickle.loads(pickle.dumps(UnitFailed("part 2: ValueError: bad row", permanent=True)))
    busy = pickle.loads(pickle.dumps(UnitFailed("part 2: OSError: commit conflict", permanent=False)))
    assert (str(broken), broken.permanent, busy.permanent) == ("part 2: ValueError: bad row", True, False)

    assert transient(None, None, Failed(data=busy)) is True
    assert transient(None, None, Failed(data=broken)) is False
    with pytest.raises(UnitFailed) as wrapped:
        with naming("shard x"):
            raise FileNotFoundError("x.parquet")
    assert transient(None, None, Failed(data=wrapped.value)) is False  # a missing file stays missing
    assert transient(None, None, Failed(data=TimeoutError("store busy"))) is True


@pytest.mark.server
def test_a_failed_flow_says_which_shard_and_why_in_one_line_in_its_state_and_the_runs_table(harness, tmp_path,
                                                                                          monkeypatch):
    from flows.ingest import ingest_flow
    from ravlm_core.ingest import shards
    from ravlm_core.store import Store
    from tests.helpers.shapes import make_shapes_dataset

    folder = tmp_path / "shapes"
    make_shapes_dataset(folder, n_train=4, n_test=2, seed=0, fmt="jsonl")

    def broken_writer(*args, **kwargs):
        raise ValueError("row group 0 has 3 columns, expected 5\n(details the operator does not need first)")

    monkeypatch.setattr(shards, "write_shard", broken_writer)
    state = ingest_flow(str(folder), "shapes", overrides={"data_dir": str(tmp_path / "data")}, return_state=True)

    assert state.is_failed()
    line = r"writing shard images-[0-9a-f]+: ValueError: row group 0 has 3 columns, expected 5$"
    assert re.search(line, state.message.splitlines()[0]), state.message
    [run] = Store(str(tmp_path / "data" / "lancedb")).read("runs").to_pylist()
    assert run["flow"] == "ingest" and run["state"] == "FAILED" and re.search(line, run["message"])
