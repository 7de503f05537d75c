"""The `ravlm` command line itself, without a store or a server: the choices `--help` lists, flows called with
keyword arguments under their own parameter names, old spellings that still work with a warning, one-line usage
errors, one JSON document on stdout and the exit codes."""
from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest

from flows.cli import pipeline
from flows.cli.options import OutputFormat, Runner, SourceFormat, Target


def cli(capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    """`ravlm ARGS` in this process through the CLI's entry point: (exit code, stdout, stderr)."""
    from flows.cli import main

    monkeypatch.setattr(sys, "argv", ["ravlm", *args])
    with pytest.raises(SystemExit) as done:
        main()
    printed = capsys.readouterr()
    return done.value.code, printed.out, printed.err


@pytest.fixture
def flow_calls(monkeypatch):
    """Record each flow the CLI would run, with its parameters, instead of running it."""
    calls = []

    def record(ctx, flow, **parameters):
        inspect.signature(flow.fn).bind(**parameters, overrides=ctx.obj)  # every name is one the flow takes
        calls.append((flow.name, parameters))
        return {"dataset": parameters.get("dataset"), "images_seen": 1, "captions": 1, "added": 1, "changed": 0, "reannotated": 0,
                "removed": 0, "unchanged": 0, "new_images": 1, "dry_run": False,
                "bad_rows": [{"ref": "manifest.csv row 2", "reason": "no such file"}] if "bad" in str(parameters)
                else []}

    monkeypatch.setattr(pipeline, "run_flow", record)
    return calls


def test_the_choices_are_the_library_s_own():
    from flows.common import task_runner  # noqa: F401 - its error names the runners the enum lists
    from ravlm_core.ingest.sources import FORMATS
    from ravlm_core.query.session import TARGETS

    assert [f.value for f in SourceFormat] == list(FORMATS)
    assert [t.value for t in Target] == list(TARGETS)
    assert [r.value for r in Runner] == ["threads", "dask", "ray"]
    assert [f.value for f in OutputFormat] == ["table", "json", "parquet", "html"]


@pytest.mark.parametrize("args, listed", [(["ingest", "--help"], "auto|manifest|folder|coco|vqav2"),
                                          (["search", "--help"], "images|texts"),
                                          (["--help"], "threads|dask|ray")])
def test_help_lists_the_choices_and_hides_old_spellings(capsys, monkeypatch, args, listed):
    monkeypatch.setenv("COLUMNS", "400")  # wide enough that rich keeps each option's choices on one line
    code, out, _ = cli(capsys, monkeypatch, *args)
    flat = "".join(out.split())
    assert code == 0 and listed in flat and "--format" not in flat


def test_flows_get_keyword_arguments_under_their_own_names(capsys, monkeypatch, flow_calls, tmp_path):
    questions = tmp_path / "q.txt"
    for args in (["ingest", str(tmp_path), "--dataset", "photos", "--source-format", "coco", "--dry-run"],
                 ["embed", "--retrain-encoder"],
                 ["vqa", "photos", "--kb", "shapes:train", "--questions", str(questions), "--no-retrieval"],
                 ["caption", "photos", "--split", "val", "--generator", "smallcap"],
                 ["eval", "photos", "--generator", "a", "--generator", "b"],
                 ["nightly", "--source", f"{tmp_path}=photos", "--skip-eval"]):
        code, _, err = cli(capsys, monkeypatch, *args, "--json")
        assert code == 0 and not err, err
    assert flow_calls == [
        ("ingest", {"source": str(tmp_path), "dataset": "photos", "manifest": None, "dry_run": True,
                    "keep_removed": False, "source_format": "coco", "annotations": None, "questions": None}),
        ("embed", {"retrain_encoder": True}),
        ("vqa", {"dataset": "photos", "split": "test", "generator": "builtin-fusion", "kb": ["shapes:train"],
                 "questions": str(questions), "no_retrieval": True}),
        ("caption", {"dataset": "photos", "split": "val", "generator": "smallcap", "kb": None, "no_retrieval": False}),
        ("eval", {"dataset": "photos", "split": "test", "kb": None, "questions": None, "generators": ["a", "b"]}),
        ("nightly", {"sources": [{"source": str(tmp_path), "dataset": "photos"}], "evaluate": False})]


def test_old_spellings_still_work_with_one_warning_line(capsys, monkeypatch, flow_calls, tmp_path):
    code, out, err = cli(capsys, monkeypatch, "ingest", str(tmp_path), "--format", "vqav2", "--json")
    assert code == 0 and err == "warning: --format is deprecated, use --source-format\n"
    assert flow_calls[-1][1]["source_format"] == "vqav2" and json.loads(out)["added"] == 1
    for command in ("vqa", "caption", "eval"):
        code, _, err = cli(capsys, monkeypatch, command, "--dataset", "photos", "--json")
        assert code == 0 and err == "warning: --dataset is deprecated, use the DATASET argument\n"
        assert flow_calls[-1][1]["dataset"] == "photos"
    for command in (["search", "a star"], ["dedup", "--threshold", "0.9"]):
        code, _, err = cli(capsys, monkeypatch, *command, "--format", "html")  # fails before opening any store
        assert code == 2 and err.splitlines() == ["warning: --format is deprecated, use --output-format",
                                                  "error: --output-format html writes a file: give --output PATH"]


def test_usage_errors_are_one_line_with_exit_code_2(capsys, monkeypatch, flow_calls):
    for args, expected in ((["--runner", "spark", "embed"], "error: Invalid value for '--runner': "),
                           (["ingest", ".", "--source-format", "xml"], "error: Invalid value for '--source-format': "),
                           (["search", "a", "--output-format", "xml"], "error: Invalid value for '--output-format': "),
                           (["search", "a", "--target", "captions"], "error: Invalid value for '--target': "),
                           (["vqa"], "error: Missing argument 'DATASET'."),
                           (["search", "a", "--nope"], "error: No such option: --nope"),
                           (["search"], "error: Invalid value: give a text query or --image PATH")):
        code, out, err = cli(capsys, monkeypatch, *args)
        assert code == 2 and err.startswith(expected) and len(err.splitlines()) == 1 and not out, err
    assert not flow_calls


def test_rejected_rows_exit_3_after_one_json_document(capsys, monkeypatch, flow_calls):
    code, out, _ = cli(capsys, monkeypatch, "ingest", "bad-folder", "--json")
    assert code == 3 and json.loads(out)["bad_rows"][0]["reason"] == "no such file"


def test_a_user_error_inside_a_flow_is_one_line_and_a_failed_unit_exit_1(capsys, monkeypatch):
    from ravlm_core.errors import UnitFailed, UserError

    for error, code in ((UserError("KB shapes:train has no images"), 2), (UnitFailed("shard 3: OSError: gone"), 1)):
        def fail(ctx, flow, **parameters):
            raise RuntimeError("flow run failed") from error

        monkeypatch.setattr(pipeline, "run_flow", fail)
        done, out, err = cli(capsys, monkeypatch, "embed", "--json")
        assert (done, out, err) == (code, "", f"error: {error}\n")


def test_the_command_line_starts_without_prefect_torch_or_the_library():
    """Only the settings come along (they set the offline environment before anything else loads): no Prefect,
    no torch, no LanceDB, no Arrow, no library stage."""
    loaded = subprocess.run([sys.executable, "-c", "import sys, flows.cli; print(sorted(m for m in sys.modules if "
                             "m.split('.')[0] in ('prefect', 'torch', 'lancedb', 'pyarrow', 'ravlm_core')))"],
                            capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == str(["ravlm_core", "ravlm_core.config", "ravlm_core.uris"])


def test_the_summaries_say_how_many_captions_and_what_has_no_run_without_retrieval(capsys):
    from flows.cli import render

    render.ingested({"dataset": "flickr", "images_seen": 500, "captions": 2500, "added": 500, "changed": 0,
                     "reannotated": 0, "removed": 0, "unchanged": 0, "new_images": 500, "dry_run": False,
                     "bad_rows": []})
    assert capsys.readouterr().out.startswith("flickr: 500 images listed with 2500 captions; 500 added")
    reason = "caption transfer copies the neighbours' captions, so without retrieval it has nothing to transfer"
    render.evaluation({"run_id": "r", "report": "index.html",
                       "caption": {"cider": 0.17, "without_retrieval": {"applicable": False, "reason": reason},
                                   "nearest_caption": {"cider": 0.09, "bleu4": 0.01}},
                       "retrieval": {"text_to_image": {"recall@1": 0.05, "hit@1": 0.16, "mrr": 0.3}}})
    out = capsys.readouterr().out
    lines = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:4]] for line in out.splitlines()
             if line.count("│") >= 4}
    assert lines["caption cider"] == ["0.1700", "n/a"]
    assert lines["caption cider (nearest-caption)"] == ["0.0900", "n/a"]
    assert lines["text_to_image recall@1"][0] == "0.0500" and lines["text_to_image hit@1"][0] == "0.1600"
    assert f"caption without retrieval: not applicable — {reason}." in out
