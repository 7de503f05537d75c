"""Leakage guard: where near-duplicates sit in the image vector space, the threshold to use, and what the guard changes.

    python benchmarks/leakage_bench.py [--out /tmp/ravlm-leakage] [--train 600] [--test 300] [--copies 0.5]
        [--seed 0] [--thresholds 0.95 0.97 ...] [--max-false 0.01] [--compare 0.98] [--json]

In one run, on a fresh folder:
1. builds `make_leakage_dataset.py`'s folder (test images that are exact copies, JPEG re-encodes, one-pixel edits or
   resizes of train images, and distinct test images), ingests it as dataset `leak` and embeds it (the built-in
   encoder trains its heads on the train captions first);
2. from the stored image vectors: each copy's cosine to its source, each distinct test image's cosine to its nearest
   train image, and each train image's cosine to its nearest *other* train image (same-caption easy-VQA images are
   alike: the hard case for a threshold). Per candidate threshold, the share of copies the guard catches and the
   share of distinct test / train images whose nearest neighbour it wrongly drops. The recommendation: the candidate
   with the highest recall of non-exact copies among those that wrongly drop the nearest neighbour of at most
   `--max-false` of the distinct test images and of the train images (ties: the higher threshold). For comparison,
   the same statistics for two signals the guard does not use: backbone features and 16x16 pixel thumbnails;
3. `ravlm eval --dataset leak` with the guard off, on at the recommended threshold and on at `--compare` (the current
   default), in the same store, with VQA accuracy and caption BLEU-4 split into copy and distinct test images.

Prints the commands that reproduce steps 1 and 3 by hand. `--json` prints one JSON object on stdout, which is also
written to OUT/leakage_bench.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.make_leakage_dataset import KINDS, make_leakage_dataset  # noqa: E402
from ravlm_core.store import (CAPTION_PREDICTIONS, EVAL_RUNS, IMAGES, VQA_PREDICTIONS, Store,  # noqa: E402
                              image_vectors_table, sql_quote)

log = logging.getLogger("leakage_bench")

DATASET = "leak"
THRESHOLDS = (0.95, 0.97, 0.98, 0.985, 0.99, 0.995, 0.999, 0.9995, 0.9999)
NEAR_KINDS = tuple(k for k in KINDS if k != "exact")  # copies with other bytes: only the threshold can catch them
DISTINCT, TRAIN = "distinct_test_nearest_train", "train_nearest_other_train"
GROUPS = (*KINDS, "copy", "distinct")  # test image groups the eval metrics are split into
MARKER = "leakage_bench.json"


# ---- running the CLI ------------------------------------------------------------------------------------------


def cli_args(work: Path, *args: str) -> list[str]:
    return ["--data-dir", str(work / "data"), "--reports-dir", str(work / "reports"), *args, "--json"]


def ravlm(work: Path, env: dict[str, str], *args: str) -> tuple[dict, float]:
    """One CLI command as a user would run it; returns its --json output and wall-clock seconds."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("RAVLM_LEAKAGE_GUARD", "RAVLM_NEAR_DUPLICATE")}
    full_env.update(PREFECT_HOME=str(work / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false", **env)
    command = [sys.executable, "-m", "flows.cli", *cli_args(work, *args)]
    log.info("%s ravlm %s", " ".join(f"{k}={v}" for k, v in env.items()), " ".join(args))
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=full_env, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"{shlex.join(command)} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout), time.perf_counter() - start


def reproduce(work: Path, args: argparse.Namespace, guard_envs: dict[str, dict]) -> list[str]:
    """The commands that redo the build and the evals by hand."""
    def line(env: dict, *cli: str) -> str:
        prefix = " ".join(f"{k}={v}" for k, v in env.items())
        return (prefix + " " if prefix else "") + shlex.join(["ravlm", *cli_args(work, *cli)])

    return [
        f"export PREFECT_HOME={shlex.quote(str(work / 'prefect'))} PREFECT_SERVER_ANALYTICS_ENABLED=false",
        shlex.join(["python", "benchmarks/make_leakage_dataset.py", str(work / "dataset"), "--train", str(args.train),
                    "--test", str(args.test), "--copies", str(args.copies), "--seed", str(args.seed)]),
        line({}, "ingest", str(work / "dataset"), "--dataset", DATASET),
        line({}, "embed"),
        *(line(env, "eval", "--dataset", DATASET) for env in guard_envs.values()),
    ]


# ---- similarities ---------------------------------------------------------------------------------------------


def listings(store: Store) -> dict[str, dict]:
    """path → {member_id, image_id, split} for every listed image of the dataset."""
    rows = store.read(IMAGES, columns=["member_id", "image_id", "split", "path"],
                      where=f"dataset = {sql_quote(DATASET)} AND removed_at IS NULL").to_pylist()
    return {r["path"]: r for r in rows}


def stored_vectors(store: Store, model_tag: str, listed: dict[str, dict]) -> dict[str, np.ndarray]:
    """path → its stored image vector (unit float32 [d])."""
    rows = store.read(image_vectors_table(model_tag), columns=["image_id", "vector"])
    flat = rows.column("vector").combine_chunks()
    matrix = flat.values.to_numpy(zero_copy_only=False).reshape(len(flat), -1)  # [n, d]
    vectors = dict(zip(rows.column("image_id").to_pylist(), matrix))
    return {path: vectors[row["image_id"]] for path, row in listed.items()}


def backbone_vectors(dataset_dir: Path, model_ref: str, paths: list[str]) -> dict[str, np.ndarray]:
    """path → the frozen EfficientNet-Lite0 features (pooled, unit rows) the alignment head turns into the vector."""
    import torch

    from ravlm_core.encoders.backbones import ImageBackbone, ImagePreprocessing
    from ravlm_core.encoders.builtin import read_spec
    from ravlm_core.encoders.runtime import inference, unit_rows
    from ravlm_core.imaging import open_rgb

    pre = read_spec(Path(model_ref)).preprocessing
    backbone = ImageBackbone(ImagePreprocessing(pre.image_size, pre.mean, pre.std))
    features = []
    with inference("cpu"):
        for start in range(0, len(paths), 64):
            images = [open_rgb(dataset_dir / p) for p in paths[start : start + 64]]
            features.append(backbone.features(images))
    return dict(zip(paths, unit_rows(torch.cat(features))))


def thumbnail_vectors(dataset_dir: Path, paths: list[str]) -> dict[str, np.ndarray]:
    """path → 16x16 RGB box thumbnail (float32 [768], 0-255), as the dataset maker compares them."""
    from benchmarks.make_leakage_dataset import _thumbnail  # the very same thumbnail, not a look-alike

    return {p: _thumbnail(dataset_dir / p) for p in paths}


def closeness(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """[n, m], higher is closer: cosine of unit rows, or minus the mean absolute pixel difference."""
    if metric == "cosine":
        return a @ b.T
    return -np.concatenate([np.abs(a[i : i + 64, None, :] - b[None]).mean(-1) for i in range(0, len(a), 64)])


def measure(vectors: dict[str, np.ndarray], leakage: dict, train_paths: list[str],
            metric: str) -> dict[str, np.ndarray]:
    """Closeness per group: copies to their source; distinct test images and train images to their nearest train image.

    `train_paths` holds one path per distinct train content, so no train image meets its own bytes as "other".
    """
    train = np.stack([vectors[p] for p in train_paths])
    out: dict[str, np.ndarray] = {}
    for kind in KINDS:
        pairs = [(e["image"], e["of"]) for e in leakage["test"] if e["kind"] == kind]
        out[kind] = np.array([closeness(vectors[q][None], vectors[s][None], metric)[0, 0] for q, s in pairs])
    distinct = [e["image"] for e in leakage["test"] if not e["copy"]]
    out[DISTINCT] = closeness(np.stack([vectors[p] for p in distinct]), train, metric).max(1)
    among = closeness(train, train, metric)
    np.fill_diagonal(among, -np.inf)
    out[TRAIN] = among.max(1)
    return out


def stats(values: np.ndarray, sign: float) -> dict:
    """min / p5 / median / p95 / max in the signal's own units (sign -1 turns closeness back into a distance)."""
    v = np.sort(values * sign)
    q = lambda p: round(float(np.percentile(v, p)), 6)  # noqa: E731
    return {"n": len(v), "min": q(0), "p5": q(5), "median": q(50), "p95": q(95), "max": q(100)}


def loosest_cut(groups: dict[str, np.ndarray], max_false: float) -> dict:
    """The loosest closeness cut at which at most `max_false` of distinct test images and of train images count as
    near-duplicates, and the share of non-exact copies it catches (cut ≤ closeness means caught)."""
    cut = -np.inf
    for hard in (groups[DISTINCT], groups[TRAIN]):
        allowed = int(np.floor(max_false * len(hard)))
        cut = max(cut, np.nextafter(np.sort(hard)[::-1][allowed], np.inf) if allowed < len(hard) else -np.inf)
    near = np.concatenate([groups[k] for k in NEAR_KINDS])
    return {"cut": float(cut), "near_copies_caught": round(float((near >= cut).mean()), 4),
            **{kind: round(float((groups[kind] >= cut).mean()), 4) for kind in NEAR_KINDS}}


def threshold_table(groups: dict[str, np.ndarray], thresholds: list[float]) -> list[dict]:
    """Per threshold (the guard drops KB hits at cosine >= threshold): copies caught and images wrongly affected."""
    near = np.concatenate([groups[k] for k in NEAR_KINDS])
    share = lambda values, t: round(float((values >= t).mean()), 4)  # noqa: E731
    # Exact copies are always caught: the guard drops the query's own image id whatever the threshold.
    return [{"threshold": t, "caught": {"exact": 1.0, **{k: share(groups[k], t) for k in NEAR_KINDS},
                                        "near_copies": share(near, t)},
             "distinct_test_affected": share(groups[DISTINCT], t), "train_affected": share(groups[TRAIN], t)}
            for t in thresholds]


def recommend(table: list[dict], max_false: float) -> dict:
    ok = [r for r in table if r["distinct_test_affected"] <= max_false and r["train_affected"] <= max_false]
    rule = (f"highest recall of non-exact copies among thresholds that wrongly drop the nearest neighbour of at most "
            f"{max_false:.0%} of distinct test images and of train images; ties: the higher threshold")
    if not ok:
        best = max(table, key=lambda r: r["threshold"])
        return {"threshold": best["threshold"], "rule": rule, "met": False, "row": best}
    best = max(ok, key=lambda r: (r["caught"]["near_copies"], r["threshold"]))
    return {"threshold": best["threshold"], "rule": rule, "met": True, "row": best}


# ---- evaluation -----------------------------------------------------------------------------------------------


def member_groups(listed: dict[str, dict], leakage: dict) -> dict[str, str]:
    """member_id of each test listing → its kind (exact, jpeg, pixel, resize) or "distinct"."""
    return {listed[e["image"]]["member_id"]: e["kind"] or "distinct" for e in leakage["test"]}


def job_ids(store: Store, run_id: str) -> dict[str, str]:
    row = store.read(EVAL_RUNS, columns=["config"], where=f"run_id = {sql_quote(run_id)}").to_pylist()
    return json.loads(row[0]["config"])["jobs"]


def split_metrics(store: Store, jobs: dict[str, str], groups: dict[str, str]) -> dict:
    """Per job role and test image group: accuracy or BLEU-4, guard drops, neighbours kept."""
    from ravlm_core.metrics import caption_metrics, vqa_metrics

    out: dict = {}
    for role, job in jobs.items():
        table = CAPTION_PREDICTIONS if role.startswith("caption") else VQA_PREDICTIONS
        rows = store.read(table, where=f"job_id = {sql_quote(job)}").to_pylist()
        out[role] = {}
        for group in GROUPS:
            kinds = set(KINDS) if group == "copy" else {group}
            mine = [r for r in rows if groups.get(r["member_id"]) in kinds]
            if not mine:
                continue
            if table == VQA_PREDICTIONS:
                score = {"accuracy": round(vqa_metrics([r["answer"] for r in mine],
                                                       [r["prediction"] for r in mine])["accuracy"], 4)}
            else:
                score = {"bleu4": round(caption_metrics([r["prediction"] for r in mine],
                                                        [[r["reference"]] for r in mine])["bleu4"], 4)}
            kept = [len(r["neighbour_ids"] or []) for r in mine]
            out[role][group] = {"items": len(mine), **score,
                                "near_duplicate_items": sum((r["near_duplicates"] or 0) > 0 for r in mine),
                                "mean_neighbours": round(float(np.mean(kept)), 2),
                                "no_neighbours": sum(n == 0 for n in kept)}
    return out


def overall(result: dict) -> dict:
    """The headline figures of one `ravlm eval --json`."""
    vqa, caption = result.get("vqa", {}), result.get("caption", {})
    figures = {
        "vqa_accuracy": vqa.get("accuracy"), "vqa_near_duplicate_items": vqa.get("near_duplicate_items"),
        "vqa_items": vqa.get("items"),
        "voting_accuracy": vqa.get("voting", {}).get("accuracy"),
        "voting_near_duplicate_items": vqa.get("voting", {}).get("near_duplicate_items"),
        "without_retrieval_accuracy": vqa.get("without_retrieval", {}).get("accuracy"),
        "caption_bleu4": caption.get("bleu4"), "caption_near_duplicate_items": caption.get("near_duplicate_items"),
        "caption_items": caption.get("items"),
        "caption_without_retrieval_bleu4": caption.get("without_retrieval", {}).get("bleu4"),
    }
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}


def checks(similarity: dict, evals: dict) -> dict:
    """What must hold if the pipeline is right; reported, not asserted, so the numbers still come out."""
    out = {"exact_copy_cosine_min": similarity["exact"]["min"]}
    for label, run in evals.items():
        if label == "off":
            out["off: voting accuracy on exact copies"] = run["by_group"]["vqa_voting"]["exact"]["accuracy"]
            continue
        for role in ("vqa", "vqa_voting", "caption"):
            exact = run["by_group"][role]["exact"]
            out[f"{label}: {role} exact copies caught"] = round(exact["near_duplicate_items"] / exact["items"], 4)
    no_retrieval = {label: run["overall"]["without_retrieval_accuracy"] for label, run in evals.items()}
    out["without-retrieval accuracy equal across guard settings"] = len(set(no_retrieval.values())) == 1
    return out


# ---- the run --------------------------------------------------------------------------------------------------


def prepare(work: Path) -> None:
    """A new or empty folder, or one an earlier run of this script filled (its contents are replaced)."""
    if work.exists() and any(work.iterdir()) and not (work / MARKER).is_file():
        sys.exit(f"{work} is not empty and holds no {MARKER}: pick a new or empty folder with --out")
    for name in ("dataset", "data", "reports", "prefect", MARKER):
        target = work / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).write_text('{"status": "running"}\n')


def run(args: argparse.Namespace) -> dict:
    work = args.out.resolve()
    prepare(work)
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    leakage = make_leakage_dataset(work / "dataset", n_train=args.train, n_test=args.test, copies=args.copies,
                                   seed=args.seed)
    timings["dataset"] = time.perf_counter() - tick
    _, timings["ingest"] = ravlm(work, {}, "ingest", str(work / "dataset"), "--dataset", DATASET)
    embedded, timings["embed"] = ravlm(work, {}, "embed")

    tick = time.perf_counter()
    store = Store(str(work / "data" / "lancedb"))
    listed = listings(store)
    train_paths = list({r["image_id"]: p for p, r in sorted(listed.items()) if r["split"] == "train"}.values())
    vectors = stored_vectors(store, embedded["model_tag"], listed)
    groups = measure(vectors, leakage, train_paths, "cosine")
    table = threshold_table(groups, args.thresholds)
    choice = recommend(table, args.max_false)
    stored = {"space": f"stored image vectors ({embedded['model_tag']}), cosine",
              "stats": {g: stats(v, 1) for g, v in groups.items()},
              "loosest_cut_at_max_false": {**(cut := loosest_cut(groups, args.max_false)), "cut": round(cut["cut"], 6)}}
    timings["similarity"] = time.perf_counter() - tick

    tick = time.perf_counter()
    paths = sorted(listed)
    others = {}
    for name, vecs, metric in (
        ("backbone_cosine", backbone_vectors(work / "dataset", embedded["model_ref"], paths), "cosine"),
        ("thumbnail_mad", thumbnail_vectors(work / "dataset", paths), "mad"),
    ):
        found = measure(vecs, leakage, train_paths, metric)
        sign = 1 if metric == "cosine" else -1
        cut = loosest_cut(found, args.max_false)
        others[name] = {"stats": {g: stats(v, sign) for g, v in found.items()},
                        "loosest_cut_at_max_false": {**cut, "cut": round(cut["cut"] * sign, 6)}}
    timings["other_signals"] = time.perf_counter() - tick

    guard_envs = {"off": {"RAVLM_LEAKAGE_GUARD": "false"},
                  f"on@{choice['threshold']}": {"RAVLM_LEAKAGE_GUARD": "true",
                                                "RAVLM_NEAR_DUPLICATE": str(choice["threshold"])}}
    if args.compare is not None and args.compare != choice["threshold"]:
        guard_envs[f"on@{args.compare}"] = {"RAVLM_LEAKAGE_GUARD": "true", "RAVLM_NEAR_DUPLICATE": str(args.compare)}
    membership = member_groups(listed, leakage)
    evals = {}
    for label, env in guard_envs.items():
        result, seconds = ravlm(work, env, "eval", "--dataset", DATASET)
        timings[f"eval {label}"] = seconds
        evals[label] = {"run_id": result["run_id"], "overall": overall(result),
                        "by_group": split_metrics(store, job_ids(store, result["run_id"]), membership)}

    report = {
        "sizes": {"train": args.train, "test": args.test, "copies": args.copies, "seed": args.seed},
        "dataset": {k: leakage[k] for k in ("copies", "distinct", "near_duplicates_skipped", "manifest_rows")},
        "model_tag": embedded["model_tag"],
        "similarity": stored,
        "thresholds": table,
        "recommendation": {**choice, "max_false": args.max_false,
                           "current_default": args.compare,
                           "at_current_default": next((r for r in table if r["threshold"] == args.compare), None)},
        "other_signals": others,
        "eval": evals,
        "checks": checks(stored["stats"], evals),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "commands": [shlex.join(["python", "benchmarks/leakage_bench.py", *sys.argv[1:]])]
        + reproduce(work, args, guard_envs),
    }
    (work / MARKER).write_text(json.dumps(report, indent=1) + "\n")
    return report


# ---- human output ---------------------------------------------------------------------------------------------


def print_human(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()

    def table(title: str, columns: list[str], rows: list[list]) -> None:
        t = Table(title=title)
        for c in columns:
            t.add_column(c)
        for r in rows:
            t.add_row(*("" if x is None else str(x) for x in r))
        console.print(t)

    cols = ["n", "min", "p5", "median", "p95", "max"]
    table(report["similarity"]["space"], ["group", *cols],
          [[g, *(s[c] for c in cols)] for g, s in report["similarity"]["stats"].items()])
    table("threshold (drop KB hits at cosine >= t)",
          ["t", *NEAR_KINDS, "near copies caught", "distinct test affected", "train affected"],
          [[r["threshold"], *(r["caught"][k] for k in NEAR_KINDS), r["caught"]["near_copies"],
            r["distinct_test_affected"], r["train_affected"]] for r in report["thresholds"]])
    for name, signal in report["other_signals"].items():
        cut = signal["loosest_cut_at_max_false"]
        table(f"{name} (not used by the guard): loosest cut {cut['cut']} catches {cut['near_copies_caught']} of "
              "near copies", ["group", *cols], [[g, *(s[c] for c in cols)] for g, s in signal["stats"].items()])
    keys = list(next(iter(report["eval"].values()))["overall"])
    table("ravlm eval --dataset leak", ["metric", *report["eval"]],
          [[k, *(run["overall"][k] for run in report["eval"].values())] for k in keys])
    rows = []
    for label, run in report["eval"].items():
        for role, by_group in run["by_group"].items():
            for group, m in by_group.items():
                rows.append([label, role, group, m["items"], m.get("accuracy", m.get("bleu4")),
                             m["near_duplicate_items"], m["mean_neighbours"], m["no_neighbours"]])
    table("by test image group", ["guard", "job", "group", "items", "accuracy / BLEU-4", "near-dup items",
                                  "mean neighbours", "no neighbours"], rows)
    table("checks", ["check", "value"], [[k, v] for k, v in report["checks"].items()])
    rec = report["recommendation"]
    console.print(f"recommended near_duplicate: {rec['threshold']} ({'meets' if rec['met'] else 'NO candidate meets'} "
                  f"the rule: {rec['rule']})")
    console.print("timings (s): " + ", ".join(f"{k} {v}" for k, v in report["timings_s"].items()))
    console.print("reproduce:\n  " + "\n  ".join(report["commands"]), soft_wrap=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/ravlm-leakage"), help="work folder (replaced)")
    parser.add_argument("--train", type=int, default=600, help="train images")
    parser.add_argument("--test", type=int, default=300, help="test images")
    parser.add_argument("--copies", type=float, default=0.5, help="share of test images that copy a train image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS),
                        help="candidate near_duplicate cosines")
    parser.add_argument("--max-false", type=float, default=0.01,
                        help="largest share of distinct test / train images whose nearest neighbour may be dropped")
    parser.add_argument("--compare", type=float, default=0.98,
                        help="also evaluate the guard at this threshold (the current default)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_human(report)


if __name__ == "__main__":
    main()
