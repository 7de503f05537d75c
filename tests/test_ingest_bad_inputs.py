"""Ingest on a corpus of bad, hostile and unusual inputs: each is ingested correctly or rejected with file, row and
reason; nothing crashes, nothing outside the dataset folder is read, good rows beside bad ones are kept."""
from __future__ import annotations

import pytest

from ravlm_core.store import Store
from tests.helpers.bad_inputs import Corpus, Run, build_corpus, escapes, ingest_corpus, judge, stray_bad_rows

MIN_KINDS = 30


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    return build_corpus(tmp_path_factory.mktemp("bad-inputs"))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    return Store(str(tmp_path_factory.mktemp("store") / "lancedb"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def run(corpus, store, data_dir) -> Run:
    return ingest_corpus(corpus, store, data_dir)


def test_the_corpus_has_enough_distinct_kinds(corpus):
    names = [case.name for case in corpus.cases]
    assert len(set(names)) == len(names), "case names must be unique"
    assert len(names) >= MIN_KINDS
    assert {"ok", "rejected", "manifest-error"} == {case.kind for case in corpus.cases}


def test_every_case_is_ingested_correctly_or_rejected_with_file_row_and_reason(corpus, run):
    failures, crashed = [], {}
    for verdict in judge(corpus, run):
        if verdict.outcome == "crash" and verdict.case.kind != "manifest-error":
            crashed.setdefault(verdict.case.dataset, []).append(verdict)  # one crash hides all its dataset's cases
        elif not verdict.passed:
            failures.append(f"{verdict.case.kind:>14} | {verdict.case.name}: {verdict.outcome}: {verdict.detail}")
    failures += [f"ingest of {dataset!r} crashed, {len(cases)} cases not judged: {cases[0].detail}"
                 for dataset, cases in crashed.items()]
    assert not failures, f"{len(failures)} failures ({len(corpus.cases)} cases):\n" + "\n".join(failures)


def test_every_bad_row_is_accounted_for(corpus, run):
    assert stray_bad_rows(corpus, run) == []


def test_nothing_outside_the_dataset_folders_is_read(corpus, run):
    assert escapes(corpus, run) == []


def test_each_content_is_stored_once(run):
    ids = [row["image_id"] for row in run.contents]
    assert len(ids) == len(set(ids))
    assert {row["image_id"] for row in run.images} <= set(ids)


def test_a_rerun_adds_and_changes_nothing(corpus, store, data_dir, run):
    again = ingest_corpus(corpus, store, data_dir)
    for dataset, result in again.results.items():
        if isinstance(result, BaseException):
            assert type(result) is type(run.results[dataset]), f"{dataset}: {result!r}"
            continue
        counts = {name: getattr(result, name) for name in ("added", "changed", "removed", "reannotated")}
        assert counts == dict.fromkeys(counts, 0), dataset
        reported = sorted((b.ref, b.reason) for b in run.results[dataset].bad_rows)  # order follows shards
        assert sorted((b.ref, b.reason) for b in result.bad_rows) == reported, f"{dataset}: the rerun reports otherwise"
    for table, key in (("images", "member_id"), ("qa", "qa_id"), ("contents", "image_id")):
        before, after = getattr(run, table), getattr(again, table)
        assert len(after) == len(before), table
        assert _stable(after, key) == _stable(before, key), table


def _stable(rows: list[dict], key: str) -> dict:
    """Rows by key without write timestamps."""
    return {row[key]: {k: v for k, v in row.items() if not k.endswith("_at")} for row in rows}
