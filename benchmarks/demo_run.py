"""The README's headline figures in one run: `ravlm demo` twice on a fresh data folder.

    python benchmarks/demo_run.py [--data-dir /tmp/ravlm-bench] [--shapes]

Prints one JSON object: wall-clock seconds of the first (cold: trains the heads and answerers) and second demo,
easy-VQA accuracy with and without retrieval and by neighbour voting, text→image recall, caption scores, and the
rows each table gained on the rerun (only `eval_runs` should). With `--shapes` it also runs the same commands on
a generated manifest dataset of other shapes (`make_shapes_dataset.py`) in a second folder.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ravlm_core.store import Store  # noqa: E402
from tests.helpers.shapes import make_shapes_dataset  # noqa: E402


def ravlm(data_dir: Path, *args: str) -> tuple[dict, float]:
    """Run one CLI command as a user would; returns its --json output and wall-clock seconds."""
    command = [sys.executable, "-m", "flows.cli", "--data-dir", str(data_dir), "--reports-dir",
               str(data_dir / "reports"), *args, "--json"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout), time.perf_counter() - start


def counts(data_dir: Path) -> dict[str, int]:
    store = Store(str(data_dir / "lancedb"))
    return {name: store.count(name) for name in store.db.list_tables().tables}


def headline(result: dict) -> dict:
    vqa = result.get("vqa", {})
    return {
        "vqa_accuracy": vqa.get("accuracy"),
        "vqa_macro_f1": vqa.get("macro_f1"),
        "vqa_accuracy_without_retrieval": vqa.get("without_retrieval", {}).get("accuracy"),
        "vqa_accuracy_voting": vqa.get("voting", {}).get("accuracy"),
        "text_to_image": {k: v for k, v in result.get("retrieval", {}).get("text_to_image", {}).items()
                          if k.startswith("recall")},
        "caption": {k: result.get("caption", {}).get(k) for k in ("bleu4", "rouge_l")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/ravlm-bench"))
    parser.add_argument("--shapes", action="store_true", help="also run the shapes manifest dataset")
    args = parser.parse_args()
    shutil.rmtree(args.data_dir, ignore_errors=True)
    demo_dir = args.data_dir / "easy-vqa"

    first, first_s = ravlm(demo_dir, "demo")
    before = counts(demo_dir)
    _, second_s = ravlm(demo_dir, "demo")
    after = counts(demo_dir)
    report = {
        "demo_first_s": round(first_s, 1),
        "demo_rerun_s": round(second_s, 1),
        "rerun_added_rows": {name: after[name] - before.get(name, 0) for name in after
                             if after[name] != before.get(name, 0)},
        "easy_vqa_test": headline(first["eval"]),
    }
    if args.shapes:
        shapes_dir, folder = args.data_dir / "shapes", args.data_dir / "shapes-source"
        make_shapes_dataset(folder, n_train=300, n_test=100, seed=0)
        ravlm(shapes_dir, "ingest", str(folder), "--dataset", "shapes")
        ravlm(shapes_dir, "embed")
        result, _ = ravlm(shapes_dir, "eval", "shapes")
        report["shapes_test"] = headline(result)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
