"""The shapes dataset the tests and benchmarks draw: deterministic per seed, balanced answers, known formats."""
from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from tests.helpers.shapes import make_shapes_dataset


def test_shapes_dataset_is_deterministic_and_balanced(tmp_path):
    first = make_shapes_dataset(tmp_path / "a", n_train=8, n_test=4, seed=3)
    second = make_shapes_dataset(tmp_path / "b", n_train=8, n_test=4, seed=3)
    other = make_shapes_dataset(tmp_path / "c", n_train=8, n_test=4, seed=4)
    assert first.read_bytes() == second.read_bytes() != other.read_bytes()
    assert (tmp_path / "a/images/train_00000.png").read_bytes() == (tmp_path / "b/images/train_00000.png").read_bytes()
    rows = pd.read_csv(first)
    assert set(rows.columns) == {"image", "caption", "question", "answer", "split", "question_type"}
    per_image = rows.groupby("image").size()
    assert len(per_image) == 12 and per_image.between(6, 10).all()
    answers = rows[rows.question_type == "yes/no"].answer.value_counts()
    assert abs(answers["yes"] - answers["no"]) <= 12  # at most one extra "yes" per image
    assert not rows.duplicated(["image", "question"]).any()
    with Image.open(tmp_path / "a" / rows.image[0]) as image:
        assert image.size == (64, 64)


def test_shapes_dataset_rejects_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="csv, jsonl, parquet"):
        make_shapes_dataset(tmp_path, 1, 1, fmt="xlsx")
