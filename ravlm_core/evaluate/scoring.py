"""Turn prediction tables into metrics, report examples and an `eval_runs` record."""
from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timezone

import pyarrow as pa

from ravlm_core.evaluate.metrics import caption_metrics, retrieval_metrics, vqa_metrics, vqa_soft_accuracy
from ravlm_core.evaluate.report import Example
from ravlm_core.ids import text_id
from ravlm_core.retrieval.search import kb_filter, search, sets_filter, vector_sets_filter, vectors_by_id
from ravlm_core.schemas import (
    ACTIVE,
    CAPTION_PREDICTIONS,
    CONTENTS,
    EVAL_RUNS,
    EVAL_RUNS_SCHEMA,
    IMAGES,
    IMAGES_SCHEMA,
    QA,
    QA_SCHEMA,
    VQA_PREDICTIONS,
    image_vectors_table,
    text_vectors_table,
)
from ravlm_core.store import Store, in_list, read_lists, sql_quote


def _job_rows(store: Store, table: str, job: str, columns: list[str]) -> dict[str, list]:
    rows = store.read(table, columns=columns, where=f"job_id = {sql_quote(job)}")
    return {c: rows.column(c).to_pylist() for c in columns} if rows.num_rows else {c: [] for c in columns}


def vqa_job_metrics(store: Store, job: str) -> dict:
    """Metrics over the job's items that have a ground-truth answer; an unlabeled query set says so instead.

    Exact-match accuracy against the answer always; where the query set has several human answers per question
    (VQAv2), also VQAv2's soft accuracy over the items that have them (`soft_accuracy`, `soft_items`).
    """
    rows = _job_rows(store, VQA_PREDICTIONS, job, ["qa_id", "answer", "prediction", "question_type",
                                                   "near_duplicates"])
    labelled = [i for i, a in enumerate(rows["answer"]) if a is not None]
    leakage = {"items": len(rows["answer"]), "near_duplicate_items": sum(n > 0 for n in rows["near_duplicates"])}
    if not labelled:
        return {"evaluated": False, "reason": "no ground-truth answers in the query set", **leakage}
    types = [rows["question_type"][i] or "unknown" for i in labelled]
    metrics = vqa_metrics([rows["answer"][i] for i in labelled], [rows["prediction"][i] for i in labelled], types)
    humans = read_lists(store, QA, QA_SCHEMA, "qa_id", "answers", [rows["qa_id"][i] for i in labelled])
    soft = [i for i in labelled if humans.get(rows["qa_id"][i])]
    if soft:
        scores = vqa_soft_accuracy([rows["prediction"][i] for i in soft], [humans[rows["qa_id"][i]] for i in soft])
        metrics.update(soft_accuracy=scores["soft_accuracy"], soft_items=len(soft))
    return {**metrics, **leakage, "evaluated_items": len(labelled)}


def not_applicable(generator: str | None) -> dict:
    """What a report holds for a run a generator cannot make: the run without retrieval of a baseline made of
    retrieval (caption transfer, voting), with the reason."""
    from ravlm_core.generators import GeneratorSpec, without_retrieval

    reason = without_retrieval(GeneratorSpec.parse(generator)) if generator else None
    return {"applicable": False, "reason": reason or "this generator has no run without retrieval"}


def caption_job_metrics(store: Store, job: str) -> dict:
    """coco-caption scores against every reference caption of each image (COCO: 5), or its one caption."""
    rows = _job_rows(store, CAPTION_PREDICTIONS, job, ["member_id", "prediction", "reference", "near_duplicates"])
    captions = read_lists(store, IMAGES, IMAGES_SCHEMA, "member_id", "captions", rows["member_id"])
    references = [captions.get(m) or ([r] if r else []) for m, r in zip(rows["member_id"], rows["reference"])]
    pairs = [(p, refs) for p, refs in zip(rows["prediction"], references) if refs]
    leakage = {"items": len(rows["prediction"]), "near_duplicate_items": sum(n > 0 for n in rows["near_duplicates"])}
    if not pairs:
        return {"evaluated": False, "reason": "no ground-truth captions in the query set", **leakage}
    return {**caption_metrics([p for p, _ in pairs], [refs for _, refs in pairs]), **leakage,
            "evaluated_items": len(pairs)}


def text_to_image_metrics(store: Store, model_tag: str, dataset: str, split: str) -> dict | None:
    """Recall@K, hit@K, nDCG and MRR with each distinct caption of the split (every one of each image) as a query
    over the split's images.

    An image is relevant to a caption query when any of its captions is that text: on datasets where many images
    share a caption (easy-VQA has 24 captions for 1,000 test images) every one of them is relevant, and recall@K
    counts how many of them the top K found. None without captions.
    """
    images = store.read(IMAGES, columns=["image_id", "caption", "captions"], where=kb_filter(dataset, split),
                        schema=IMAGES_SCHEMA)
    relevant: dict[str, set[str]] = defaultdict(set)
    columns = (images.column(c).to_pylist() for c in ("image_id", "caption", "captions"))
    for image_id, caption, captions in zip(*columns):
        for text in captions or ([caption] if caption else []):
            relevant[text].add(image_id)
    if not relevant:
        return None
    queries = sorted(relevant)
    vectors = vectors_by_id(store, text_vectors_table(model_tag), [text_id(q) for q in queries], "text_id")
    hits = search(store, image_vectors_table(model_tag), vectors, 10, where=vector_sets_filter([(dataset, split)]))
    return retrieval_metrics(hits.ids, [relevant[q] for q in queries], ks=(1, 5, 10))


def job_examples(store: Store, table: str, jobs: dict[str, str], n: int = 8) -> list[Example]:
    """Grid rows for the first job in `jobs` (label -> job id): its mistakes first (they teach most), then correct
    items; each with every job's output for the same item, the prompt a model received, and the neighbours."""
    from ravlm_core.schemas import CAPTION_PREDICTIONS_SCHEMA, VQA_PREDICTIONS_SCHEMA

    vqa = table == VQA_PREDICTIONS
    key, truth = ("qa_id", "answer") if vqa else ("member_id", "reference")
    rows = store.read(table, where=f"job_id = {sql_quote(next(iter(jobs.values())))}",
                      schema=VQA_PREDICTIONS_SCHEMA if vqa else CAPTION_PREDICTIONS_SCHEMA).to_pylist()  # `prompt`
    rows.sort(key=lambda r: (r["prediction"] == r[truth], r[key]))
    rows = rows[:n]
    keys = [r[key] for r in rows]
    outputs = {label: {r[key]: r for r in store.read(
        table, columns=[key, "prediction", "prompt"],
        where=f"job_id = {sql_quote(job)} AND {in_list(key, keys)}").to_pylist()} for label, job in jobs.items()}
    wanted = {r["image_id"] for r in rows} | {i for r in rows for i in r["neighbour_ids"][:5]}
    thumbs = _thumbnails(store, wanted)
    examples = []
    for r in rows:
        lines = [f"truth: {r[truth]}"] + [f"{label}: {out[r[key]]['prediction']}" for label, out in outputs.items()
                                          if r[key] in out]
        prompts = [(label, out[r[key]]["prompt"]) for label, out in outputs.items() if out.get(r[key], {}).get("prompt")]
        lines += [f"prompt ({label}): {prompt[:400]}" for label, prompt in prompts[:1]]
        neighbours = [(thumbs[i][0], f"{s:.2f} {thumbs[i][1] or ''}")
                      for i, s in zip(r["neighbour_ids"][:5], r["neighbour_scores"][:5]) if i in thumbs]
        title = r["question"] if vqa else f"caption of {r['image_id'][:10]}"
        examples.append(Example(thumbs.get(r["image_id"], (b"", ""))[0], title, lines, neighbours))
    return examples


def _thumbnails(store: Store, image_ids: set[str]) -> dict[str, tuple[bytes, str | None]]:
    if not image_ids:
        return {}
    where = in_list("image_id", sorted(image_ids))
    thumbs = store.read(CONTENTS, columns=["image_id", "thumbnail"], where=where)
    captions = store.read(IMAGES, columns=["image_id", "caption"], where=f"{where} AND {ACTIVE}")
    caption_of = dict(zip(*(captions.column(x).to_pylist() for x in ("image_id", "caption")))) if captions.num_rows else {}
    return {i: (t, caption_of.get(i)) for i, t in zip(*(thumbs.column(x).to_pylist() for x in ("image_id", "thumbnail")))}


def record_eval_run(store: Store, run_id: str, dataset: str, split: str, results: dict, config: dict,
                    report: str) -> None:
    row = {"run_id": [run_id], "task": ["eval"], "dataset": [dataset], "split": [split],
           "metrics": [json.dumps(results)], "config": [json.dumps(config, default=str)], "report": [report],
           "created_at": [datetime.now(timezone.utc)]}
    store.upsert(EVAL_RUNS, pa.Table.from_pydict(row, schema=EVAL_RUNS_SCHEMA), "run_id")


def latest_eval_run(store: Store, dataset: str, split: str) -> dict | None:
    """The newest `eval_runs` row of this query set, or None."""
    if not store.has(EVAL_RUNS):
        return None
    rows = store.read(EVAL_RUNS, where=f"dataset = {sql_quote(dataset)} AND split = {sql_quote(split)}").to_pylist()
    return max(rows, key=lambda r: r["created_at"]) if rows else None


def split_contents(store: Store, dataset: str, split: str, kb: list[tuple[str, str]]) -> dict[str, bool]:
    """Which jobs make sense: questions in the query set and answers in the KB; captions in the KB.

    The query set itself may be unlabeled: its jobs still run, and the metrics say what could not be scored.
    """
    kb_where = sets_filter(kb)
    return {
        "qa": store.count(QA, kb_filter(dataset, split)) > 0 and store.count(QA, f"{kb_where} AND answer IS NOT NULL") > 0,
        "captions": store.count(IMAGES, kb_filter(dataset, split)) > 0
        and store.count(IMAGES, f"{kb_where} AND caption IS NOT NULL") > 0,
    }
