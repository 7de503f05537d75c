"""Batched LanceDB neighbour search: agrees with exact search, membership filters, the leakage guard, lookup."""
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from ravlm_core.errors import UserError
from ravlm_core.imaging import signature, signature_distance
from ravlm_core.retrieval.search import Guard, search, vector_sets_filter, vectors_by_id
from ravlm_core.schemas import CONTENTS, CONTENTS_SCHEMA, MEMBERSHIPS, vector_schema
from tests.helpers.vectors import unit_rows


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


def _contents(store, signatures: dict[str, bytes]) -> None:
    rows = [{"image_id": i, "signature": sig} for i, sig in signatures.items()]
    store.upsert(CONTENTS, pa.Table.from_pylist(rows, pa.schema([CONTENTS_SCHEMA.field("image_id"), CONTENTS_SCHEMA.field("signature")])), "image_id")


def test_the_guard_drops_own_bytes_and_pixel_near_duplicates_and_counts_them(store, vectors):
    rng = np.random.default_rng(3)
    photo = Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
    edited = photo.copy()
    edited.putpixel((5, 5), (0, 0, 0))  # a one-pixel edit
    other = Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
    # Of the query's three nearest hits by vector, the first holds the edited copy, the second a distinct image,
    # and the third is the query's own bytes (same content id).
    query = vectors[5][None]
    plain = search(store, "vec", query, 4)
    copy, distinct, own = plain.ids[0][:3]
    _contents(store, {copy: signature(edited), distinct: signature(other), own: signature(photo)})
    assert plain.guarded == [0]
    guard = Guard([own], [signature(photo)], max_distance=3.0)
    guarded = search(store, "vec", query, 4, guard=guard)
    assert guarded.ids[0][0] == distinct and not {copy, own} & set(guarded.ids[0]) and len(guarded.ids[0]) == 4
    assert guarded.guarded == [2]
    counted = search(store, "vec", query, 4, guard=Guard([own], [signature(photo)], 3.0, drop=False))
    assert counted.ids == plain.ids and counted.guarded == [2]
    assert signature_distance(signature(photo), signature(edited)) < 1 < 3 < signature_distance(signature(photo), signature(other))


def test_re_encodes_and_resizes_stay_within_the_guard_distance_of_their_original():
    import io

    rng = np.random.default_rng(4)
    # A smooth photo-like image (noise would be unfair to JPEG): a gradient with a few blobs.
    y, x = np.mgrid[0:96, 0:128]
    pixels = np.stack([x * 2, y * 2, (x + y)], -1) % 256
    for cx, cy in rng.integers(10, 90, (4, 2)):
        pixels[(x - cx) ** 2 + (y - cy) ** 2 < 150] = rng.integers(0, 255, 3)
    photo = Image.fromarray(pixels.astype(np.uint8))
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=75)
    jpeg = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    smaller = photo.resize((115, 86))
    distances = [signature_distance(signature(photo), signature(copy)) for copy in (jpeg, smaller)]
    assert max(distances) < 3.0, distances


def test_vectors_by_id_keeps_order_and_names_missing(store, vectors):
    got = vectors_by_id(store, "vec", ["i7", "i3", "i7"], "image_id")
    assert np.allclose(got, vectors[[7, 3, 7]])
    with pytest.raises(UserError, match="nope"):
        vectors_by_id(store, "vec", ["i1", "nope"], "image_id")


def test_vector_matrix_reads_slices_chunks_and_empty_columns():
    from ravlm_core.vectors import unit_rows_np, vector_matrix

    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    column = pa.FixedSizeListArray.from_arrays(pa.array(rows.ravel()), 3)
    np.testing.assert_array_equal(vector_matrix(column.slice(1, 2)), rows[1:3])  # not the buffer's first rows
    chunked = pa.chunked_array([column.slice(2, 2), column.slice(0, 1)])
    np.testing.assert_array_equal(vector_matrix(chunked), rows[[2, 3, 0]])
    assert vector_matrix(column.slice(0, 0)).shape == (0, 3)
    np.testing.assert_allclose(np.linalg.norm(unit_rows_np(rows[1:]), axis=1), 1.0, rtol=1e-6)
    assert not unit_rows_np(np.zeros((1, 3))).any()
