"""Cold start of the interactive commands: `ravlm search "a red circle"` and friends, each a fresh process.

    python benchmarks/search_bench.py [--data-dir data] [--runs 5] [--json]

Run it on the demo store (`ravlm demo` first, or point --data-dir at one). Every run is a new `python -m
flows.cli` process, as an analyst's shell would start it, with the OS file cache warm after the first one;
the figure is the median wall time of `--runs` runs. Also times `status`, `tables` and a `sql` query, and the
bare imports that bound them (`python -c "import torch"`, `import lancedb`), measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUERY = "a red circle"


def wall(command: list[str], runs: int) -> dict:
    """Median and minimum wall seconds of `runs` fresh processes (one warm-up run first, not counted)."""
    times = []
    for attempt in range(runs + 1):
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
        if attempt:
            times.append(elapsed)
    return {"median_s": round(statistics.median(times), 2), "min_s": round(min(times), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data", help="A store built by `ravlm demo` (default: ./data).")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="Print one JSON object on stdout.")
    args = parser.parse_args()
    if not (Path(args.data_dir) / "lancedb").is_dir():
        raise SystemExit(f"no store in {args.data_dir}: run `ravlm demo` first or pass --data-dir")
    ravlm = [sys.executable, "-m", "flows.cli", "--data-dir", str(args.data_dir)]
    commands = {
        "search_text": [*ravlm, "search", QUERY, "-k", "10", "--json"],
        "search_text_filtered": [*ravlm, "search", QUERY, "-k", "10", "--split", "test", "--json"],
        "status": [*ravlm, "status", "--json"],
        "tables": [*ravlm, "tables", "--json"],
        "sql": [*ravlm, "sql", "select split, count(*) n from images group by 1", "--json"],
        "import_torch": [sys.executable, "-c", "import torch"],
        "import_lancedb": [sys.executable, "-c", "import lancedb"],
        "python": [sys.executable, "-c", "pass"],
    }
    result = {name: wall(command, args.runs) for name, command in commands.items()}
    result["query"], result["runs"] = QUERY, args.runs
    if args.json:
        print(json.dumps(result))
        return
    for name, figures in result.items():
        if isinstance(figures, dict):
            print(f"{name:22s} median {figures['median_s']:6.2f} s   min {figures['min_s']:6.2f} s")


if __name__ == "__main__":
    main()
