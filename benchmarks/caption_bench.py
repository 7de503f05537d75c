"""SmallCap against caption transfer, each with and without retrieval, on three query sets through the CLI.

    python benchmarks/caption_bench.py [--out /tmp/ravlm-caption-bench] [--holdout 6] [--reuse] [--json]

In one store: easy-VQA; a `make_shapes_dataset.py` set (`shapes`: 300 train / 100 test of shapes and colours
easy-VQA lacks, with `--holdout` colour-shape combinations that only test images show); and an easy-VQA-style
set drawn differently (`shapes-evs`, 300 test images). After one `ravlm embed`, `ravlm eval --generator
builtin-transfer --generator smallcap` runs for easy-vqa/test (its train split as KB), shapes/test (its own
train split) and shapes-evs/test against `--kb easy-vqa:train` (cross-KB). Each eval trains SmallCap once on
its KB and runs both generators with and without retrieval over the same images; CIDEr-D, BLEU-4 and ROUGE-L
come from its JSON. On `shapes`, the test images are also split by whether their caption's colour-shape
combination exists in the KB (`novel_combination`): caption transfer can only copy a KB caption, so on the novel
half it can never be exactly right; the table says how often each generator writes the exact caption there.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cross_kb import Runner, measure_defaults  # noqa: E402
from ravlm_core.config import Settings  # noqa: E402
from ravlm_core.schemas import CAPTION_PREDICTIONS, EVAL_RUNS, IMAGES
from ravlm_core.store import Store, sql_quote  # noqa: E402

log = logging.getLogger("caption_bench")
GENERATORS = ("builtin-transfer", "smallcap")
SETS = {  # name: (query dataset, --kb or None for its own train split)
    "easy_vqa": ("easy-vqa", None),
    "shapes": ("shapes", None),
    "cross_kb": ("shapes-evs", "easy-vqa:train"),
}


def caption_scores(result: dict) -> dict:
    """generator -> {with, without} -> {cider, bleu4, rouge_l} from `ravlm eval --json`."""
    caption = result.get("caption", {})
    sections = {GENERATORS[0]: caption, **caption.get("generators", {})}
    keys = ("cider", "bleu4", "rouge_l")
    return {name: {"with_retrieval": {k: _round(s.get(k)) for k in keys},
                   "without_retrieval": {k: _round(s.get("without_retrieval", {}).get(k)) for k in keys}}
            for name, s in sections.items()}


def _round(value):
    return round(value, 4) if isinstance(value, float) else value


def novel_breakdown(store: Store, run_id: str) -> dict:
    """Exact-caption rate of every caption job of the run, on test images whose combination the KB has / lacks."""
    config = json.loads(store.read(EVAL_RUNS, columns=["config"], where=f"run_id = {sql_quote(run_id)}")
                        .column("config")[0].as_py())
    jobs = config["jobs"]
    labelled = {f"{GENERATORS[0]}": jobs["caption"], f"{GENERATORS[0]} without retrieval": jobs["caption_without_retrieval"]}
    for name, ids in jobs["generators"]["caption"].items():
        labelled.update({name: ids["with"], f"{name} without retrieval": ids["without"]})
    extras = store.read(IMAGES, columns=["member_id", "extra"], where="dataset = 'shapes' AND split = 'test'")
    novel = {m: json.loads(e or "{}").get("novel_combination") == "yes"
             for m, e in zip(extras.column("member_id").to_pylist(), extras.column("extra").to_pylist())}
    out = {}
    for label, job in labelled.items():
        if job is None:  # caption transfer has no run without retrieval
            continue
        rows = store.read(CAPTION_PREDICTIONS, columns=["member_id", "prediction", "reference"],
                          where=f"job_id = {sql_quote(job)}").to_pylist()
        for group, wanted in (("novel", True), ("seen", False)):
            mine = [r for r in rows if novel.get(r["member_id"]) == wanted]
            exact = sum(r["prediction"] == r["reference"] for r in mine)
            out.setdefault(label, {})[group] = {"images": len(mine), "exact_caption": round(exact / max(1, len(mine)), 4)}
        examples = [f"{r['reference']} -> {r['prediction']}" for r in rows if novel.get(r["member_id"])][:4]
        out[label]["novel_examples"] = examples
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/ravlm-caption-bench"))
    parser.add_argument("--holdout", type=int, default=6, help="colour-shape combinations only test images show")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", action="store_true", help="keep the store a previous run left in --out")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    measure_defaults()
    out = args.out.resolve()
    if not args.reuse:
        for sub in ("data", "reports", "prefect", "shapes-src", "shapes-evs-src"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    run = Runner(out)
    run.python("generate_shapes", "benchmarks/make_shapes_dataset.py", str(out / "shapes-src"),
               "--holdout", str(args.holdout), "--seed", str(args.seed))
    run.python("generate_shapes_evs", "benchmarks/make_shapes_dataset.py", str(out / "shapes-evs-src"), "--style",
               "easy-vqa", "--seed", str(args.seed))
    run.ravlm("ingest_easy_vqa", "ingest", "easy-vqa")
    run.ravlm("ingest_shapes", "ingest", str(out / "shapes-src"), "--dataset", "shapes")
    run.ravlm("ingest_shapes_evs", "ingest", str(out / "shapes-evs-src"), "--dataset", "shapes-evs")
    run.ravlm("embed", "embed")
    generators = [arg for g in GENERATORS for arg in ("--generator", g)]
    results, store = {}, Store(Settings(data_dir=out / "data").store_uri)
    for name, (dataset, kb) in SETS.items():
        evaluated = run.ravlm(f"eval_{name}", "eval", dataset, *(["--kb", kb] if kb else []), *generators)
        results[name] = {"query": f"{dataset}:test", "kb": kb or f"{dataset}:train",
                         "captions": caption_scores(evaluated),
                         "vqa_accuracy": evaluated.get("vqa", {}).get("accuracy"), "run_id": evaluated["run_id"]}
        if name == "shapes":
            results[name]["by_novelty"] = novel_breakdown(store, evaluated["run_id"])
    report = {"results": results, "holdout": args.holdout, "seconds": {**run.seconds,
                                                                       "total": round(time.perf_counter() - started, 1)},
              "commands": run.commands}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for name, r in results.items():
        print(f"{name}: {r['query']} vs {r['kb']} (VQA accuracy {r['vqa_accuracy']})")
        for generator, scores in r["captions"].items():
            w, wo = scores["with_retrieval"], scores["without_retrieval"]
            print(f"  {generator:18s} CIDEr {w['cider']} (without retrieval {wo['cider']}), BLEU-4 {w['bleu4']} "
                  f"({wo['bleu4']})")
        for label, groups in r.get("by_novelty", {}).items():
            print(f"  {label:38s} exact caption: novel {groups['novel']['exact_caption']}, "
                  f"seen {groups['seen']['exact_caption']}")
    print("commands:", *run.commands, sep="\n  ")


if __name__ == "__main__":
    main()
