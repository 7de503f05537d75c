"""Nightly wall time: the first night, a night with nothing new, and a night after 10 new images, with the model
loads each one logged.

    python benchmarks/nightly_bench.py [--out /tmp/ravlm-nightly-bench] [--train 300] [--test 100] [--json]

Through the CLI as an operator would run the scheduled job by hand (`ravlm nightly --source DIR=shapes`), on a
`make_shapes_dataset.py` folder. Between the second and third night 10 new images (and their manifest rows) are
added to the folder. Each night's stderr is kept; every model load is one "loaded ..." line
(`ravlm_core.embed.pinning.timed_load`), and the embed lines ("embedded ...: N images") say what was encoded.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from benchmarks.cross_kb import Runner  # noqa: E402
from tests.helpers.shapes import make_shapes_dataset  # noqa: E402

NEW_IMAGES = 10


def add_images(folder: Path, n: int, seed: int) -> None:
    """Draw `n` new test images with a fresh seed and append their rows to the folder's manifest."""
    extra = folder.parent / "extra"
    shutil.rmtree(extra, ignore_errors=True)
    make_shapes_dataset(extra, n_train=0, n_test=n, seed=seed)
    rows = pd.read_csv(extra / "manifest.csv", dtype=str, keep_default_na=False)
    rows["image"] = rows["image"].str.replace("images/", "images/new_", regex=False)
    for name in sorted((extra / "images").iterdir()):
        shutil.copy(name, folder / "images" / f"new_{name.name}")
    manifest = pd.read_csv(folder / "manifest.csv", dtype=str, keep_default_na=False)
    pd.concat([manifest, rows]).to_csv(folder / "manifest.csv", index=False)


def night(run: Runner, name: str, source: str) -> dict:
    """One nightly through the CLI: wall seconds, model loads and embed lines from its log."""
    start = time.perf_counter()
    result = run.ravlm(name, "nightly", "--source", f"{source}=shapes")
    wall = time.perf_counter() - start
    log = run.stderr[name]
    loads = re.findall(r"loaded (.+?) in [\d.]+s", log)
    embedded = re.findall(r"(embedded [^\n]*?: \d+ images[^\n]*)", log)
    return {"wall_s": round(wall, 1), "model_loads": len(loads), "loaded": loads,
            "new_images_embedded": result["embed"]["new_images"], "embed_log_lines": embedded,
            "report_unchanged": [e.get("unchanged", False) for e in result["eval"]],
            "ingest": {k: result["ingest"][0][k] for k in ("added", "changed", "reannotated", "removed", "unchanged")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/ravlm-nightly-bench"))
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    folder = out / "shapes"
    make_shapes_dataset(folder, n_train=args.train, n_test=args.test, seed=0)
    run = Runner(out, keep_stderr=True)
    nights = {"first": night(run, "first", str(folder)), "unchanged": night(run, "unchanged", str(folder))}
    add_images(folder, NEW_IMAGES, seed=99)
    nights["ten_new_images"] = night(run, "ten_new_images", str(folder))
    report = {"nights": nights, "images": args.train + args.test, "commands": run.commands}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for name, n in nights.items():
        print(f"{name:15s} wall {n['wall_s']:7.1f}s  model loads {n['model_loads']}  embedded "
              f"{n['new_images_embedded']}  report unchanged {n['report_unchanged']}")
        for line in n["embed_log_lines"]:
            print(f"    {line}")
    print("commands:", *run.commands, sep="\n  ")


if __name__ == "__main__":
    main()
