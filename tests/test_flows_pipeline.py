"""The whole DAG through the `ravlm` CLI on a small manifest dataset, under Prefect's test harness.

One module-scoped run (ingest → embed with built-in head training → eval with VQA + captions) feeds several
assertions; a second run of every command must add no rows except the new eval record.
"""
from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import pytest

from ravlm_core.schemas import EVAL_RUNS, IMAGES, QA
from ravlm_core.store import Store
from tests.helpers.cli import Ravlm
from tests.helpers.shapes import make_shapes_dataset

pytestmark = pytest.mark.server

N_TRAIN, N_TEST = 48, 16


def store_count(tmp_path: Path, table: str) -> int:
    return Store(str(tmp_path / "data" / "lancedb")).count(table)


def table_counts(store: Store) -> dict[str, int]:
    return {name: store.count(name) for name in store.db.list_tables().tables}


@pytest.fixture(scope="module")
def run(harness, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    folder = tmp / "shapes"
    make_shapes_dataset(folder, n_train=N_TRAIN, n_test=N_TEST, seed=1, fmt="jsonl")
    ravlm = Ravlm(tmp / "data", tmp / "reports", harness)
    outputs = {
        "ingest": ravlm("ingest", str(folder), "--dataset", "shapes"),
        "embed": ravlm("embed"),
        "eval": ravlm("eval", "shapes"),
    }
    return {"ravlm": ravlm, "folder": folder, "store": Store(str(tmp / "data" / "lancedb")), **outputs}


def test_ingest_reads_the_manifest(run):
    manifest = [json.loads(line) for line in (run["folder"] / "manifest.jsonl").read_text().splitlines()]
    assert run["ingest"]["new_images"] == run["ingest"]["added"] == N_TRAIN + N_TEST
    assert run["store"].count(QA) == len(manifest)
    assert run["ingest"]["bad_rows"] == []
    assert run["store"].count(QA, "split = 'test'") == sum(row["split"] == "test" for row in manifest)


def test_embed_trains_the_builtin_heads_and_embeds_everything(run):
    embed = run["embed"]
    assert embed["model_tag"].startswith("builtin-")
    assert Path(embed["model_ref"], "heads.safetensors").is_file()
    assert embed["new_images"] == N_TRAIN + N_TEST
    assert run["store"].count(f"{embed['model_tag']}__image_vectors") == N_TRAIN + N_TEST
    questions = run["store"].read(QA, columns=["question"]).column("question").to_pylist()
    # Every distinct question once: shards are embedded in parallel but texts in one task, so none twice.
    assert run["store"].count(f"{embed['question_tag']}__question_vectors") == len(set(questions))


def test_eval_prints_the_nested_metrics_and_writes_the_report(run):
    result = run["eval"]
    n_test_questions = run["store"].count(QA, "split = 'test'")
    assert result["vqa"]["n"] == n_test_questions
    assert result["vqa"]["without_retrieval"]["n"] == n_test_questions
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1"):
        assert 0.0 <= result["vqa"][key] <= 1.0
    assert set(result["vqa"]["per_question_type"]) == {"color", "shape", "yes/no"}
    ranks = result["retrieval"]["text_to_image"]
    for k in (1, 5, 10):
        assert 0.0 <= ranks[f"recall@{k}"] <= ranks[f"hit@{k}"] <= 1.0  # a hit is at least one relevant image
    assert 0.0 <= result["caption"]["bleu4"] <= 1.0 and 0.0 <= result["caption"]["rouge_l"] <= 1.0
    # Caption transfer is made of retrieval: no run without it, and nearest-caption under its own name.
    assert result["caption"]["without_retrieval"]["applicable"] is False
    assert "nothing to transfer" in result["caption"]["without_retrieval"]["reason"]
    assert 0.0 <= result["caption"]["nearest_caption"]["bleu4"] <= 1.0
    assert "cider" in result["caption"]["generators"]["smallcap"]["without_retrieval"]
    # Colour questions have 6 answers and shape questions 5: better than chance means retrieval and the
    # answerer learnt something from 48 training images.
    assert result["vqa"]["per_question_type"]["color"]["accuracy"] > 0.5
    report = Path(result["report"])
    assert report.is_file() and report.parent.parent.name == "shapes"
    html = report.read_text()
    assert "without retrieval" in html.lower() and "<img" in html
    predictions = run["store"].read("vqa_predictions", columns=["run_id", "neighbour_ids", "variant"]).to_pylist()
    assert all(p["run_id"] for p in predictions)  # provenance: the Prefect flow run that wrote each row
    assert all(len(p["neighbour_ids"]) > 0 for p in predictions if p["variant"] == "fusion")
    runs = run["store"].read(EVAL_RUNS).to_pylist()
    assert [r["run_id"] for r in runs] == [result["run_id"]]
    assert json.loads(runs[0]["metrics"])["vqa"]["accuracy"] == result["vqa"]["accuracy"]


def test_status_reads_the_store_and_the_runs_flows_recorded(run):
    status = run["ravlm"]("status")
    assert status["images_without_vectors"]["count"] == 0
    assert status["encoder"]["model_tag"] == run["embed"]["model_tag"]
    assert status["tables"]["images"]["rows"] == N_TRAIN + N_TEST and status["tables"]["images"]["version"] >= 1
    assert {"ingest", "embed", "eval", "vqa", "caption"} <= set(status["last_runs"])
    ingest = status["last_runs"]["ingest"][0]
    assert ingest["state"] == "COMPLETED" and ingest["name"].startswith("ingest-shapes-")
    assert status["stale_predictions"]["vqa_predictions"]["stale"] == 0


class LoadLog(logging.Handler):
    """Counts the "loaded ..." lines every model load logs (ravlm_core.model_files.timed_load)."""

    def __init__(self):
        super().__init__()
        self.loads: list[str] = []

    def emit(self, record):
        if record.getMessage().startswith("loaded "):
            self.loads.append(record.getMessage())


def test_an_idle_nightly_loads_no_model_writes_no_report_and_no_table_version(run):
    from flows.pipeline import nightly_flow

    store, ravlm = run["store"], run["ravlm"]
    overrides = {"data_dir": ravlm.options[1], "reports_dir": ravlm.options[3]}
    sources = [{"source": str(run["folder"]), "dataset": "shapes"}]
    nightly_flow(sources, overrides=overrides)  # settles whatever earlier tests left to evaluate
    versions = {name: store.table(name).version for name in store.db.list_tables().tables}
    handler = LoadLog()
    logging.getLogger("ravlm_core").addHandler(handler)
    try:
        idle = nightly_flow(sources, overrides=overrides)
    finally:
        logging.getLogger("ravlm_core").removeHandler(handler)
    assert handler.loads == []
    assert idle["embed"]["new_images"] == 0 and idle["eval"][0]["unchanged"] is True
    after = {name: store.table(name).version for name in store.db.list_tables().tables}
    assert after.pop("runs") > versions.pop("runs")  # the run's own record, for `ravlm status`
    assert after == versions


def test_search_ask_and_sql(run):
    ravlm = run["ravlm"]
    hits = ravlm("search", "a drawing of a purple star", "-k", "5")
    assert len(hits) == 5 and all(h["dataset"] == "shapes" for h in hits)
    image = sorted((run["folder"] / "images").glob("test_*.png"))[0]
    answer = ravlm("ask", str(image), "Which colour is the figure?", "--kb", "shapes")
    answers = set(run["store"].read(QA, columns=["answer"]).column("answer").to_pylist())
    assert answer["answer"] in answers and len(answer["neighbours"]) == 5
    rows = ravlm("sql", "select split, count(*) as n from images group by split order by split")
    assert rows == [{"split": "test", "n": N_TEST}, {"split": "train", "n": N_TRAIN}]


def test_interactive_commands_run_without_prefect_and_every_option_does_what_it_says(run):
    ravlm = run["ravlm"]
    # No flow and no server: with the API pointed at a closed port, a Prefect call would fail.
    offline = Ravlm(*ravlm.dirs, "http://127.0.0.1:9/api")
    assert {h["split"] for h in offline("search", "a drawing of a purple star", "--split", "test", "-k", "20")} == {"test"}
    assert {h["split"] for h in offline("search", "a star", "--dataset", "shapes", "--split", "train")} == {"train"}
    assert offline("search", "a star", "--dataset", "no-such-set") == []
    human = offline.raw("search", "a drawing of a purple star", "-k", "3")
    assert human.returncode == 0 and "images/" in human.stdout  # the image's path, not only its id

    tables = offline("tables")
    assert tables["images"]["rows"] == N_TRAIN + N_TEST and "image_id_idx" in tables["images"]["indexes"]
    assert offline("tables", "qa")["qa"]["schema"]["question"] == "string"
    assert "images" in {row["name"] for row in offline("sql", "show tables")}
    columns = offline("sql", "select column_name from information_schema.columns where table_name = 'qa'")
    assert {"question", "answer"} <= {row["column_name"] for row in columns}
    [content] = offline("sql", "select thumbnail from contents limit 1")
    assert base64.b64decode(content["thumbnail"]).startswith(b"\xff\xd8")  # JPEG bytes, not {}

    image = sorted((run["folder"] / "images").glob("test_*.png"))[0]
    for args, expected in ((("sql", "select nope from qa"), "error: sql: Binder Error"),
                           (("ask", str(image), "Which colour?", "--kb", "shapes:test"), "run `ravlm vqa shapes --split"),
                           (("tables", "nope"), "error: no table 'nope'")):
        done = offline.raw(*args)
        assert done.returncode == 2 and expected in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_rerunning_every_step_adds_only_a_run_record(run):
    ravlm, store = run["ravlm"], run["store"]
    before = table_counts(store)
    again = {
        "ingest": ravlm("ingest", str(run["folder"]), "--dataset", "shapes"),
        "embed": ravlm("embed"),
        "eval": ravlm("eval", "shapes"),
    }
    after = table_counts(store)
    assert again["ingest"]["new_images"] == 0 and again["embed"]["new_images"] == 0
    assert again["eval"]["vqa"] == run["eval"]["vqa"]
    assert after.pop(EVAL_RUNS) == before.pop(EVAL_RUNS) + 1
    assert after.pop("runs") > before.pop("runs")  # every flow run reports its outcome for `ravlm status`
    assert after == before
    assert store.count(IMAGES) == N_TRAIN + N_TEST


def test_an_unlabeled_query_set_is_answered_against_another_datasets_knowledge_base(run, tmp_path):
    ravlm, store = run["ravlm"], run["store"]
    folder = tmp_path / "tonight"
    folder.mkdir()
    # New photos, unlabeled, no manifest; one is a byte copy of a knowledge-base (train) image.
    images = sorted((run["folder"] / "images").glob("test_*.png"))[:2] + [run["folder"] / "images/train_00000.png"]
    for n, image in enumerate(images):
        (folder / f"photo{n}.png").write_bytes(image.read_bytes())
    (tmp_path / "questions.txt").write_text("Which colour is the figure?\nWhat shape is this?\n")
    assert ravlm("ingest", str(folder), "--dataset", "tonight")["added"] == 3
    ravlm("embed")
    vqa = ravlm("vqa", "tonight", "--kb", "shapes:train", "--questions", str(tmp_path / "questions.txt"))
    assert vqa["items"] == 6 and vqa["kb"] == "shapes:train"
    rows = store.read("vqa_predictions", where=f"job_id = '{vqa['job_id']}'").to_pylist()
    assert len(rows) == 6 and all(r["answer"] is None and r["prediction"] for r in rows)
    # The leakage guard: the copy of a train image never retrieves it, and says so.
    copied = store.read("images", where="path = 'images/train_00000.png'").to_pylist()[0]["image_id"]
    assert all(copied not in r["neighbour_ids"] for r in rows if r["image_id"] == copied)
    captions = ravlm("caption", "tonight", "--kb", "shapes:train")
    rows = store.read("caption_predictions", where=f"job_id = '{captions['job_id']}'").to_pylist()
    assert len(rows) == 3 and captions["near_duplicate_items"] >= 1
    copy = [r for r in rows if r["image_id"] == copied][0]
    assert copy["near_duplicates"] >= 1 and copied not in copy["neighbour_ids"] and copy["prediction"]
    result = ravlm("eval", "tonight", "--kb", "shapes:train", "--questions", str(tmp_path / "questions.txt"))
    assert result["vqa"]["evaluated"] is False and result["vqa"]["items"] == 6


def test_eval_compares_model_generators_side_by_side_through_the_cli(run, tmp_path):
    """Tiny random chat VLM and BLIP captioner, saved with save_pretrained and loaded by the flow's own code."""
    from tests.helpers.random_models import make_blip, make_vlm

    ravlm, store = run["ravlm"], run["store"]
    vlm, blip = make_vlm(tmp_path / "vlm"), make_blip(tmp_path / "blip", "caption")
    vlm_spec, blip_spec = f"vlm:{vlm},max_new_tokens=3,batch_size=16", f"blip:{blip},max_new_tokens=3"
    result = ravlm("eval", "shapes", "--generator", vlm_spec, "--generator", blip_spec)
    n_test_questions = store.count(QA, "split = 'test'")
    # The chosen generator (the first for each task) keeps the shape scripts read; the others sit beside it.
    assert result["vqa"]["n"] == result["vqa"]["without_retrieval"]["n"] == n_test_questions
    assert set(result["caption"]["generators"]) == {blip_spec}
    assert "cider" in result["caption"]["generators"][blip_spec]["without_retrieval"]
    jobs = json.loads(store.read(EVAL_RUNS, where=f"run_id = '{result['run_id']}'").to_pylist()[0]["config"])["jobs"]
    rows = store.read("vqa_predictions", where=f"job_id = '{jobs['vqa']}'").to_pylist()
    assert len(rows) == n_test_questions and all(r["generator"].startswith("vlm-") for r in rows)
    assert all("Similar images:" in r["prompt"] and r["question"] in r["prompt"] for r in rows)
    bare = store.read("vqa_predictions", where=f"job_id = '{jobs['vqa_without_retrieval']}'").to_pylist()
    assert bare and all("Similar images" not in r["prompt"] and r["neighbour_ids"] == [] for r in bare)
    html = Path(result["report"]).read_text()
    assert "Generators, on the same items" in html and blip_spec in html and "prompt (" in html


def test_user_errors_are_one_line_and_rejected_rows_exit_3(run, tmp_path):
    ravlm = run["ravlm"]
    missing_kb = ravlm.raw("vqa", "shapes", "--kb", "nowhere:train")
    assert missing_kb.returncode == 2 and "Traceback" not in missing_kb.stderr
    assert "error: knowledge base nowhere:train has no images" in missing_kb.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.jsonl").write_text('{"x": 1}\n')
    bad_manifest = ravlm.raw("ingest", str(broken))
    assert bad_manifest.returncode == 2 and "Traceback" not in bad_manifest.stderr
    assert "has no `image` column" in bad_manifest.stderr
    (broken / "manifest.jsonl").write_text('{"image": "../escape.png"}\n{"image": "a.png"}\n')
    (broken / "a.png").write_bytes((run["folder"] / "images" / "train_00000.png").read_bytes())
    partly = ravlm.raw("ingest", str(broken), "--json")
    assert partly.returncode == 3 and json.loads(partly.stdout)["added"] == 1
    assert "leaves" in json.loads(partly.stdout)["bad_rows"][0]["reason"]
    unknown = ravlm.raw("caption", "shapes", "--generator", "gpt5")
    assert unknown.returncode == 2 and "error: unknown generator kind 'gpt5'" in unknown.stderr
    no_model = ravlm.raw("vqa", "shapes", "--generator", f"vlm:{tmp_path / 'nowhere'}")
    assert no_model.returncode == 2 and "Traceback" not in no_model.stderr and "nowhere" in no_model.stderr


@pytest.mark.slow
def test_demo_on_easy_vqa_meets_the_accuracy_bar_and_reruns_add_only_a_run_record(harness, tmp_path):
    """The README's `make demo` job on the full embedded dataset (about 2 minutes on 2 cores)."""
    ravlm = Ravlm(tmp_path / "data", tmp_path / "reports", harness)
    first = ravlm("demo")
    assert first["ingest"]["new_images"] == 5000 and store_count(tmp_path, QA) == 48_248
    vqa = first["eval"]["vqa"]
    assert vqa["n"] == 9673 and vqa["accuracy"] >= 0.99  # the dataset author's CNN baseline: 0.938
    assert vqa["without_retrieval"]["n"] == 9673 and vqa["voting"]["accuracy"] >= 0.99
    assert first["eval"]["retrieval"]["text_to_image"]["hit@10"] >= 0.9
    store = Store(str(tmp_path / "data" / "lancedb"))
    before = table_counts(store)
    second = ravlm("demo")
    after = table_counts(store)
    assert second["eval"]["vqa"]["accuracy"] == vqa["accuracy"]
    assert after.pop(EVAL_RUNS) == before.pop(EVAL_RUNS) + 1 and after == before


@pytest.mark.slow
def test_the_same_commands_run_on_a_dask_cluster(harness, tmp_path, run):
    """`--runner dask` (prefect-dask, a local Dask cluster here) gives the thread runner's results."""
    pytest.importorskip("prefect_dask", reason="pip install 'ravlm[dask]' to run the Dask check")
    ravlm = Ravlm(tmp_path / "data", tmp_path / "reports", harness)
    ravlm.options += ["--runner", "dask"]
    assert ravlm("ingest", str(run["folder"]), "--dataset", "shapes")["added"] == N_TRAIN + N_TEST
    assert ravlm("embed")["new_images"] == N_TRAIN + N_TEST
    assert ravlm("eval", "shapes")["vqa"] == run["eval"]["vqa"]


def test_the_python_api_the_readme_documents(run):
    from ravlm_core.config import Settings
    from ravlm_core.query.analytics import run_sql
    from ravlm_core.query.session import Session

    session = Session(Settings(data_dir=Path(run["store"].uri).parent))
    hits = session.search("a drawing of a purple star", k=5, split="test")
    assert len(hits) == 5 and {h["split"] for h in hits} == {"test"} and all(h["path"] for h in hits)
    image = sorted((run["folder"] / "images").glob("test_*.png"))[0]
    # Its own bytes come first, described by their listing in the dataset asked for (other tests list the same
    # bytes under other names in other datasets of this store).
    assert session.search(image=image, k=1, dataset="shapes")[0]["path"] == f"images/{image.name}"
    answers = set(run["store"].read(QA, columns=["answer"]).column("answer").to_pylist())
    assert session.ask(image, "Which colour is the figure?", ["shapes"])["answer"] in answers
    counts = run_sql(session.store.uri,
                     "select split, count(*) n from images where dataset = 'shapes' group by 1 order by 1")
    assert counts.to_dict(orient="list") == {"split": ["test", "train"], "n": [N_TEST, N_TRAIN]}
