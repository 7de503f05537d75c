"""How `ravlm ingest` copes with bad, hostile and unusual inputs: tests/helpers/bad_inputs.py's corpus, ingested
and judged.

    python benchmarks/bad_input_corpus.py [--json]

Builds the corpus in a temporary folder, runs the ingest flow's library steps (tests/helpers/stores.py) on each of
its dataset folders into a fresh LanceDB store, and prints one row per kind of input (what it is, what ingest must
do, what it did, the reason it gave) and a last line "N kinds: X ingested correctly, Y rejected with file/row/reason,
Z manifest errors, C crashes" (C counts ingest runs that raised; each leaves its dataset's kinds unjudged).
With --json, one JSON object instead. Exits 1 when any kind is not handled as it must be, when a file outside
the dataset folders was read, or when a bad row matches no kind.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ravlm_core.store import Store  # noqa: E402
from tests.helpers.bad_inputs import Verdict, build_corpus, escapes, ingest_corpus, judge, stray_bad_rows  # noqa: E402

DETAIL_CHARS = 240  # reasons can quote a 5,000-character path


def run_corpus() -> dict:
    """Build, ingest and judge the corpus in a temporary folder; the result as a JSON-able dict."""
    with tempfile.TemporaryDirectory(prefix="ravlm-bad-inputs-") as tmp:
        work = Path(tmp)
        corpus = build_corpus(work / "inputs")
        started = time.perf_counter()
        run = ingest_corpus(corpus, Store(str(work / "lancedb")), work / "data")
        seconds = time.perf_counter() - started
        verdicts = judge(corpus, run)
        escaped, stray = escapes(corpus, run), stray_bad_rows(corpus, run)
    return {
        "kinds": len(verdicts),
        **_counts(verdicts),
        "outside_reads": escaped,
        "unexplained_bad_rows": stray,
        "ingest_seconds": round(seconds, 2),
        "cases": [_row(v) for v in verdicts],
    }


def _counts(verdicts: list[Verdict]) -> dict:
    def passed(kind: str) -> int:
        return sum(v.passed and v.case.kind == kind for v in verdicts)

    return {"ingested_correctly": passed("ok"), "rejected_with_reason": passed("rejected"),
            "manifest_errors": passed("manifest-error"),
            # One crashing ingest leaves every kind of its dataset unjudged: count the ingests, and the kinds apart.
            "crashes": len({v.case.dataset for v in verdicts if v.outcome == "crash"}),
            "not_judged": sum(v.outcome == "crash" for v in verdicts),
            "wrong": sum(v.outcome == "wrong" for v in verdicts)}


def _row(verdict: Verdict) -> dict:
    detail = " ".join(verdict.detail.split())
    if len(detail) > DETAIL_CHARS:
        detail = detail[:DETAIL_CHARS] + "..."
    return {"kind": verdict.case.name, "dataset": verdict.case.dataset, "expected": verdict.case.kind,
            "outcome": verdict.outcome, "passed": verdict.passed, "reason": detail}


def summary_line(result: dict) -> str:
    line = (f"{result['kinds']} kinds: {result['ingested_correctly']} ingested correctly, "
            f"{result['rejected_with_reason']} rejected with file/row/reason, {result['manifest_errors']} manifest "
            f"errors, {result['crashes']} crashes")
    if result["crashes"]:
        line += f" ({result['not_judged']} kinds not judged)"
    return line + (f", {result['wrong']} handled wrongly" if result["wrong"] else "")


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("kind", "expected", "outcome", "reason", show_lines=False)
    for row in result["cases"]:
        style = None if row["passed"] else "bold red"
        table.add_row(row["kind"], row["expected"], row["outcome"], row["reason"], style=style)
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)
    for what in ("outside_reads", "unexplained_bad_rows"):
        for item in result[what]:
            console.print(f"[bold red]{what}[/]: {item}")
    print(f"ingest took {result['ingest_seconds']} s")
    print(summary_line(result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    result = run_corpus()
    if args.json:
        print(json.dumps({**result, "summary": summary_line(result)}))
    else:
        print_table(result)
    clean = not (result["crashes"] or result["wrong"] or result["outside_reads"] or result["unexplained_bad_rows"])
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
