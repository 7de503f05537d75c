"""Leakage guard: why it compares pixel signatures, the near-duplicate distance to use, and what the guard changes.

    python benchmarks/leakage_bench.py [--out /tmp/ravlm-leakage] [--train 400] [--test 200] [--copies 0.5]
        [--seed 0] [--distances 1 1.5 2 ...] [--max-false 0.01] [--eval-at 3.0 ...] [--no-source-train] [--json]

In one run, on a fresh folder:
1. builds `make_leakage_dataset.py`'s folder (test images that are exact copies, JPEG re-encodes, one-pixel edits or
   resizes of train images, and distinct test images), ingests it as dataset `leak` and embeds it;
2. measures, per group, how close each copy is to its source, each distinct test image to its nearest train image
   and each train image to its nearest *other* train image (same-class easy-VQA images are alike: the hard case).
   First, compactly, in the stored image vectors (cosine): the evidence why the guard does not use them (copies and
   distinct images overlap). Then with the guard's own signal, the pixel signature stored at ingest
   (`contents.signature`, mean absolute difference in grey levels, as `imaging.signature_distance`), also over
   easy-VQA's whole train split (4,000 images, signatures computed from the decoded files: a bigger knowledge base
   has closer neighbours). Per candidate distance, the share of copies the guard catches and the share of images
   without a copy whose nearest neighbour it would wrongly drop. The rule: the highest recall of non-exact copies
   among candidates that wrongly affect at most `--max-false` of each group without a copy; the default
   `near_duplicate_distance` holds up when it is one of those;
3. `ravlm eval leak` with the guard off and on at `--eval-at` (default: the library default), in the same
   store, with VQA fusion / voting accuracy, caption BLEU-4 and `near_duplicate_items` (counted with the guard off
   too) overall and per test image group, and how often a copy's source is among the neighbours kept.

Prints the commands that reproduce steps 1 and 3 by hand. `--json` prints one JSON object on stdout, which is also
written to OUT/leakage_bench.json.
"""
from __future__ import annotations

import argparse
import hashlib
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

from benchmarks.make_leakage_dataset import KINDS, NEAR_DUPLICATE_MAD, make_leakage_dataset  # noqa: E402
from ravlm_core.config import Settings  # noqa: E402
from ravlm_core.retrieval.search import kb_filter, signatures_of  # noqa: E402
from ravlm_core.schemas import CAPTION_PREDICTIONS, EVAL_RUNS, IMAGES, VQA_PREDICTIONS, image_vectors_table  # noqa: E402
from ravlm_core.store import Store, sql_quote  # noqa: E402

log = logging.getLogger("leakage_bench")

DATASET = "leak"
DEFAULT_DISTANCE = Settings.model_fields["near_duplicate_distance"].default
DISTANCES = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0)
NEAR_KINDS = tuple(k for k in KINDS if k != "exact")  # copies with other bytes: only the distance can catch them
DISTINCT, TRAIN = "distinct_test_nearest_train", "train_nearest_other_train"
# Each image of the source's whole train split (easy-VQA: 4,000) vs its nearest other: nearest neighbours come
# closer as the knowledge base grows, so a distance fitted on a few hundred train images alone is optimistic.
SOURCE_TRAIN = "source_train_nearest_other_train"
HARD = (DISTINCT, TRAIN, SOURCE_TRAIN)  # images with no copy anywhere: whatever the guard drops for them is wrong
GROUPS = (*KINDS, "copy", "distinct")  # test image groups the eval metrics are split into
MARKER = "leakage_bench.json"
GUARD_ENV = ("RAVLM_LEAKAGE_GUARD", "RAVLM_NEAR_DUPLICATE_DISTANCE")
ROLE_NAMES = {"vqa": "vqa fusion", "vqa_without_retrieval": "vqa no-retr.", "vqa_voting": "vqa voting",
              "caption": "caption", "caption_without_retrieval": "caption direct"}


# ---- running the CLI ------------------------------------------------------------------------------------------


def cli_args(work: Path, *args: str) -> list[str]:
    return ["--data-dir", str(work / "data"), "--reports-dir", str(work / "reports"), *args, "--json"]


def ravlm(work: Path, env: dict[str, str], *args: str) -> tuple[dict, float]:
    """One CLI command as a user would run it; returns its --json output and wall-clock seconds."""
    full_env = {k: v for k, v in os.environ.items() if k not in GUARD_ENV}
    full_env.update(PREFECT_HOME=str(work / "prefect"), **env)
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
        f"export PREFECT_HOME={shlex.quote(str(work / 'prefect'))}",
        shlex.join(["python", "benchmarks/make_leakage_dataset.py", str(work / "dataset"), "--train", str(args.train),
                    "--test", str(args.test), "--copies", str(args.copies), "--seed", str(args.seed)]),
        line({}, "ingest", str(work / "dataset"), "--dataset", DATASET),
        line({}, "embed"),
        *(line(env, "eval", DATASET) for env in guard_envs.values()),
    ]


# ---- what is stored -------------------------------------------------------------------------------------------


def listings(store: Store) -> dict[str, dict]:
    """path → {member_id, image_id, split} for every listed image of the dataset."""
    rows = store.read(IMAGES, columns=["member_id", "image_id", "split", "path"], where=kb_filter(DATASET)).to_pylist()
    return {r["path"]: r for r in rows}


def stored_vectors(store: Store, model_tag: str, listed: dict[str, dict]) -> dict[str, np.ndarray]:
    """path → its stored image vector (unit float32 [d])."""
    rows = store.read(image_vectors_table(model_tag), columns=["image_id", "vector"])
    flat = rows.column("vector").combine_chunks()
    matrix = flat.values.to_numpy(zero_copy_only=False).reshape(len(flat), -1)  # [n, d]
    vectors = dict(zip(rows.column("image_id").to_pylist(), matrix))
    return {path: vectors[row["image_id"]] for path, row in listed.items()}


def stored_signatures(store: Store, listed: dict[str, dict]) -> dict[str, np.ndarray]:
    """path → the pixel signature ingest stored for its content (`contents.signature`, uint8 [768])."""
    found = signatures_of(store, {row["image_id"] for row in listed.values()})
    return {path: np.frombuffer(found[row["image_id"]], np.uint8) for path, row in listed.items()}


def signatures_match_files(dataset_dir: Path, signatures: dict[str, np.ndarray]) -> bool:
    """Whether every stored signature is `imaging.signature` of the file as decoded now."""
    from ravlm_core.imaging import open_rgb, signature

    return all(signature(open_rgb(dataset_dir / p)) == s.tobytes() for p, s in signatures.items())


def source_train_signatures() -> np.ndarray:
    """Signatures of easy-VQA's whole train split, one per distinct file content (uint8 [n, 768]), computed from the
    decoded files as ingest does (no ingest, no embedding). Files with the same bytes share an image id, so the
    guard treats them as the query's own bytes: they count once."""
    from ravlm_core.imaging import open_rgb, signature
    from ravlm_core.ingest.easy_vqa import EASY_VQA
    from ravlm_core.ingest.sources import open_source

    by_content: dict[str, np.ndarray] = {}
    for record in (r for r in open_source(EASY_VQA)[0] if r.split == "train"):
        data = Path(record.path).read_bytes()
        by_content.setdefault(hashlib.sha256(data).hexdigest(), np.frombuffer(signature(open_rgb(data)), np.uint8))
    return np.stack(list(by_content.values()))


# ---- distances ------------------------------------------------------------------------------------------------
# Both signals as distances (lower = closer): minus the cosine of unit vectors, or the signatures' mean absolute
# difference in grey levels (`imaging.signature_distance`, what the guard compares to near_duplicate_distance).


def pair_distance(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """[n]: row i of `a` against row i of `b`."""
    if metric == "cosine":
        return -(a * b).sum(1)
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(1)


def all_distances(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """[n, m]: every row of `a` against every row of `b`."""
    if metric == "cosine":
        return -(a @ b.T)
    import torch

    # Sums of absolute uint8 differences are integers below 2**24: exact in float32.
    sums = torch.cdist(torch.from_numpy(a.astype(np.float32)), torch.from_numpy(b.astype(np.float32)), p=1)
    return sums.double().numpy() / a.shape[1]


def nearest_other(a: np.ndarray, metric: str) -> np.ndarray:
    """[n]: each row's distance to its nearest other row."""
    d = all_distances(a, a, metric)
    np.fill_diagonal(d, np.inf)
    return d.min(1)


def measure(vectors: dict[str, np.ndarray], leakage: dict, train_paths: list[str], metric: str) -> dict[str, np.ndarray]:
    """Distance per group: copies to their source; distinct test images and train images to their nearest train image.

    `train_paths` holds one path per distinct train content, so no train image meets its own bytes as "other".
    """
    out: dict[str, np.ndarray] = {}
    for kind in KINDS:
        pairs = [(e["image"], e["of"]) for e in leakage["test"] if e["kind"] == kind]
        out[kind] = pair_distance(np.stack([vectors[q] for q, _ in pairs]), np.stack([vectors[s] for _, s in pairs]),
                                  metric)
    train = np.stack([vectors[p] for p in train_paths])
    distinct = np.stack([vectors[e["image"]] for e in leakage["test"] if not e["copy"]])
    out[DISTINCT] = all_distances(distinct, train, metric).min(1)
    out[TRAIN] = nearest_other(train, metric)
    return out


def stats(values: np.ndarray, sign: float, points: tuple[int, ...]) -> dict:
    """n and percentiles in the signal's own units (sign -1 turns minus-cosine back into a cosine)."""
    v = np.sort(values * sign)
    names = {0: "min", 50: "median", 100: "max"}
    return {"n": len(v), **{names.get(p, f"p{p}"): round(float(np.percentile(v, p)), 4) for p in points}}


def loosest_cut(groups: dict[str, np.ndarray], max_false: float) -> dict:
    """The loosest cut (caught: distance <= cut) that affects at most `max_false` of each group of images without a
    copy, and the share of non-exact copies it catches."""
    cut = np.inf
    for hard in (np.sort(groups[g]) for g in HARD if g in groups):
        allowed = int(np.floor(max_false * len(hard)))
        if allowed < len(hard):
            cut = min(cut, float(np.nextafter(hard[allowed], -np.inf)))
    near = np.concatenate([groups[k] for k in NEAR_KINDS])
    return {"cut": cut, "near_copies_caught": round(float((near <= cut).mean()), 4)}


def distance_table(groups: dict[str, np.ndarray], distances: list[float]) -> list[dict]:
    """Per candidate distance (the guard drops KB hits whose signature is within it): the share of copies caught,
    and the share of images without a copy whose nearest neighbour it would wrongly drop."""
    near = np.concatenate([groups[k] for k in NEAR_KINDS])
    share = lambda values, d: round(float((values <= d).mean()), 4)  # noqa: E731
    # Exact copies are always caught: the guard drops the query's own image id whatever the distance.
    return [{"distance": d, "caught": {"exact": 1.0, **{k: share(groups[k], d) for k in NEAR_KINDS},
                                       "near_copies": share(near, d)},
             "wrongly_affected": {g: share(groups[g], d) for g in HARD if g in groups}}
            for d in distances]


def verdict(table: list[dict], groups: dict[str, np.ndarray], max_false: float, default: float) -> dict:
    """Which candidates the rule accepts, the one it picks, and whether the default distance holds up."""
    ok = [r for r in table if max(r["wrongly_affected"].values()) <= max_false]
    rule = (f"highest recall of non-exact copies among distances that wrongly drop the nearest neighbour of at most "
            f"{max_false:.0%} of the images in each of {', '.join(table[0]['wrongly_affected'])}")
    near = np.concatenate([groups[k] for k in NEAR_KINDS])
    margins = {"farthest_near_copy": round(float(near.max()), 4),
               **{f"closest_{g}": round(float(groups[g].min()), 4) for g in HARD if g in groups}}
    if not ok:
        return {"rule": rule, "met": False, "accepted": [], "pick": None, "default": default,
                "default_holds": False, "margins": margins}
    best = max(r["caught"]["near_copies"] for r in ok)
    accepted = [r for r in ok if r["caught"]["near_copies"] == best]
    # Among equals: the fewest wrong drops, then the larger distance (headroom for harsher copies than these).
    pick = min(accepted, key=lambda r: (max(r["wrongly_affected"].values()), -r["distance"]))
    at_default = next((r for r in table if r["distance"] == default), None)
    if at_default is None:  # the default is not a candidate: judge it all the same
        at_default = distance_table(groups, [default])[0]
    holds = (max(at_default["wrongly_affected"].values()) <= max_false and at_default["caught"]["near_copies"] == best)
    return {"rule": rule, "met": True, "accepted": [r["distance"] for r in accepted], "pick": pick["distance"],
            "pick_row": pick, "default": default, "default_holds": holds, "at_default": at_default,
            "margins": margins}


# ---- evaluation -----------------------------------------------------------------------------------------------


def test_items(listed: dict[str, dict], leakage: dict) -> dict[str, tuple[str, str | None]]:
    """member_id of each test listing → (its kind or "distinct", the image id of the train image it copies)."""
    return {listed[e["image"]]["member_id"]: (e["kind"] or "distinct", listed[e["of"]]["image_id"] if e["of"] else None)
            for e in leakage["test"]}


def job_config(store: Store, run_id: str) -> dict:
    row = store.read(EVAL_RUNS, columns=["config"], where=f"run_id = {sql_quote(run_id)}").to_pylist()
    return json.loads(row[0]["config"])


def split_metrics(store: Store, jobs: dict[str, str], items: dict[str, tuple[str, str | None]]) -> dict:
    """Per job role and test image group: accuracy or BLEU-4, items with a near-duplicate among the hits, and for
    retrieval jobs the neighbours kept and how often a copy's source is one of them."""
    from ravlm_core.evaluate.metrics import caption_metrics, vqa_metrics

    out: dict = {}
    for role, job in jobs.items():
        table = CAPTION_PREDICTIONS if role.startswith("caption") else VQA_PREDICTIONS
        rows = store.read(table, where=f"job_id = {sql_quote(job)}").to_pylist()
        out[role] = {}
        for group in GROUPS:
            kinds = set(KINDS) if group == "copy" else {group}
            mine = [r for r in rows if items.get(r["member_id"], ("",))[0] in kinds]
            if not mine:
                continue
            if table == VQA_PREDICTIONS:
                score = {"accuracy": round(vqa_metrics([r["answer"] for r in mine],
                                                       [r["prediction"] for r in mine])["accuracy"], 4)}
            else:
                score = {"bleu4": round(caption_metrics([r["prediction"] for r in mine],
                                                        [[r["reference"]] for r in mine])["bleu4"], 4)}
            m = {"items": len(mine), **score,
                 "near_duplicate_items": sum((r["near_duplicates"] or 0) > 0 for r in mine)}
            if not role.endswith("without_retrieval"):
                kept = [r["neighbour_ids"] or [] for r in mine]
                m["mean_neighbours"] = round(float(np.mean([len(k) for k in kept])), 2)
                if group != "distinct":
                    sources = [items[r["member_id"]][1] for r in mine]
                    m["source_retrieved"] = round(float(np.mean([s in k for s, k in zip(sources, kept)])), 4)
            out[role][group] = m
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


def evaluate_guards(work: Path, store: Store, guard_envs: dict[str, dict], items: dict, timings: dict) -> dict:
    """`ravlm eval` once per guard setting, in the same store: headline figures and figures per test image group."""
    evals = {}
    for label, env in guard_envs.items():
        result, timings[f"eval {label}"] = ravlm(work, env, "eval", DATASET)
        config = job_config(store, result["run_id"])
        evals[label] = {"run_id": result["run_id"], "retrieval": config.get("retrieval"), "overall": overall(result),
                        "by_group": split_metrics(store, config["jobs"], items)}
    return evals


def checks(signature_groups: dict[str, np.ndarray], signatures_ok: bool, listed: dict, leakage: dict,
           evals: dict) -> dict:
    """What must hold if the pipeline is right; reported, not asserted, so the numbers still come out."""
    exact_same_id = all(listed[e["image"]]["image_id"] == listed[e["of"]]["image_id"]
                        for e in leakage["test"] if e["kind"] == "exact")
    out = {"stored signatures = imaging.signature of the files": signatures_ok,
           "exact copies share their source's image id": exact_same_id,
           "exact copies at signature distance 0": float(signature_groups["exact"].max()) == 0.0}
    for label, run in evals.items():
        for role in ("vqa", "vqa_voting", "caption"):
            copy, distinct = run["by_group"][role]["copy"], run["by_group"][role]["distinct"]
            out[f"{label}: {role} copies counted as near-duplicate"] = round(copy["near_duplicate_items"]
                                                                             / copy["items"], 4)
            out[f"{label}: {role} distinct counted as near-duplicate"] = round(distinct["near_duplicate_items"]
                                                                               / distinct["items"], 4)
            out[f"{label}: {role} copies retrieving their source"] = copy["source_retrieved"]
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
    """Steps 1-3 of the module docstring; returns the report (also written to OUT/leakage_bench.json)."""
    work = args.out.resolve()
    prepare(work)
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    leakage = make_leakage_dataset(work / "dataset", n_train=args.train, n_test=args.test, copies=args.copies,
                                   seed=args.seed)
    timings["dataset"] = time.perf_counter() - tick
    _, timings["ingest"] = ravlm(work, {}, "ingest", str(work / "dataset"), "--dataset", DATASET)
    embedded, timings["embed"] = ravlm(work, {}, "embed")

    store = Store(str(work / "data" / "lancedb"))
    listed = listings(store)
    train_paths = list({r["image_id"]: p for p, r in sorted(listed.items()) if r["split"] == "train"}.values())

    tick = time.perf_counter()
    cos_groups = measure(stored_vectors(store, embedded["model_tag"], listed), leakage, train_paths, "cosine")
    cut = loosest_cut(cos_groups, args.max_false)
    cosine = {"space": f"stored image vectors ({embedded['model_tag']}), cosine",
              "stats": {g: stats(v, -1, (0, 50, 100)) for g, v in cos_groups.items()},
              "loosest_cut_at_max_false": {"cosine": round(-cut["cut"], 6),
                                           "near_copies_caught": cut["near_copies_caught"]}}
    timings["cosine"] = time.perf_counter() - tick

    tick = time.perf_counter()
    signatures = stored_signatures(store, listed)
    groups = measure(signatures, leakage, train_paths, "mad")
    if args.source_train:
        groups[SOURCE_TRAIN] = nearest_other(source_train_signatures(), "mad")
    table = distance_table(groups, args.distances)
    cut = loosest_cut(groups, args.max_false)
    signature = {
        "signal": "contents.signature (16x16 RGB), mean absolute difference in grey levels",
        "stats": {g: stats(v, 1, (0, 1, 5, 50, 95, 100)) for g, v in groups.items()},
        "distances": table,
        "loosest_cut_at_max_false": {"distance": round(cut["cut"], 4), "near_copies_caught": cut["near_copies_caught"]},
        "verdict": verdict(table, groups, args.max_false, DEFAULT_DISTANCE),
        "note": (f"distinct test images are drawn at >= {NEAR_DUPLICATE_MAD} from every train image by the dataset "
                 f"maker ({leakage['near_duplicates_skipped']} skipped), so that group cannot be wrongly affected "
                 "below it; the train groups are not filtered"),
    }
    signatures_ok = signatures_match_files(work / "dataset", signatures)
    timings["signatures"] = time.perf_counter() - tick

    guard_envs = {"off": {"RAVLM_LEAKAGE_GUARD": "false"}}
    for distance in args.eval_at:
        guard_envs[f"on@{distance:g}"] = {"RAVLM_LEAKAGE_GUARD": "true", "RAVLM_NEAR_DUPLICATE_DISTANCE": f"{distance:g}"}
    items = test_items(listed, leakage)
    evals = evaluate_guards(work, store, guard_envs, items, timings)

    report = {
        "sizes": {"train": args.train, "test": args.test, "copies": args.copies, "seed": args.seed},
        "dataset": {k: leakage[k] for k in ("copies", "distinct", "near_duplicates_skipped", "manifest_rows")},
        "model_tag": embedded["model_tag"],
        "cosine": cosine,
        "signature": signature,
        "eval": evals,
        "checks": checks(groups, signatures_ok, listed, leakage, evals),
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

    console = Console(width=None if sys.stdout.isatty() else 150)

    def table(title: str, columns: list[str], rows: list[list]) -> None:
        t = Table(title=title)
        for c in columns:
            t.add_column(c)
        for r in rows:
            t.add_row(*("" if x is None else str(x) for x in r))
        console.print(t)

    def stats_table(title: str, by_group: dict) -> None:
        cols = [c for c in next(iter(by_group.values())) if c != "n"]
        table(title, ["group", "n", *cols], [[g, s["n"], *(s[c] for c in cols)] for g, s in by_group.items()])

    cos = report["cosine"]
    stats_table(f"{cos['space']}: loosest cut {cos['loosest_cut_at_max_false']['cosine']} catches "
                f"{cos['loosest_cut_at_max_false']['near_copies_caught']} of near copies (not used by the guard)",
                cos["stats"])
    sig = report["signature"]
    stats_table(sig["signal"], sig["stats"])
    wrong = sig["distances"][0]["wrongly_affected"]
    table("near_duplicate_distance candidates (drop KB hits within d)",
          ["d", *NEAR_KINDS, "near copies caught", *(f"wrong: {g}" for g in wrong)],
          [[r["distance"], *(r["caught"][k] for k in NEAR_KINDS), r["caught"]["near_copies"],
            *r["wrongly_affected"].values()] for r in sig["distances"]])
    keys = list(next(iter(report["eval"].values()))["overall"])
    table("ravlm eval leak", ["metric", *report["eval"]],
          [[k, *(run["overall"][k] for run in report["eval"].values())] for k in keys])
    rows = []
    for label, run in report["eval"].items():
        for role in ("vqa", "vqa_voting", "caption"):
            cells = run["by_group"].get(role, {})
            rows.append([label, ROLE_NAMES[role], *(
                f"{m.get('accuracy', m.get('bleu4'))} nd {m['near_duplicate_items']}/{m['items']}"
                + (f" src {m['source_retrieved']}" if "source_retrieved" in m else "") if m else None
                for m in (cells.get(g) for g in GROUPS))])
    table("by test image group: accuracy / BLEU-4, near-duplicate items, share of copies retrieving their source",
          ["guard", "job", *GROUPS], rows)
    table("checks", ["check", "value"], [[k, v] for k, v in report["checks"].items()])
    v = sig["verdict"]
    console.print(f"rule: {v['rule']}; accepted: {v['accepted']}, pick {v['pick']}; default {v['default']} "
                  f"{'HOLDS' if v['default_holds'] else 'does NOT hold'}; margins {v['margins']}")
    console.print(sig["note"])
    console.print("timings (s): " + ", ".join(f"{k} {t}" for k, t in report["timings_s"].items()))
    console.print("reproduce:\n  " + "\n  ".join(report["commands"]), soft_wrap=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/ravlm-leakage"), help="work folder (replaced)")
    parser.add_argument("--train", type=int, default=400, help="train images")
    parser.add_argument("--test", type=int, default=200, help="test images")
    parser.add_argument("--copies", type=float, default=0.5, help="share of test images that copy a train image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--distances", type=float, nargs="+", default=list(DISTANCES),
                        help="candidate near_duplicate_distance values (grey levels)")
    parser.add_argument("--max-false", type=float, default=0.01,
                        help="largest share of images without a copy whose nearest neighbour may be dropped")
    parser.add_argument("--eval-at", type=float, nargs="+", default=[DEFAULT_DISTANCE],
                        help="evaluate with the guard on at these distances (besides off); each adds a few minutes")
    parser.add_argument("--no-source-train", dest="source_train", action="store_false",
                        help="skip the hard case over easy-VQA's whole train split (saves 10-20 s)")
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
