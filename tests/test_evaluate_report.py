"""Tests for ravlm_core.evaluate.report: the HTML page, its PNG plots and the markdown summary."""
from __future__ import annotations

import base64
import io
import re

import pytest
from PIL import Image

from ravlm_core.evaluate.metrics import caption_metrics, retrieval_metrics, vqa_metrics
from ravlm_core.evaluate.report import Example, headline_rows, report_markdown, write_report

PLOTS = ("confusion.png", "per_type_accuracy.png", "recall_at_k.png")


def _jpeg(color: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def results() -> dict:
    truth = ["red", "blue", "circle", "yes", "$5"]
    types = ["color", "color", "shape", "yes/no", "count"]
    refs = [["a red circle"], ["a blue square"]]
    return {
        # Shaped as `ravlm eval --json` prints it: the section is the with-retrieval run, the baseline nested.
        "vqa": {
            **vqa_metrics(truth, ["red", "blue", "circle", "no", "$5"], types),
            "without_retrieval": vqa_metrics(truth, ["red", "red", "square", "no", "$5"], types),
        },
        "retrieval": {
            "text_to_image": retrieval_metrics([["a", "b"], ["c", "d"]], [{"a"}, {"d"}], ks=(1, 2)),
        },
        "caption": {
            **caption_metrics(["a red circle", "a blue square"], refs),
            "without_retrieval": caption_metrics(["a circle", "a shape"], refs),
        },
    }


def _examples() -> list[Example]:
    return [
        Example(_jpeg("red"), 'Is the <b>shape</b> "red" & round?', ["pred: yes", "truth: yes"], [(_jpeg("blue"), "n1 0.93")]),
        Example(_jpeg("green"), "img-0042", ["pred: green"], []),
    ]


def test_write_report_full(tmp_path, results):
    index = write_report(tmp_path / "report", "Eval <run>", results, _examples(), {"k": 16, "encoder": "builtin"})
    assert index == tmp_path / "report" / "index.html"
    page = index.read_text(encoding="utf-8")

    # Side by side: the with and without accuracies sit in the same table row.
    acc_with, acc_without = results["vqa"]["accuracy"], results["vqa"]["without_retrieval"]["accuracy"]
    assert acc_with != acc_without
    row = re.search(r"<tr><td>VQA accuracy</td>(.*?)</tr>", page).group(1)
    assert f"<td>{acc_with:.3f}</td><td>{acc_without:.3f}</td><td>{acc_with - acc_without:+.3f}</td>" == row
    cider_row = re.search(r"<tr><td>Caption CIDEr-D</td>(.*?)</tr>", page).group(1)
    assert f"{results['caption']['without_retrieval']['cider']:.3f}" in cider_row
    assert "recall@2" in page and "text to image" in page

    for name in PLOTS:
        assert f'src="{name}"' in page
        with Image.open(index.parent / name) as image:
            image.verify()
            assert image.format == "PNG"

    # The grid: escaped titles, outcome lines, neighbour captions and inlined thumbnails that decode.
    assert "Is the &lt;b&gt;shape&lt;/b&gt; &quot;red&quot; &amp; round?" in page
    assert "<b>shape</b>" not in page
    assert "img-0042" in page and "pred: green" in page and "n1 0.93" in page
    thumbnails = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)
    assert len(thumbnails) == 3
    assert Image.open(io.BytesIO(base64.b64decode(thumbnails[0]))).size == (8, 8)

    assert "Eval &lt;run&gt;" in page and "<run>" not in page
    assert "<td>encoder</td><td>builtin</td>" in page and "<td>k</td><td>16</td>" in page


def test_write_report_leaves_no_pyplot_figures_open(tmp_path, results):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    write_report(tmp_path, "figures", results, [])
    assert plt.get_fignums() == before


def test_write_report_without_baseline_or_captions(tmp_path, results):
    with_only = {k: v for k, v in results["vqa"].items() if k != "without_retrieval"}
    partial = {"vqa": with_only, "retrieval": results["retrieval"]}
    page = write_report(tmp_path, "partial", partial, []).read_text(encoding="utf-8")
    row = re.search(r"<tr><td>VQA accuracy</td>(.*?)</tr>", page).group(1)
    assert row.count("—") == 2  # no baseline number and so no delta
    assert "CIDEr" not in page and "Configuration" not in page and "Examples" not in page
    for name in PLOTS:
        assert (tmp_path / name).is_file()


def test_write_report_retrieval_only_draws_only_recall(tmp_path, results):
    write_report(tmp_path, "retrieval", {"retrieval": results["retrieval"]}, [])
    assert (tmp_path / "recall_at_k.png").is_file()
    assert not (tmp_path / "confusion.png").exists()
    assert not (tmp_path / "per_type_accuracy.png").exists()


def test_headline_rows_and_markdown(results):
    rows = headline_rows({"caption": results["caption"]})
    assert [row[0] for row in rows] == ["Captions", "Caption BLEU-4 (0-1)", "Caption ROUGE-L F", "Caption CIDEr-D"]
    assert rows[0] == ("Captions", "2", "2", "—")  # counts get no delta

    md = report_markdown("Eval", results)
    assert md.startswith("# Eval\n")
    acc_with, acc_without = results["vqa"]["accuracy"], results["vqa"]["without_retrieval"]["accuracy"]
    assert f"| VQA accuracy | {acc_with:.3f} | {acc_without:.3f} |" in md
    assert "| text to image | mrr |" in md
    assert "No metrics" in report_markdown("Empty", {})


def test_a_generator_made_of_retrieval_is_not_applicable_without_it_and_nearest_caption_has_its_own_row(
        tmp_path, results):
    refs = [["a red circle"], ["a blue square"]]
    reason = "caption transfer copies the neighbours' captions, so without retrieval it has nothing to transfer"
    caption = {**caption_metrics(["a red circle", "a blue square"], refs),
               "without_retrieval": {"applicable": False, "reason": reason},
               "nearest_caption": caption_metrics(["a red circle", "a circle"], refs),
               "generators": {"smallcap": {**caption_metrics(["a red", "a blue"], refs),
                                           "without_retrieval": caption_metrics(["a", "a"], refs)}}}
    shown = {**results, "caption": caption}
    cider = dict((row[0], row[1:]) for row in headline_rows(shown))["Caption CIDEr-D"]
    assert cider == (f"{caption['cider']:.3f}", "n/a", "n/a")
    page = write_report(tmp_path, "transfer", shown, [], chosen={"caption": "builtin-transfer"}).read_text()
    rows = re.findall(r"<tr><td>caption</td><td>([^<]+)</td><td>cider</td><td>[^<]+</td><td>([^<]+)</td>", page)
    smallcap_without = caption["generators"]["smallcap"]["without_retrieval"]["cider"]
    assert rows == [("builtin-transfer", "n/a"), ("smallcap", f"{smallcap_without:.3f}"), ("nearest-caption", "n/a")]
    assert "builtin-transfer without retrieval: not applicable — caption transfer copies" in page
    assert "nearest-caption: the knowledge-base caption whose text vector is nearest" in page
    md = report_markdown("transfer", shown, {"caption": "builtin-transfer"})
    assert "| Caption CIDEr-D | " in md and "| n/a | n/a |" in md and "not applicable" in md


def test_retrieval_tables_and_plot_carry_recall_and_hits(tmp_path, results):
    ranks = results["retrieval"]["text_to_image"]
    assert {"recall@1", "recall@2", "hit@1", "hit@2"} <= set(ranks)
    page = write_report(tmp_path, "ranks", {"retrieval": results["retrieval"]}, []).read_text()
    assert "<td>hit@2</td>" in page and "<td>recall@2</td>" in page
    assert "share of a query&#x27;s relevant images found" in page
