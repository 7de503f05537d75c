"""Retrieval-augmented captioning and text→image search on real photos, through the CLI as a user runs them.

    python benchmarks/real_photos.py DATA [--out /tmp/ravlm-real-photos] [--generator builtin-transfer]
                                     [--generator smallcap] [--kb-split train] [--query-split test] [--json]

DATA is a COCO-captions folder (`annotations/captions_<split>.json` beside the images: each file is ingested as
its own dataset `<name>-<split>`) or a folder with a manifest (`image`, `caption`, `split`; one row per caption),
e.g. `../shared/data/flickr8k-dev` (400 train / 100 test Flickr photos, 5 human captions each). In a fresh store
under --out: ingest, `ravlm embed` (trains the built-in encoder's heads on the train split only), then for the
test split against the train split as knowledge base:

- text→image search: every test caption a query over the test images (`ravlm eval`'s retrieval section):
  recall@K (share of the query's relevant images found in the top K) and hit@K (share of queries with one);
- the heads' train and held-out recall as the encoder's spec records them (overfitting shows as a gap);
- per generator, CIDEr-D / BLEU-4 / ROUGE-L against every reference, with retrieval and without it (where a
  generator has a no-retrieval mode), the share of degenerate captions (a bigram repeated three or more times),
  training and captioning seconds, and 10 example captions beside their references;
- reference points: a random knowledge-base caption, one constant caption, and one human caption scored against
  the other references (how far from human the numbers are).

The test split is never used to choose anything: the script only measures. Prints one JSON object with --json.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cross_kb import Runner, measure_defaults  # noqa: E402
from ravlm_core.evaluate.metrics import caption_metrics  # noqa: E402
from ravlm_core.schemas import CAPTION_PREDICTIONS, EVAL_RUNS, IMAGES  # noqa: E402
from ravlm_core.store import Store, sql_quote  # noqa: E402

log = logging.getLogger("real_photos")
DEFAULT_GENERATORS = ("builtin-transfer", "smallcap")
EXAMPLES = 10
NEAREST = "nearest-caption"
CONSTANT_CAPTION = "A dog runs through the grass ."
_WORD = re.compile(r"[a-z0-9']+")


def repeats_a_bigram(caption: str, times: int = 3) -> bool:
    """Degenerate output: some bigram occurs `times` or more times ("a man in a man is sitting on a man ...")."""
    words = _WORD.findall(caption.lower())
    counts = Counter(zip(words, words[1:]))
    return bool(counts) and max(counts.values()) >= times


def plan_ingest(data: Path, kb_split: str, query_split: str) -> tuple[list[list[str]], str, str]:
    """(ingest argument lists, KB dataset, query dataset) for a manifest folder or a COCO-captions folder.

    A COCO folder's caption files are ingested as one dataset per split, so that each file's split is its own
    listing set."""
    name = data.name
    if any((data / f"manifest.{ext}").is_file() for ext in ("jsonl", "csv", "parquet")):
        return [[str(data), "--dataset", name, "--source-format", "manifest"]], name, name
    found = {split: data / "annotations" / f"captions_{split}.json" for split in (kb_split, query_split)}
    missing = [str(p) for p in found.values() if not p.is_file()]
    if missing:
        sys.exit(f"{data} has neither a manifest nor {', '.join(missing)}: pass a COCO-captions or manifest folder")
    return ([[str(data), "--dataset", f"{name}-{split}", "--source-format", "coco", "--annotations", str(path)]
             for split, path in found.items()], f"{name}-{kb_split}", f"{name}-{query_split}")


def caption_jobs(store: Store, run_id: str) -> dict[str, dict[str, str | None]]:
    """generator -> {"with": job id, "without": job id or None} of one eval run."""
    config = json.loads(store.read(EVAL_RUNS, columns=["config"], where=f"run_id = {sql_quote(run_id)}")
                        .column("config")[0].as_py())
    jobs = config["jobs"]
    out = {}
    for name, ids in jobs.get("generators", {}).get("caption", {}).items():
        out[name] = {"with": ids.get("with"), "without": ids.get("without")}
    if jobs.get("caption"):
        first = (config.get("generators", {}).get("caption") or DEFAULT_GENERATORS)[0]
        out.setdefault(first, {"with": jobs["caption"], "without": jobs.get("caption_without_retrieval")})
    if jobs.get("caption_nearest"):  # the KB caption nearest the image vector: a baseline eval always runs
        out[NEAREST] = {"with": jobs["caption_nearest"], "without": None}
    return out


def predictions(store: Store, job: str | None) -> dict[str, str]:
    """member id -> caption written by one caption job."""
    if not job:
        return {}
    rows = store.read(CAPTION_PREDICTIONS, columns=["member_id", "prediction"], where=f"job_id = {sql_quote(job)}")
    return dict(zip(rows.column("member_id").to_pylist(), rows.column("prediction").to_pylist()))


def references(store: Store, dataset: str, split: str) -> dict[str, list[str]]:
    """member id -> every reference caption of the query set's images."""
    rows = store.read(IMAGES, columns=["member_id", "caption", "captions"],
                      where=f"dataset = {sql_quote(dataset)} AND split = {sql_quote(split)} AND removed_at IS NULL")
    return {m: list(cs or ([c] if c else [])) for m, c, cs in zip(*(rows.column(k).to_pylist()
                                                                    for k in ("member_id", "caption", "captions")))}


def scored(predicted: dict[str, str], refs: dict[str, list[str]]) -> dict:
    """CIDEr-D, BLEU-4, ROUGE-L and the degenerate share of one set of captions."""
    members = [m for m in refs if m in predicted and refs[m]]
    if not members:
        return {"evaluated": False}
    metrics = caption_metrics([predicted[m] for m in members], [refs[m] for m in members])
    degenerate = sum(repeats_a_bigram(predicted[m]) for m in members)
    return {"cider": round(metrics["cider"], 4), "bleu4": round(metrics["bleu4"], 4),
            "rouge_l": round(metrics["rouge_l"], 4), "images": len(members),
            "degenerate_share": round(degenerate / len(members), 4)}


def reference_points(store: Store, kb: str, kb_split: str, refs: dict[str, list[str]], seed: int = 0) -> dict:
    """Scores no captioner should fall to (a random KB caption, a constant) and one it should approach (human)."""
    kb_captions = sorted(c for cs in references(store, kb, kb_split).values() for c in cs)
    rng = np.random.default_rng(seed)
    members = sorted(m for m in refs if len(refs[m]) >= 2)
    random_kb = {m: kb_captions[int(rng.integers(len(kb_captions)))] for m in members} if kb_captions else {}
    human = caption_metrics([refs[m][0] for m in members], [refs[m][1:] for m in members]) if members else {}
    return {
        "random_kb_caption": scored(random_kb, refs),
        "constant_caption": {"caption": CONSTANT_CAPTION, **scored({m: CONSTANT_CAPTION for m in members}, refs)},
        "human_vs_other_references": {k: round(human[k], 4) for k in ("cider", "bleu4", "rouge_l") if k in human},
    }


def encoder_fit(data_dir: Path) -> dict:
    """What the pinned built-in encoder's spec says of its training: train vs held-out recall, when recorded."""
    pin = data_dir / "models" / "builtin.json"
    if not pin.is_file():
        return {}
    folder = Path(json.loads(pin.read_text())["model_dir"])
    folder = folder if folder.is_absolute() else data_dir / "models" / folder
    spec = json.loads((folder / "encoder.json").read_text())
    training = spec.get("training", {})
    return {"model": spec.get("image_backbone", {}).get("model"), "tag": spec.get("tag"),
            **{k: v for k, v in training.items() if "recall" in k or k in ("n_pairs", "n_captions", "epochs",
                                                                             "best_epoch", "final_loss")}}


def retrieval_section(result: dict) -> dict:
    """recall@K / hit@K / nDCG of the eval's text→image search, rounded."""
    section = (result.get("retrieval") or {}).get("text_to_image") or {}
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in section.items()}


def examples(refs: dict[str, list[str]], captions: dict[str, dict[str, str]], n: int = EXAMPLES) -> list[dict]:
    """The first `n` query images (by member id): their references beside each generator's captions."""
    out = []
    for member in sorted(refs)[:n]:
        out.append({"member_id": member, "references": refs[member],
                    **{label: written.get(member) for label, written in captions.items()}})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="a COCO-captions folder or a folder with a manifest")
    parser.add_argument("--out", type=Path, default=Path("/tmp/ravlm-real-photos"), help="work folder (emptied)")
    parser.add_argument("--generator", action="append", help=f"repeatable (default: {', '.join(DEFAULT_GENERATORS)})")
    parser.add_argument("--kb-split", default="train")
    parser.add_argument("--query-split", default="test")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    measure_defaults()
    generators = args.generator or list(DEFAULT_GENERATORS)
    data, out = args.data.resolve(), args.out.resolve()
    for sub in ("data", "reports", "prefect"):
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)

    run = Runner(out)
    ingests, kb, query = plan_ingest(data, args.kb_split, args.query_split)
    ingested = [run.ravlm(f"ingest_{i}", "ingest", *argv) for i, argv in enumerate(ingests)]
    run.ravlm("embed", "embed")
    kb_ref = f"{kb}:{args.kb_split}"
    # One caption run per generator with retrieval first, timed apart from scoring (the eval reuses them).
    for generator in generators:
        run.ravlm(f"caption_{generator}", "caption", query, "--split", args.query_split, "--kb", kb_ref,
                  "--generator", generator)
    generator_args = [a for g in generators for a in ("--generator", g)]
    result = run.ravlm("eval", "eval", query, "--split", args.query_split, "--kb", kb_ref, *generator_args)

    store = Store(str(out / "data" / "lancedb"))
    refs = references(store, query, args.query_split)
    jobs = caption_jobs(store, result["run_id"])
    per_generator, written = {}, {}
    for name in [*generators, NEAREST]:
        ids = jobs.get(name, {})
        with_retrieval, without = predictions(store, ids.get("with")), predictions(store, ids.get("without"))
        written[f"{name} (with retrieval)"] = with_retrieval
        if without:
            written[f"{name} (without retrieval)"] = without
        per_generator[name] = {
            "with_retrieval": scored(with_retrieval, refs),
            "without_retrieval": scored(without, refs) if without else "not applicable",
            "caption_seconds_with_training": run.seconds.get(f"caption_{name}"),
        }
    report = {
        "data": str(data), "kb": kb_ref, "query": f"{query}:{args.query_split}",
        "images": {"ingested": [i.get("images_seen") for i in ingested], "query": len(refs)},
        "captions_read": [i.get("captions") for i in ingested],
        "text_to_image": retrieval_section(result),
        "encoder": encoder_fit(out / "data"),
        "generators": per_generator,
        "reference_points": reference_points(store, kb, args.kb_split, refs),
        "examples": examples(refs, written),
        "seconds": run.seconds,
        "commands": run.commands,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(json.dumps({k: v for k, v in report.items() if k not in ("examples", "commands")}, indent=2))
    for example in report["examples"]:
        print("\n".join([f"- {example['references'][0]}"] + [f"    {k}: {v}" for k, v in example.items()
                                                                if k not in ("member_id", "references")]))
    print("\nreproduce:\n" + "\n".join(report["commands"]))


if __name__ == "__main__":
    main()
