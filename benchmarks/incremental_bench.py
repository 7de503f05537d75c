"""Incremental ingest, as an operator runs it: change 1 image, remove 2, re-annotate 3, add 10, rerun.

Runs the real CLI (ingest → embed → eval) on a shapes manifest dataset, edits the source, runs the same three
commands again and reports, per table, which keys appeared and disappeared, so "exactly those changes in every
table" and "evaluation counts only what the source now holds" can be read off one JSON object.

    python benchmarks/incremental_bench.py [--out DIR] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ravlm_core.store import Store  # noqa: E402
from tests.helpers.shapes import make_shapes_dataset  # noqa: E402

KEYS = {"images": "member_id", "qa": "qa_id", "contents": "image_id", "vqa_predictions": "pred_id",
        "caption_predictions": "pred_id"}


def ravlm(work: Path, *args: str) -> dict:
    env = {**os.environ, "PREFECT_HOME": str(work / "prefect")}
    command = [sys.executable, "-m", "flows.cli", "--data-dir", str(work / "data"), "--reports-dir",
               str(work / "reports"), *args, "--json"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def snapshot(store: Store) -> dict[str, set]:
    tables = {name: key for name, key in KEYS.items()}
    tables.update({name: "image_id" for name in store.image_vector_tables()})
    return {name: set(store.read(name, columns=[key]).column(key).to_pylist()) if store.has(name) else set()
            for name, key in tables.items()}


def edit_source(folder: Path, scratch: Path) -> dict[str, list[str]]:
    """Change 1 image's bytes, remove 2 listings, re-annotate 3 (split, caption, answer), add 10 images."""
    manifest = pd.read_csv(folder / "manifest.csv", dtype=str, keep_default_na=False)
    paths = sorted(manifest.image.unique())
    changed, removed, reannotated = paths[:1], paths[1:3], paths[3:6]
    with Image.open(folder / changed[0]) as image:
        image.rotate(90).save(folder / changed[0])
    manifest = manifest[~manifest.image.isin(removed)]
    first = manifest.image == reannotated[0]
    manifest.loc[first, "split"] = "test" if manifest[first].split.iloc[0] == "train" else "train"
    manifest.loc[manifest.image == reannotated[1], "caption"] = "a re-annotated caption"
    manifest.loc[manifest.index[manifest.image == reannotated[2]][0], "answer"] = "re-annotated"
    extra = pd.read_csv(make_shapes_dataset(scratch, n_train=10, n_test=0, seed=99), dtype=str, keep_default_na=False)
    (folder / "added").mkdir()
    for name in extra.image.unique():
        shutil.copy(scratch / name, folder / "added" / Path(name).name)
    extra["image"] = "added/" + extra.image.map(lambda p: Path(p).name)
    pd.concat([manifest, extra]).to_csv(folder / "manifest.csv", index=False)
    return {"changed": changed, "removed": removed, "reannotated": reannotated,
            "added": sorted(extra.image.unique())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--train", type=int, default=60)
    parser.add_argument("--test", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="ravlm-incremental-"))
    shutil.rmtree(work, ignore_errors=True)
    folder = work / "source"
    make_shapes_dataset(folder, n_train=args.train, n_test=args.test, seed=3)
    store = Store(str(work / "data" / "lancedb"))
    first = {"ingest": ravlm(work, "ingest", str(folder), "--dataset", "shapes"), "embed": ravlm(work, "embed"),
             "eval": ravlm(work, "eval", "shapes")}
    before = snapshot(store)
    edits = edit_source(folder, work / "extra")
    second = {"ingest": ravlm(work, "ingest", str(folder), "--dataset", "shapes"), "embed": ravlm(work, "embed"),
              "eval": ravlm(work, "eval", "shapes")}
    after = snapshot(store)
    test_qa = store.count("qa", "dataset = 'shapes' AND split = 'test' AND removed_at IS NULL")
    test_images = store.count("images", "dataset = 'shapes' AND split = 'test' AND removed_at IS NULL")
    report = {
        "command": "python benchmarks/incremental_bench.py",
        "edits": {kind: len(paths) for kind, paths in edits.items()},
        "ingest": {k: second["ingest"][k] for k in ("added", "changed", "reannotated", "removed", "unchanged",
                                                    "new_images")},
        "embed_new_images": second["embed"]["new_images"],
        "tables": {name: {"before": len(before.get(name, ())), "after": len(after[name]),
                          "appeared": len(after[name] - before.get(name, set())),
                          "disappeared": len(before.get(name, set()) - after[name])} for name in after},
        "eval": {"vqa_items_before": first["eval"]["vqa"]["items"], "vqa_items_after": second["eval"]["vqa"]["items"],
                 "test_questions_in_source": test_qa,
                 "caption_items_after": second["eval"]["caption"]["items"], "test_images_in_source": test_images},
    }
    if args.json:
        print(json.dumps(report))
        return
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
