"""What the CLI prints for people: rich tables and one-line summaries. Machines get `--json` instead (`emit`)."""
from __future__ import annotations

import json
from typing import Callable

import typer


def emit(result, as_json: bool, human: Callable) -> None:
    """Exactly one JSON document on stdout with `--json`, else `human(result)`."""
    if as_json:
        typer.echo(json.dumps(result, default=str))
    else:
        human(result)


def table(title: str, columns: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.table import Table

    shown = Table(title=title)
    for column in columns:
        shown.add_column(column)
    for row in rows:
        shown.add_row(*(str(cell) for cell in row))
    Console().print(shown)


def summary(result: dict) -> None:
    """A flow's result as it is, cut short where it is long."""
    from rich.console import Console
    from rich.pretty import Pretty

    Console().print(Pretty(result, max_length=12, max_depth=3))


def ingested(result: dict) -> None:
    verb = "would be" if result["dry_run"] else "were"
    typer.echo(f"{result['dataset']}: {result['images_seen']} images listed with {result['captions']} captions; "
               f"{result['added']} added, "
               f"{result['changed']} changed, {result['reannotated']} re-annotated, {result['removed']} removed, "
               f"{result['unchanged']} unchanged; {result['new_images']} new image files {verb} stored")
    if result["bad_rows"]:
        table(f"{len(result['bad_rows'])} rows rejected (fix and rerun: nothing already written is lost)",
              ["where", "why"], [[b["ref"], b["reason"]] for b in result["bad_rows"]])


def evaluation(result: dict) -> None:
    """The metrics with and without retrieval side by side ("n/a" for a generator made of retrieval, with why);
    `demo` nests them under "eval"."""
    from ravlm_core.evaluate.report import NOT_APPLICABLE, applicable, notes

    result = result.get("eval", result)
    rows = []
    for section in ("vqa", "caption"):
        scores = result.get(section, {})
        for key in ("accuracy", "macro_f1", "bleu4", "rouge_l", "cider"):
            if key in scores:
                without = scores.get("without_retrieval", {}).get(key)
                rows.append([f"{section} {key}", f"{scores[key]:.4f}", NOT_APPLICABLE if not applicable(scores)
                             else "—" if without is None else f"{without:.4f}"])
    for section, baseline, name in (("vqa", "voting", "neighbour voting"),
                                    ("caption", "nearest_caption", "nearest-caption")):
        for key, value in result.get(section, {}).get(baseline, {}).items():
            if key in ("accuracy", "cider"):
                rows.append([f"{section} {key} ({name})", f"{value:.4f}", NOT_APPLICABLE])
    for direction, scores in result.get("retrieval", {}).items():
        rows += [[f"{direction} {m}", f"{v:.4f}", "—"] for m, v in scores.items()
                 if m.startswith(("recall", "hit", "ndcg"))]
    table(f"eval {result.get('run_id', '')}", ["metric", "with retrieval", "without retrieval"], rows)
    for line in notes(result):
        typer.echo(line)
    typer.echo(f"report: {result.get('report')}")


# Per kind of result: (table title, [(header, row key)]); hybrid searches add their two legs' scores.
_COLUMNS = {
    "images": ("images", [("score", "score"), ("path", "path"), ("dataset", "dataset"), ("split", "split"),
                          ("caption", "caption")]),
    "texts": ("texts", [("score", "score"), ("text", "text"), ("kind", "kind"), ("listings", "listings"),
                        ("e.g. path", "path"), ("dataset", "dataset"), ("split", "split")]),
    "duplicates": ("near-duplicates", [("group", "group"), ("size", "size"), ("similarity", "similarity"),
                                       ("path", "path"), ("dataset", "dataset"), ("split", "split"),
                                       ("caption", "caption"), ("listings", "listings")]),
}


def hits(found) -> None:
    """Search hits or near-duplicate rows (`Hits`, whose `kind` picks the columns)."""
    title, columns = _COLUMNS[found.kind]
    if any("text_score" in h for h in found):
        columns = columns[:1] + [("vector", "vector_score"), ("full text", "text_score")] + columns[1:]

    def cell(hit: dict, key: str):
        value = hit.get(key) or (hit.get("image_id") if key == "path" else None)  # no listing left: its id
        return "" if value is None else value

    table(title, [header for header, _ in columns], [[cell(h, key) for _, key in columns] for h in found])


def written(result: dict) -> None:
    typer.echo(f"wrote {result['rows']} rows to {result['output']}")


def answer(result: dict) -> None:
    typer.echo(f"{result.get('answer', result['voting'])}")
    table("neighbours", ["score", "path", "dataset", "split", "caption"],
          [[h.get("score"), h.get("path") or h.get("image_id", ""), h.get("dataset"), h.get("split"), h.get("caption")]
           for h in result["neighbours"]])


def tables(found: dict) -> None:
    table("tables", ["table", "rows", "version", "indexes"],
          [[n, t["rows"], t["version"], ", ".join(t["indexes"])] for n, t in found.items()])
    for name, described in found.items():
        if "schema" in described:
            table(name, ["column", "type"], [[c, kind] for c, kind in described["schema"].items()])


def encoder_recall(encoder: dict) -> str:
    """One line: the built-in heads' recall on their training images beside the held-out ones (overfitting shows)."""
    def figures(recall: dict | None) -> str:
        if not recall:
            return "n/a (too few images to hold any out)"
        return ", ".join(f"{d}@{k} {recall[f'{d}_recall@{k}']:.3f}" for d in ("t2i", "i2t") for k in (1, 10))

    return (f"  recall (IR) train: {figures(encoder['train_recall'])}; held-out ({encoder['heldout_images']} images, "
            f"epoch {encoder['best_epoch']}): {figures(encoder['heldout_recall'])}")


def status(result: dict) -> None:
    typer.echo(f"store {result['store']}")
    encoder = result["encoder"]
    typer.echo(f"encoder {encoder['model_tag'] if encoder else 'none pinned yet (run ravlm embed)'}")
    if encoder and encoder.get("train_recall"):
        typer.echo(encoder_recall(encoder))
    table("tables", ["table", "rows", "version", "indexes"],
          [[n, t["rows"], t["version"], ", ".join(t["indexes"])] for n, t in result["tables"].items()])
    indexes = result.get("vector_indexes") or {}
    if indexes:
        table("vector indexes", ["table", "index", "indexed", "unindexed", "recall@10", "nprobes", "refine",
                                 "p50 ms", "measured (UTC)"],
              [[n, i["index_type"], i["rows_indexed"], i["rows_unindexed"],
                "not measured" if i["recall_at_10"] is None else f"{i['recall_at_10']:.3f}", i["nprobes"],
                i["refine_factor"], i["p50_ms"], i["measured_at"]] for n, i in indexes.items()])
    missing = result["images_without_vectors"]
    if missing is not None:
        typer.echo(f"images without vectors: {missing['count']}" + (" (run ravlm embed)" if missing["count"] else ""))
    for name, counts in result["stale_predictions"].items():
        typer.echo(f"{name}: {counts['rows']} rows, {counts['stale']} from an older KB or encoder")
    rows = [[flow, r["name"], r["state"], r["finished_at"][:19], r["seconds"], r["message"][:80]]
            for flow, runs in result["last_runs"].items() for r in runs]
    if rows:
        table("last runs", ["flow", "run", "state", "finished (UTC)", "seconds", "message"], rows)
