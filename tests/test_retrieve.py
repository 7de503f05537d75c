"""Batched LanceDB neighbour search: agrees with exact search, membership filters, the leakage guard, lookup."""
import numpy as np
import pyarrow as pa
import pytest

from ravlm_core.retrieve import search, vector_sets_filter, vectors_by_id
from ravlm_core.store import MEMBERSHIPS, vector_schema
from tests.conftest import unit_rows


@pytest.fixture
def vectors(store):
    rng = np.random.default_rng(0)
    v = unit_rows(rng, 600, 16)
    schema = vector_schema(16, "image_id", MEMBERSHIPS)
    # Every third image is listed in d:test only; the others in d:train, and every tenth also in e:train.
    labels = [["d:test"] if i % 3 == 0 else ["d:train", "e:train"] if i % 10 == 0 else ["d:train"] for i in range(600)]
    rows = pa.Table.from_pydict(
        {"image_id": [f"i{i}" for i in range(600)], "vector": list(v), "memberships": labels,
         "model_tag": ["t"] * 600, "embedded_at": [None] * 600}, schema=schema)
    store.upsert("vec", rows, "image_id")
    return v


def test_search_matches_exact_cosine_and_filter(store, vectors):
    queries = vectors[:40]
    hits = search(store, "vec", queries, 5, where=vector_sets_filter([("d", "train")]))
    train = np.array([i for i in range(600) if i % 3])
    exact = np.argsort(-(queries @ vectors[train].T), axis=1)[:, :5]
    assert hits.ids == [[f"i{train[j]}" for j in row] for row in exact]
    assert np.allclose(hits.scores, np.take_along_axis(queries @ vectors[train].T, exact, 1), atol=1e-4)
    # A knowledge base of two sets is their union; a set nobody is listed in finds nothing.
    e_only = search(store, "vec", queries, 5, where=vector_sets_filter([("e", "train")]))
    assert all(int(i[1:]) % 10 == 0 and int(i[1:]) % 3 for ids in e_only.ids for i in ids)
    both = search(store, "vec", queries, 5, where=vector_sets_filter([("e", "train"), ("d", "test")]))
    assert all(int(i[1:]) % 10 == 0 or int(i[1:]) % 3 == 0 for ids in both.ids for i in ids)
    assert search(store, "vec", queries, 5, where=vector_sets_filter([("x", "train")])).ids == [[]] * 40


def test_leave_one_out_drops_only_the_query_itself(store, vectors):
    ids = [f"i{i}" for i in range(1, 30)]
    plain = search(store, "vec", vectors[1:30], 3)
    loo = search(store, "vec", vectors[1:30], 3, exclude=ids)
    for own, with_self, without_self in zip(ids, plain.ids, loo.ids):
        assert with_self[0] == own and own not in without_self
        assert without_self[:2] == with_self[1:3]


def test_near_duplicate_guard_drops_hits_at_or_above_the_cosine_and_counts_them(store, vectors):
    # A query a hair away from i5 (a near-duplicate: cosine > 0.999) and far from everything else.
    query = vectors[5] + 0.01 * vectors[6]
    query = (query / np.linalg.norm(query))[None].astype(np.float32)
    plain = search(store, "vec", query, 3)
    guarded = search(store, "vec", query, 3, near_duplicate=0.999)
    assert plain.ids[0][0] == "i5" and plain.scores[0][0] > 0.999
    assert "i5" not in guarded.ids[0] and guarded.ids[0] == plain.ids[0][1:] + guarded.ids[0][2:]
    assert guarded.near_duplicates == [1] and len(guarded.ids[0]) == 3
    assert plain.near_duplicates == [0]


def test_vectors_by_id_keeps_order_and_names_missing(store, vectors):
    got = vectors_by_id(store, "vec", ["i7", "i3", "i7"], "image_id")
    assert np.allclose(got, vectors[[7, 3, 7]])
    with pytest.raises(KeyError, match="nope"):
        vectors_by_id(store, "vec", ["i1", "nope"], "image_id")
