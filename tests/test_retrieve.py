"""Batched LanceDB neighbour search: agrees with exact search, filters, leave-one-out, vector lookup."""
import numpy as np
import pyarrow as pa
import pytest

from ravlm_core.retrieve import kb_filter, search, vectors_by_id
from ravlm_core.store import vector_schema
from tests.conftest import unit_rows


@pytest.fixture
def vectors(store):
    rng = np.random.default_rng(0)
    v = unit_rows(rng, 600, 16)
    schema = vector_schema(16, "image_id", [("dataset", pa.string()), ("split", pa.string())])
    rows = pa.Table.from_pydict(
        {"image_id": [f"i{i}" for i in range(600)], "vector": list(v), "dataset": ["d"] * 600,
         "split": ["train" if i % 3 else "test" for i in range(600)], "model_tag": ["t"] * 600,
         "embedded_at": [None] * 600}, schema=schema)
    store.upsert("vec", rows, "image_id")
    return v


def test_search_matches_exact_cosine_and_filter(store, vectors):
    queries = vectors[:40]
    hits = search(store, "vec", queries, 5, where=kb_filter("d", "train"))
    train = np.array([i for i in range(600) if i % 3])
    exact = np.argsort(-(queries @ vectors[train].T), axis=1)[:, :5]
    assert hits.ids == [[f"i{train[j]}" for j in row] for row in exact]
    assert np.allclose(hits.scores, np.take_along_axis(queries @ vectors[train].T, exact, 1), atol=1e-4)


def test_leave_one_out_drops_only_the_query_itself(store, vectors):
    ids = [f"i{i}" for i in range(1, 30)]
    plain = search(store, "vec", vectors[1:30], 3)
    loo = search(store, "vec", vectors[1:30], 3, exclude=ids)
    for own, with_self, without_self in zip(ids, plain.ids, loo.ids):
        assert with_self[0] == own and own not in without_self
        assert without_self[:2] == with_self[1:3]


def test_vectors_by_id_keeps_order_and_names_missing(store, vectors):
    got = vectors_by_id(store, "vec", ["i7", "i3", "i7"], "image_id")
    assert np.allclose(got, vectors[[7, 3, 7]])
    with pytest.raises(KeyError, match="nope"):
        vectors_by_id(store, "vec", ["i1", "nope"], "image_id")
