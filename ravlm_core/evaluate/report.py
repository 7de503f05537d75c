"""The evaluation report: a static HTML page with plots and an example grid, and a markdown summary."""
from __future__ import annotations

import base64
import html
import logging
import re
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# A results section holds the with-retrieval metrics itself (as `ravlm eval --json` prints them), and the
# baseline under this key: its metrics, or {"applicable": false, "reason": ...} for a generator made of retrieval.
WITHOUT = "without_retrieval"
MISSING = "—"
NOT_APPLICABLE = "n/a"
# Baselines a section holds beside its generators: (results key, name shown); neither has a run without retrieval.
BASELINES = {"vqa": ("voting", "builtin-vote"), "caption": ("nearest_caption", "nearest-caption")}
# (results section, metric key, row label) for the side-by-side headline table, in display order.
HEADLINE_METRICS = [
    ("vqa", "n", "VQA questions"),
    ("vqa", "accuracy", "VQA accuracy"),
    ("vqa", "soft_accuracy", "VQA soft accuracy (several human answers)"),
    ("vqa", "macro_precision", "VQA macro precision"),
    ("vqa", "macro_recall", "VQA macro recall"),
    ("vqa", "macro_f1", "VQA macro F1"),
    ("caption", "n", "Captions"),
    ("caption", "bleu4", "Caption BLEU-4 (0-1)"),
    ("caption", "rouge_l", "Caption ROUGE-L F"),
    ("caption", "cider", "Caption CIDEr-D"),
]
HEADLINE_HEADER = ("Metric", "With retrieval", "Without retrieval", "Δ (with − without)")
# Per task, the metrics generators are compared on, side by side on the same items.
GENERATOR_METRICS = {"vqa": ("accuracy", "soft_accuracy", "macro_f1"), "caption": ("cider", "bleu4", "rouge_l")}
GENERATORS_HEADER = ("Task", "Generator", "Metric", "With retrieval", "Without retrieval", "Δ")
RETRIEVAL_HEADER = ("Direction", "Metric", "Value")
RETRIEVAL_NOTE = ("recall@K: the share of a query's relevant images found in the top K, averaged over queries; "
                  "hit@K: the share of queries with at least one relevant image in the top K.")
NEAREST_CAPTION_NOTE = ("nearest-caption: the knowledge-base caption whose text vector is nearest the image's, a "
                        "search of captions; it is a retrieval baseline, not a run without retrieval.")
# Confusion matrices with more labels than this are drawn without per-cell numbers, which would overlap.
MAX_ANNOTATED_LABELS = 20
_RANK_KEY = re.compile(r"(recall|hit)@(\d+)$")


@dataclass
class Example:
    """One row of the report's image grid: a query image, its outcome and its retrieved neighbours."""

    query_thumbnail: bytes  # JPEG bytes
    title: str  # e.g. question or image id
    lines: list[str]  # e.g. "pred: red", "truth: red", "without retrieval: blue"
    neighbours: list[tuple[bytes, str]]  # (thumbnail JPEG bytes, caption/score label), best first


def _format(value) -> str:
    """A metric value as table text: ints as-is, floats to 3 decimals, absent as a dash."""
    if value is None:
        return MISSING
    if isinstance(value, int):
        return str(value)
    return f"{value:.3f}"


def applicable(scores: dict) -> bool:
    """Whether a results section's generator has a run without retrieval (caption transfer and voting have none)."""
    return scores.get(WITHOUT, {}).get("applicable", True)


def _compared(with_value, scores: dict, key: str) -> tuple[str, str]:
    """(without retrieval, delta) cells of one metric: n/a where there is no run without retrieval."""
    if not applicable(scores):
        return NOT_APPLICABLE, NOT_APPLICABLE
    without_value = scores.get(WITHOUT, {}).get(key)
    both = with_value is not None and without_value is not None
    return _format(without_value), f"{with_value - without_value:+.3f}" if both and key != "n" else MISSING


def headline_rows(results: dict) -> list[tuple[str, str, str, str]]:
    """(metric, with retrieval, without retrieval, delta) rows for the sections present in `results`."""
    rows = []
    for section, key, label in HEADLINE_METRICS:
        if section not in results:
            continue
        with_value = results[section].get(key)
        if with_value is None and results[section].get(WITHOUT, {}).get(key) is None:
            continue
        rows.append((label, _format(with_value), *_compared(with_value, results[section], key)))
    return rows


def generator_rows(results: dict, chosen: dict[str, str] | None = None) -> list[tuple[str, ...]]:
    """(task, generator, metric, with, without, delta) for the chosen generator of each task (its metrics are the
    section's own), every other one under the section's `generators` and the task's baseline (voting,
    nearest-caption); empty for a task with one generator and no baseline."""
    rows = []
    for task, metrics in GENERATOR_METRICS.items():
        section = results.get(task, {})
        named = [(name, scores) for name, scores in section.get("generators", {}).items()]
        key, baseline = BASELINES[task]
        if key in section:
            named.append((baseline, {**section[key], WITHOUT: {"applicable": False}}))
        if not named:
            continue
        for name, scores in [((chosen or {}).get(task, "chosen"), section), *named]:
            for metric in metrics:
                with_value = scores.get(metric)
                if with_value is None and scores.get(WITHOUT, {}).get(metric) is None:
                    continue
                rows.append((task, name, metric, _format(with_value), *_compared(with_value, scores, metric)))
    return rows


def notes(results: dict, chosen: dict[str, str] | None = None) -> list[str]:
    """Plain sentences for what the tables cannot say in a cell: why a run without retrieval is n/a, what
    nearest-caption and recall@K / hit@K are."""
    said = []
    for task in GENERATOR_METRICS:
        section = results.get(task, {})
        named = [((chosen or {}).get(task, task), section), *section.get("generators", {}).items()]
        said += [f"{name} without retrieval: not applicable — {scores[WITHOUT].get('reason') or 'no such run'}."
                 for name, scores in named if not applicable(scores)]
    if BASELINES["caption"][0] in results.get("caption", {}):
        said.append(NEAREST_CAPTION_NOTE)
    if results.get("retrieval"):
        said.append(RETRIEVAL_NOTE)
    return said


def retrieval_rows(results: dict) -> list[tuple[str, str, str]]:
    """(direction, metric, value) rows for every retrieval direction in `results`."""
    return [
        (direction.replace("_", " "), metric, _format(value))
        for direction, scores in results.get("retrieval", {}).items()
        for metric, value in scores.items()
    ]


def _markdown_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """GitHub-flavoured markdown table lines; pipes in cells are escaped."""
    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(row) for row in rows)]


def report_markdown(title: str, results: dict, chosen: dict[str, str] | None = None) -> str:
    """Compact markdown summary (side-by-side headline table, generators, retrieval) for a Prefect artifact."""
    parts = [f"# {title}", ""]
    if rows := headline_rows(results):
        parts += [*_markdown_table(HEADLINE_HEADER, rows), ""]
    if rows := generator_rows(results, chosen):
        parts += ["## Generators", "", *_markdown_table(GENERATORS_HEADER, rows), ""]
    if rows := retrieval_rows(results):
        parts += ["## Retrieval", "", *_markdown_table(RETRIEVAL_HEADER, rows), ""]
    if said := notes(results, chosen):
        parts += [f"- {line}" for line in said] + [""]
    if len(parts) == 2:
        parts.append("No metrics were computed.")
    return "\n".join(parts).rstrip() + "\n"


def _plain(label: str) -> str:
    """Text for a matplotlib label: escape `$` so answers like "$5" are not parsed as mathtext."""
    return str(label).replace("$", r"\$")


def _new_figure(width: float, height: float):
    """A pyplot-free Agg figure, so plotting never switches the process-wide backend or leaks figures."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _plot_confusion(vqa: dict, path: Path) -> None:
    """Heatmap of the confusion matrix (rows truth, columns prediction) via sklearn's display."""
    import numpy as np
    from sklearn.metrics import ConfusionMatrixDisplay

    labels = [_plain(label) for label in vqa["labels"]]
    size = min(4 + 0.35 * len(labels), 20)
    figure = _new_figure(size, size)
    ax = figure.add_subplot()
    ConfusionMatrixDisplay(np.array(vqa["confusion"]), display_labels=labels).plot(
        ax=ax, xticks_rotation="vertical", include_values=len(labels) <= MAX_ANNOTATED_LABELS, colorbar=True
    )
    ax.set_title("VQA confusion matrix (with retrieval)")
    figure.savefig(path, dpi=100)


def _plot_per_type(vqa_section: dict, path: Path) -> None:
    """Grouped bars of accuracy per question type, with vs without retrieval (where available)."""
    import numpy as np

    runs = [("with retrieval", vqa_section.get("per_question_type", {}))]
    if WITHOUT in vqa_section and applicable(vqa_section):
        runs.append(("without retrieval", vqa_section[WITHOUT].get("per_question_type", {})))
    types = sorted({qtype for _, per_type in runs for qtype in per_type})
    figure = _new_figure(max(5.0, 1.2 * len(types)), 4)
    ax = figure.add_subplot()
    positions = np.arange(len(types))
    width = 0.8 / len(runs)
    for i, (name, per_type) in enumerate(runs):
        heights = [per_type.get(qtype, {}).get("accuracy", 0.0) for qtype in types]
        ax.bar(positions + i * width, heights, width, label=name)
    ax.set_xticks(positions + width * (len(runs) - 1) / 2, [_plain(t) for t in types], rotation=30, ha="right")
    # Headroom above 1.0 keeps the legend off full-accuracy bars.
    ax.set_ylim(0, 1.2)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("accuracy")
    ax.set_title("VQA accuracy per question type")
    ax.legend(loc="upper center", ncols=2)
    figure.savefig(path, dpi=100)


def _plot_ranks(retrieval: dict, path: Path) -> None:
    """Recall@K (solid, dots) and hit@K (dashed, squares) against K, one colour per retrieval direction."""
    figure = _new_figure(5, 4)
    ax = figure.add_subplot()
    ks = set()
    for n, (direction, scores) in enumerate(retrieval.items()):
        # Hollow squares for hits, so the lines stay apart to the eye where each query has one relevant image.
        for metric, style, marker in (("recall", "-", "o"), ("hit", "--", "s")):
            points = sorted((int(m.group(2)), value) for key, value in scores.items()
                            if (m := _RANK_KEY.match(key)) and m.group(1) == metric)
            if points:
                ax.plot([k for k, _ in points], [v for _, v in points], style, marker=marker, fillstyle="none"
                        if metric == "hit" else "full", markersize=9 if metric == "hit" else 6, color=f"C{n}",
                        label=_plain(f"{direction.replace('_', ' ')} {metric}@K"))
                ks.update(k for k, _ in points)
    ax.set_xticks(sorted(ks))
    ax.set_xlabel("K")
    ax.set_ylabel("recall@K, hit@K")
    ax.set_ylim(0, 1.02)
    ax.set_title("Retrieval recall@K and hit@K")
    ax.legend()
    figure.savefig(path, dpi=100)


def write_plots(out_dir: Path, results: dict) -> list[tuple[str, str]]:
    """Draw the plots the results allow as PNGs in out_dir; returns (file name, caption) pairs."""
    plots = []
    vqa = results.get("vqa", {})
    if vqa.get("labels"):
        _plot_confusion(vqa, out_dir / "confusion.png")
        plots.append(("confusion.png", "Confusion matrix, with retrieval (rows: truth, columns: prediction)"))
    if vqa.get("per_question_type") or vqa.get(WITHOUT, {}).get("per_question_type"):
        _plot_per_type(vqa, out_dir / "per_type_accuracy.png")
        plots.append(("per_type_accuracy.png", "Accuracy per question type, with vs without retrieval"))
    if any(_RANK_KEY.match(key) for scores in results.get("retrieval", {}).values() for key in scores):
        _plot_ranks(results["retrieval"], out_dir / "recall_at_k.png")
        plots.append(("recall_at_k.png", "Retrieval recall@K (share of the relevant images found, solid) and hit@K "
                                         "(share of queries with one, dashed)"))
    return plots


def _html_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """An HTML table with every cell escaped."""
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def img_tag(jpeg: bytes, alt: str) -> str:
    """An <img> embedding JPEG bytes as a base64 data URI."""
    data = base64.b64encode(jpeg).decode("ascii")
    return f'<img src="data:image/jpeg;base64,{data}" alt="{html.escape(alt)}">'


def _example_html(example: Example) -> str:
    """One grid row: query thumbnail, title and outcome lines, then the neighbours with their labels."""
    lines = "".join(f"<li>{html.escape(line)}</li>" for line in example.lines)
    neighbours = "".join(
        f"<figure>{img_tag(thumb, label)}<figcaption>{html.escape(label)}</figcaption></figure>"
        for thumb, label in example.neighbours
    )
    return (
        f'<div class="example"><figure class="query">{img_tag(example.query_thumbnail, example.title)}</figure>'
        f"<div><h3>{html.escape(example.title)}</h3><ul>{lines}</ul>"
        f'<div class="neighbours">{neighbours}</div></div></div>'
    )


_STYLE = """
body{font-family:sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
.example{display:flex;gap:1em;border-top:1px solid #ddd;padding:.5em 0}
.neighbours{display:flex;flex-wrap:wrap;gap:.5em}figure{margin:0;font-size:small;max-width:120px}
img{max-width:120px}.query img{max-width:160px}
.plots figure{max-width:none}.plots img{max-width:100%}
"""


def write_report(out_dir: Path, title: str, results: dict, examples: list[Example], config: dict | None = None,
                 chosen: dict[str, str] | None = None) -> Path:
    """Write out_dir/index.html (thumbnails inlined, plot PNGs beside it) and return its path.

    Args:
        out_dir: folder for index.html and the PNGs; created if missing, files in it are overwritten.
        title: page heading.
        results: nested metrics as the CLI prints them ("vqa", "retrieval", "caption"; any may be absent).
        examples: rows of the image grid.
        config: run settings shown as a key/value table.
        chosen: per task, the name of the generator whose metrics are the section's own.
    Returns:
        The path of index.html.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = [f"<h1>{html.escape(title)}</h1>"]
    if rows := headline_rows(results):
        sections.append("<h2>Headline</h2>" + _html_table(HEADLINE_HEADER, rows))
    if rows := generator_rows(results, chosen):
        sections.append("<h2>Generators, on the same items</h2>" + _html_table(GENERATORS_HEADER, rows))
    if rows := retrieval_rows(results):
        sections.append("<h2>Retrieval</h2>" + _html_table(RETRIEVAL_HEADER, rows))
    if said := notes(results, chosen):
        sections.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in said) + "</ul>")
    if plots := write_plots(out_dir, results):
        figures = "".join(
            f'<figure><img src="{name}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption>'
            "</figure>"
            for name, caption in plots
        )
        sections.append(f'<h2>Plots</h2><div class="plots">{figures}</div>')
    if examples:
        sections.append("<h2>Examples</h2>" + "".join(_example_html(example) for example in examples))
    if config:
        settings = sorted((str(key), str(value)) for key, value in config.items())
        sections.append("<h2>Configuration</h2>" + _html_table(("Setting", "Value"), settings))
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>{''.join(sections)}</body></html>\n"
    )
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    logger.info("wrote report %s with %d plots and %d examples", index, len(plots), len(examples))
    return index
