"""ravlm_core.model_files.written_whole: a trained model appears whole or not at all, and two runs saving the same
model at once both finish (the deployment test once failed with 'Directory not empty' when they shared a temp dir)."""
from __future__ import annotations

import pytest

from ravlm_core.model_files import written_whole


def test_two_runs_saving_the_same_model_at_once_both_finish_and_the_first_copy_stays(tmp_path):
    target = tmp_path / "models" / "smallcap-abc"
    runs = [written_whole(target), written_whole(target)]
    first, second = (run.__enter__() for run in runs)  # both are training at once
    assert first != second and target not in (first, second)  # each run writes a copy of its own
    (first / "meta.json").write_text("first")
    (second / "meta.json").write_text("second")
    for run in runs:  # the first run to finish renames its copy into place; the second finds it there
        run.__exit__(None, None, None)
    assert (target / "meta.json").read_text() == "first"
    assert [p.name for p in target.parent.iterdir()] == ["smallcap-abc"]


def test_a_failed_save_leaves_nothing_that_looks_like_a_model(tmp_path):
    target = tmp_path / "answerer-abc"
    with pytest.raises(RuntimeError):
        with written_whole(target) as folder:
            (folder / "weights.safetensors").write_bytes(b"half")
            raise RuntimeError("killed while saving")
    assert list(tmp_path.iterdir()) == []
