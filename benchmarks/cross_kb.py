"""Cross-knowledge-base VQA: easy-VQA's vocabulary drawn differently, answered from easy-VQA's train split.

    python benchmarks/cross_kb.py [--out /tmp/ravlm-cross-kb] [--train 300] [--test 300] [--seed 0]
                                  [--thresholds 0,0.8,0.85,0.9,0.95,1.01] [--reuse] [--json]

In one store: ingest easy-VQA and a `make_shapes_dataset.py --style easy-vqa` set (dataset `shapes-evs`), embed
once (the built-in encoder's heads train on both sets' captioned train images), then run the CLI's `eval` three
times: shapes-evs/test against `easy-vqa:train` (cross-KB), against `shapes-evs:train` (its own KB), and
easy-vqa/test against `easy-vqa:train` (reference). The question-match threshold (RAVLM_QUESTION_MATCH_MIN) is
then swept for the cross-KB case in this process, with the functions the `vqa` flow runs; a fusion answerer is
retrained only when its training inputs change with the threshold (the CLI retrains per threshold, but for
every threshold up to 1.0 the KB's own questions match exactly, so the inputs and the trained weights are the
same). At the default threshold the sweep's predictions are compared with the CLI's (`sweep_matches_cli`).

Diagnostics, for the cross-KB items: accuracy by answer category, colour and shape; the best question-match
cosine (MiniLM) and whether the matched KB question has the same polarity (negated or not); the answer the
matched KB question has on KB images of the item's own class (what perfect image retrieval would give, the
question side alone); and the nearest KB image's class with and without the leakage guard (the image side
alone). Prints one JSON object with `--json`, else a summary; both list the commands that reproduce it.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ravlm_core.config import Settings  # noqa: E402
from ravlm_core.ids import text_id  # noqa: E402
from ravlm_core.jobs.answerers import FusionAnswerer  # noqa: E402
from ravlm_core.jobs.vqa import answer, looks_of, read_items, train_answerer  # noqa: E402
from ravlm_core.retrieval.knowledge import KnowledgeBase, RetrievalConfig, load_knowledge_base  # noqa: E402
from ravlm_core.retrieval.questions import retrieve_for_items
from ravlm_core.retrieval.search import search, stored_guard, vectors_by_id  # noqa: E402
from ravlm_core.schemas import EVAL_RUNS, IMAGES, QA, VQA_PREDICTIONS
from ravlm_core.store import Store, sql_quote  # noqa: E402
from tests.helpers.easy_vqa_shapes import COLORS, SHAPES  # noqa: E402

log = logging.getLogger("cross_kb")

QUERY, REFERENCE = "shapes-evs", "easy-vqa"
CROSS_KB = [(REFERENCE, "train")]
TARGET_ACCURACY = 0.90
DEFAULT_THRESHOLDS = "0,0.8,0.85,0.9,0.95,1.01"
# Diagnostics only: words that flip a yes/no question, in both datasets' wordings.
NEGATION = re.compile(r"\b(?:not|no|lack|lacks|without|other than)\b|n't")
HISTOGRAM_EDGES = [0.0, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0001]


def measure_defaults() -> None:
    """Log to stderr and drop every RAVLM_* variable: a benchmark measures the defaults a new user gets."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    for key in [k for k in os.environ if k.startswith("RAVLM_")]:
        log.warning("ignoring %s: the benchmark measures the defaults", key)
        del os.environ[key]


class Runner:
    """Runs CLI commands as a user would (fresh Prefect home under --out) and keeps them for the report."""

    def __init__(self, out: Path, keep_stderr: bool = False):
        self.out = out
        self.env_prefix = {"PREFECT_HOME": str(out / "prefect")}
        self.commands: list[str] = []
        self.seconds: dict[str, float] = {}
        self.keep_stderr = keep_stderr
        self.stderr: dict[str, str] = {}  # per command name, with keep_stderr

    def ravlm(self, name: str, *args: str, env: dict[str, str] | None = None) -> dict:
        """One `ravlm --data-dir OUT/data ... --json` command; returns its JSON output."""
        cli = ["--data-dir", str(self.out / "data"), "--reports-dir", str(self.out / "reports"), *args, "--json"]
        done = self._run(name, [sys.executable, "-m", "flows.cli", *cli], ["ravlm", *cli], env or {})
        return json.loads(done.stdout)

    def python(self, name: str, script: str, *args: str) -> None:
        self._run(name, [sys.executable, script, *args], ["python", script, *args], {})

    def _run(self, name: str, argv: list[str], shown: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
        full_env = {**os.environ, **self.env_prefix, **env}
        prefix = " ".join(f"{k}={v}" for k, v in {**self.env_prefix, **env}.items())
        self.commands.append(f"{prefix} {shlex.join(shown)}")
        log.info("%s: %s", name, self.commands[-1])
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=ROOT, env=full_env, capture_output=True, text=True, check=False)
        self.seconds[name] = round(time.perf_counter() - start, 1)
        if self.keep_stderr:
            self.stderr[name] = done.stderr
        if done.returncode:
            sys.exit(f"{shlex.join(shown)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
        return done


# --- what an item is about ------------------------------------------------------------------------


def category(answer_text: str) -> str:
    """color / shape / yes/no, from the answer (the shapes set has no question_type column)."""
    if answer_text in ("yes", "no"):
        return "yes/no"
    return "shape" if answer_text in SHAPES else "color" if answer_text in COLORS else "other"


def image_class(caption: str | None) -> tuple[str | None, str | None]:
    """(colour, shape) named by a caption like "a picture of a teal rectangle"."""
    words = (caption or "").split()
    return next((w for w in words if w in COLORS), None), next((w for w in words if w in SHAPES), None)


def negated(question: str) -> bool:
    return bool(NEGATION.search(question))


def accuracy_by(frame: pd.DataFrame, column: str) -> dict:
    groups = frame.groupby(column)["correct"].agg(["size", "mean"])
    return {str(key): {"n": int(row["size"]), "accuracy": round(float(row["mean"]), 4)}
            for key, row in groups.iterrows()}


# --- the CLI's evals ------------------------------------------------------------------------------


def headline(result: dict) -> dict:
    vqa, caption = result.get("vqa", {}), result.get("caption", {})
    return {
        "vqa_accuracy": vqa.get("accuracy"),
        "vqa_macro_f1": vqa.get("macro_f1"),
        "vqa_accuracy_without_retrieval": vqa.get("without_retrieval", {}).get("accuracy"),
        "vqa_accuracy_voting": vqa.get("voting", {}).get("accuracy"),
        "vqa_items": vqa.get("items"),
        "vqa_near_duplicate_items": vqa.get("near_duplicate_items"),
        "caption_bleu4": caption.get("bleu4"),
        "caption_cider": caption.get("cider"),
        "caption_bleu4_without_retrieval": caption.get("without_retrieval", {}).get("bleu4"),
        "caption_near_duplicate_items": caption.get("near_duplicate_items"),
        "run_id": result.get("run_id"),
    }


def eval_jobs(store: Store, run_id: str) -> dict[str, str]:
    row = store.read(EVAL_RUNS, columns=["config"], where=f"run_id = {sql_quote(run_id)}")
    return json.loads(row.column("config")[0].as_py())["jobs"]


def predictions(store: Store, job: str, captions: dict[str, str]) -> pd.DataFrame:
    """A VQA job's rows with category, the image's colour / shape, and whether each answer is right."""
    columns = ["qa_id", "image_id", "question", "answer", "prediction"]
    frame = store.read(VQA_PREDICTIONS, columns=columns, where=f"job_id = {sql_quote(job)}").to_pandas()
    return annotate(frame, captions)


def annotate(frame: pd.DataFrame, captions: dict[str, str]) -> pd.DataFrame:
    frame = frame.copy()
    frame["category"] = frame["answer"].map(category)
    classes = frame["image_id"].map(lambda i: image_class(captions.get(i)))
    frame["color"], frame["shape"] = classes.str[0], classes.str[1]
    frame["correct"] = frame["prediction"] == frame["answer"]
    return frame


def breakdown(frame: pd.DataFrame, detail: bool = False) -> dict:
    out = {"accuracy": round(float(frame["correct"].mean()), 4), "by_category": accuracy_by(frame, "category"),
           "empty_predictions": int((frame["prediction"] == "").sum())}
    if detail:
        wrong = frame[~frame["correct"]]
        out["by_image_color"] = accuracy_by(frame, "color")
        out["by_image_shape"] = accuracy_by(frame, "shape")
        out["most_missed_questions"] = {q: int(n) for q, n in wrong["question"].value_counts().head(12).items()}
        pairs = wrong.groupby(["answer", "prediction"]).size().sort_values(ascending=False).head(12)
        out["confusions"] = {f"{t} -> {p or '(none)'}": int(n) for (t, p), n in pairs.items()}
    return out


def eval_breakdowns(store: Store, run_id: str, captions: dict[str, str], detail: bool = False) -> dict:
    roles = {"vqa": "fusion", "vqa_without_retrieval": "fusion_without_retrieval", "vqa_voting": "voting"}
    jobs = eval_jobs(store, run_id)
    return {name: breakdown(predictions(store, jobs[role], captions), detail) for role, name in roles.items()
            if role in jobs}


# --- the threshold sweep, in process --------------------------------------------------------------


def sweep(store: Store, settings: Settings, tags: dict, thresholds: list[float], captions: dict[str, str],
          cli_run_id: str) -> dict:
    """Fusion / voting / no-retrieval accuracy of shapes-evs/test against easy-vqa:train per threshold."""
    k, device = settings.k, settings.torch_device()
    answerers = Path(settings.models_dir) / "answerers"
    items = read_items(store, [(QUERY, "test")], labelled=True)
    kb_items = read_items(store, CROSS_KB, labelled=True)

    def knowledge(threshold: float, match_form: bool = settings.match_question_form) -> KnowledgeBase:
        config = RetrievalConfig(question_match_min=threshold, match_question_form=match_form,
                                 leakage_guard=settings.leakage_guard,
                                 near_duplicate_distance=settings.near_duplicate_distance)
        return load_knowledge_base(store, tags["model_tag"], tags["question_tag"], CROSS_KB, config)

    def training_context(kb: KnowledgeBase) -> np.ndarray:
        found = retrieve_for_items(store, kb, kb_items["image_id"].tolist(), kb_items["question"].tolist(), k,
                                   training=True)
        return found.context(kb)

    default_kb = knowledge(settings.question_match_min)
    default_context = training_context(default_kb)
    # Both reuse the CLI's answerers (same KB fingerprint) when its eval ran first.
    default_fusion = train_answerer(store, default_kb, k, answerers, True, device)
    no_retrieval = FusionAnswerer(train_answerer(store, default_kb, k, answerers, False, device), device)
    rows, at_default = [], None
    # Every threshold with the default question-form matching, then the default threshold with it switched.
    configs = [(t, settings.match_question_form) for t in thresholds]
    configs.append((settings.question_match_min, not settings.match_question_form))
    for threshold, match_form in configs:
        start = time.perf_counter()
        kb = knowledge(threshold, match_form)
        same_inputs = np.array_equal(training_context(kb), default_context)
        fusion_dir = default_fusion if same_inputs else train_answerer(store, kb, k, answerers, True, device)
        fusion = FusionAnswerer(fusion_dir, device)
        row, frames = _sweep_row(store, kb, items, captions, fusion, no_retrieval, k)
        rows.append({**row, "fusion_answerer_retrained": not same_inputs,
                     "seconds": round(time.perf_counter() - start, 1)})
        log.info("question_match_min %.2f, match_question_form %s: fusion %.4f, voting %.4f, no retrieval %.4f",
                 threshold, match_form, row["fusion"], row["voting"], row["fusion_without_retrieval"])
        if (threshold, match_form) == (settings.question_match_min, settings.match_question_form):
            at_default = frames
    default_form = [r for r in rows if r["match_question_form"] == settings.match_question_form]
    best = {name: max(default_form, key=lambda r: r[name])["question_match_min"] for name in ("fusion", "voting")}
    return {"rows": rows, "best_threshold": best,
            "sweep_matches_cli": _agreement(store, cli_run_id, at_default) if at_default else None}


def _sweep_row(store: Store, kb: KnowledgeBase, items: pd.DataFrame, captions: dict[str, str],
               fusion: FusionAnswerer, no_retrieval: FusionAnswerer, k: int) -> tuple[dict, dict[str, pd.DataFrame]]:
    """One threshold (`kb.config`): each variant's predictions, as the `vqa` flow makes them, and their scores."""
    image_ids, questions = items["image_id"].tolist(), items["question"].tolist()
    found = retrieve_for_items(store, kb, image_ids, questions, k)
    looks = looks_of(store, image_ids)
    variants = {
        "fusion": answer(kb, found, "fusion", fusion, looks),
        "voting": answer(kb, found, "voting", None),
        "fusion_without_retrieval": answer(kb, found, "fusion", no_retrieval, looks),
    }
    frames = {name: annotate(items.assign(prediction=p), captions) for name, p in variants.items()}
    threshold = kb.config.question_match_min
    row = {"question_match_min": threshold, "match_question_form": kb.config.match_question_form,
           "fallback_share": round(float((found.question_sim < threshold).mean()), 4),
           **{name: round(float(f["correct"].mean()), 4) for name, f in frames.items()},
           "by_category": {name: accuracy_by(frames[name], "category") for name in ("fusion", "voting")},
           "empty_voting_predictions": int((frames["voting"]["prediction"] == "").sum()),
           "near_duplicate_items": int(sum(n > 0 for n in found.neighbours.guarded))}
    return row, frames


def _agreement(store: Store, run_id: str, frames: dict[str, pd.DataFrame]) -> dict:
    """Share of items where the in-process sweep and the CLI's eval at the same threshold answer the same."""
    jobs = eval_jobs(store, run_id)
    roles = {"fusion": "vqa", "voting": "vqa_voting", "fusion_without_retrieval": "vqa_without_retrieval"}
    out = {}
    for name, role in roles.items():
        cli = store.read(VQA_PREDICTIONS, columns=["qa_id", "prediction"], where=f"job_id = {sql_quote(jobs[role])}")
        cli_of = dict(zip(cli.column("qa_id").to_pylist(), cli.column("prediction").to_pylist()))
        ours = frames[name]
        out[name] = round(float(np.mean([cli_of.get(q) == p for q, p in zip(ours["qa_id"], ours["prediction"])])), 4)
    return out


# --- question side and image side, separately -----------------------------------------------------


def question_side(store: Store, kb: KnowledgeBase, captions: dict[str, str], thresholds: list[float]) -> dict:
    """Best question-match cosines of the cross-KB items, and what their matched KB questions would answer.

    `oracle`: the majority answer the matched KB question got on KB images of the item's own class (caption): the
    answer retrieval would give with perfect image neighbours. Wrong here means the question match is wrong.
    """
    items = read_items(store, [(QUERY, "test")], labelled=True)
    vectors = vectors_by_id(store, kb.question_table, [text_id(q) for q in items["question"]], "text_id")
    best, cosine = kb.match_questions(vectors, items["question"].tolist())
    items["match"] = [kb.questions[i] for i in best]
    items["cosine"] = cosine
    items["category"] = items["answer"].map(category)
    items["caption"] = items["image_id"].map(captions)
    kb_qa = store.read(QA, columns=["image_id", "question", "answer"],
                       where=f"dataset = {sql_quote(REFERENCE)} AND split = 'train'").to_pandas()
    kb_qa["caption"] = kb_qa["image_id"].map(captions)
    majority = kb_qa.groupby(["question", "caption"])["answer"].agg(lambda a: Counter(a).most_common(1)[0][0])
    items["oracle"] = [majority.get((m, c)) for m, c in zip(items["match"], items["caption"])]
    items["correct"] = items["oracle"] == items["answer"]
    items["polarity"] = [f"{'negated' if negated(q) else 'plain'} -> {'negated' if negated(m) else 'plain'}"
                         for q, m in zip(items["question"], items["match"])]
    quantiles = {f"p{int(q * 100):02d}": round(float(np.quantile(cosine, q)), 4)
                 for q in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)}
    counts, _ = np.histogram(cosine, bins=HISTOGRAM_EDGES)
    histogram = {f"[{lo:.2f},{min(hi, 1.0):.2f})": int(n)
                 for lo, hi, n in zip(HISTOGRAM_EDGES, HISTOGRAM_EDGES[1:], counts)}
    by_threshold = {}
    for t in thresholds:
        kept = items[items["cosine"] >= t]
        oracle = round(float(kept["correct"].mean()), 4) if len(kept) else None
        by_threshold[str(t)] = {"matched_share": round(len(kept) / len(items), 4), "oracle_accuracy_of_matched": oracle}
    by_cell = items.groupby(["category", "polarity"]).agg(n=("correct", "size"), oracle_accuracy=("correct", "mean"),
                                                           mean_cosine=("cosine", "mean"))
    distinct = items.drop_duplicates("question").sort_values("cosine")
    flipped = distinct[[negated(q) != negated(m) for q, m in zip(distinct["question"], distinct["match"])]]
    return {
        "best_cosine": {**quantiles, "mean": round(float(cosine.mean()), 4), "histogram": histogram},
        "best_cosine_median_by_category": {c: round(float(v), 4)
                                           for c, v in items.groupby("category")["cosine"].median().items()},
        "oracle_accuracy": round(float(items["correct"].mean()), 4),
        "oracle_by_category_and_polarity": {
            f"{c} | {p}": {"n": int(r["n"]), "oracle_accuracy": round(float(r["oracle_accuracy"]), 4),
                           "mean_cosine": round(float(r["mean_cosine"]), 4)} for (c, p), r in by_cell.iterrows()},
        "by_threshold": by_threshold,
        "polarity_flipped_matches": [{"question": q, "match": m, "cosine": round(float(s), 4)}
                                     for q, m, s in zip(flipped["question"], flipped["match"], flipped["cosine"])],
        "lowest_matches": [{"question": q, "match": m, "cosine": round(float(s), 4)}
                           for q, m, s in zip(distinct["question"][:8], distinct["match"][:8], distinct["cosine"][:8])],
    }


def image_side(store: Store, kb: KnowledgeBase, captions: dict[str, str], k: int) -> dict:
    """The nearest easy-vqa:train images of each shapes-evs/test image: is their class (caption) the image's?

    With the leakage guard as the jobs apply it, and without (only the image's own id left out)."""
    images = store.read(IMAGES, columns=["image_id"], where=f"dataset = {sql_quote(QUERY)} AND split = 'test'")
    ids = sorted(set(images.column("image_id").to_pylist()))
    vectors = vectors_by_id(store, kb.image_table, ids, "image_id")
    truth = [image_class(captions[i]) for i in ids]
    out = {}
    for name, guard in (("leakage_guard", stored_guard(store, kb, ids)), ("no_guard", None)):
        found = search(store, kb.image_table, vectors, k, where=kb.where, exclude=None if guard else ids, guard=guard)
        top = [image_class(kb.captions.get(n[0])) if n else (None, None) for n in found.ids]
        majority = [Counter(image_class(kb.captions.get(i)) for i in n).most_common(1)[0][0] if n else (None, None)
                    for n in found.ids]
        frame = pd.DataFrame({"color": [t[0] for t in truth], "color_ok": [p[0] == t[0] for p, t in zip(top, truth)],
                              "shape_ok": [p[1] == t[1] for p, t in zip(top, truth)]})
        out[name] = {
            "images": len(ids),
            "top1_class_accuracy": round(float(np.mean([p == t for p, t in zip(top, truth)])), 4),
            "top1_color_accuracy": round(float(frame["color_ok"].mean()), 4),
            "top1_shape_accuracy": round(float(frame["shape_ok"].mean()), 4),
            f"majority_of_{k}_class_accuracy": round(float(np.mean([p == t for p, t in zip(majority, truth)])), 4),
            "images_with_neighbours_dropped": int(sum(n > 0 for n in found.guarded)),
            "images_left_without_neighbours": int(sum(not n for n in found.ids)),
            "top1_cosine_median": round(float(np.median([s[0] for s in found.scores if s])), 4),
        }
        if guard is None:
            out[name]["top1_color_accuracy_by_color"] = {c: round(float(v), 4) for c, v in
                                                         frame.groupby("color")["color_ok"].mean().items()}
            out[name]["color_confusions"] = {f"{t[0]} -> {p[0]}": n for (t, p), n in Counter(
                (t, p) for t, p in zip(truth, top) if t[0] != p[0]).most_common(8)}
    return out


# --- the run --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/ravlm-cross-kb"), help="work folder (store, data)")
    parser.add_argument("--train", type=int, default=300, help="shapes-evs train images")
    parser.add_argument("--test", type=int, default=300, help="shapes-evs test images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--thresholds", default=DEFAULT_THRESHOLDS, help="question_match_min values to sweep")
    parser.add_argument("--reuse", action="store_true",
                        help="keep what a previous run with the same sizes left in --out (else start afresh)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    measure_defaults()
    thresholds = [float(t) for t in args.thresholds.split(",")]
    out = args.out.resolve()
    source = out / f"{QUERY}-src"
    if not args.reuse:
        for sub in ("data", "reports", "prefect", source.name):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    settings = Settings(data_dir=out / "data")
    started = time.perf_counter()

    run = Runner(out)
    run.python("generate", "benchmarks/make_shapes_dataset.py", str(source), "--style", "easy-vqa",
               "--train", str(args.train), "--test", str(args.test), "--seed", str(args.seed))
    run.ravlm("ingest_easy_vqa", "ingest", "easy-vqa")
    run.ravlm("ingest_shapes", "ingest", str(source), "--dataset", QUERY)
    tags = run.ravlm("embed", "embed")
    cross = run.ravlm("eval_cross_kb", "eval", QUERY, "--kb", f"{REFERENCE}:train")
    own = run.ravlm("eval_own_kb", "eval", QUERY, "--kb", f"{QUERY}:train")
    reference = run.ravlm("eval_easy_vqa", "eval", REFERENCE)

    store = Store(settings.store_uri)
    images = store.read(IMAGES, columns=["image_id", "caption"]).to_pandas()
    captions = {i: c for i, c in zip(images["image_id"], images["caption"]) if isinstance(c, str)}
    start = time.perf_counter()
    swept = sweep(store, settings, tags, thresholds, captions, cross["run_id"])
    run.seconds["sweep_in_process"] = round(time.perf_counter() - start, 1)
    kb = load_knowledge_base(store, tags["model_tag"], tags["question_tag"], CROSS_KB)
    env = " ".join(f"{k}={v}" for k, v in run.env_prefix.items())

    def cli_eval(threshold: float, match_form: bool) -> str:
        return (f"{env} RAVLM_QUESTION_MATCH_MIN={threshold} RAVLM_MATCH_QUESTION_FORM={str(match_form).lower()} "
                f"ravlm --data-dir {out / 'data'} --reports-dir {out / 'reports'} eval {QUERY} "
                f"--kb {REFERENCE}:train --json")

    sweep_commands = [cli_eval(t, settings.match_question_form) for t in thresholds]
    sweep_commands.append(cli_eval(settings.question_match_min, not settings.match_question_form))
    report = {
        "config": {"out": str(out), "train": args.train, "test": args.test, "seed": args.seed, "k": settings.k,
                   "question_match_min_default": settings.question_match_min,
                   "match_question_form": settings.match_question_form,
                   "near_duplicate_distance": settings.near_duplicate_distance,
                   "leakage_guard": settings.leakage_guard,
                   "model_tag": tags["model_tag"], "question_tag": tags["question_tag"]},
        "target": {"cross_kb_vqa_accuracy_min": TARGET_ACCURACY,
                   "met": (cross["vqa"].get("accuracy") or 0) >= TARGET_ACCURACY},
        "cross_kb": {"query": f"{QUERY}:test", "kb": f"{REFERENCE}:train", **headline(cross),
                     "breakdown": eval_breakdowns(store, cross["run_id"], captions, detail=True)},
        "own_kb": {"query": f"{QUERY}:test", "kb": f"{QUERY}:train", **headline(own),
                   "breakdown": eval_breakdowns(store, own["run_id"], captions)},
        "easy_vqa_reference": {"query": f"{REFERENCE}:test", "kb": f"{REFERENCE}:train", **headline(reference),
                               "breakdown": eval_breakdowns(store, reference["run_id"], captions)},
        "question_match_sweep": swept,
        "question_side": question_side(store, kb, captions, thresholds),
        "image_side": image_side(store, kb, captions, settings.k),
        "seconds": {**run.seconds, "total": round(time.perf_counter() - started, 1)},
        "commands": run.commands,
        "sweep_cli_equivalents": sweep_commands,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_summary(report)


def print_summary(report: dict) -> None:
    for name in ("cross_kb", "own_kb", "easy_vqa_reference"):
        r = report[name]
        print(f"{name:20s} {r['query']} vs {r['kb']}: fusion {r['vqa_accuracy']:.4f}, voting "
              f"{r['vqa_accuracy_voting']:.4f}, without retrieval {r['vqa_accuracy_without_retrieval']:.4f}")
    print("question_match_min  question_form  fallback  fusion  voting  no-retrieval")
    for row in report["question_match_sweep"]["rows"]:
        print(f"{row['question_match_min']:18.2f}  {str(row['match_question_form']):>13s}  "
              f"{row['fallback_share']:8.3f}  {row['fusion']:.4f}  {row['voting']:.4f}  "
              f"{row['fusion_without_retrieval']:12.4f}")
    print("commands:", *report["commands"], "sweep via the CLI:", *report["sweep_cli_equivalents"], sep="\n  ")


if __name__ == "__main__":
    main()
