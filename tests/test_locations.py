"""A data dir on object storage: the store, Parquet shards and trained models all live under one `s3://` URI, so
a second machine with the same settings works from them. Checked against moto's S3 server on loopback; the
endpoint and keys reach pyarrow and LanceDB through the standard AWS environment variables."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ravlm_core import locations
from ravlm_core.config import Settings
from tests.helpers.cli import ROOT

moto_server = pytest.importorskip("moto.server", reason="needs moto[server] (pip install 'ravlm[test]')")

BUCKET = "ravlm-test"


@pytest.fixture(scope="module")
def s3_env():
    """A moto S3 server and the environment variables a machine using it has (restored afterwards)."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        import pyarrow.fs as pafs

        pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], allow_bucket_creation=True).create_dir(BUCKET)
        yield env
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
        server.stop()


def test_settings_put_everything_under_the_data_dir_uri():
    settings = Settings(data_dir="s3://bucket/ravlm/")
    assert settings.store_uri == "s3://bucket/ravlm/lancedb"
    assert settings.parquet_dir == "s3://bucket/ravlm/parquet"
    assert settings.models_dir == "s3://bucket/ravlm/models"
    local = Settings(data_dir=ROOT / "data")  # a local folder stays a Path
    assert local.parquet_dir == ROOT / "data" / "parquet" and local.store_uri == str(ROOT / "data" / "lancedb")


def test_a_model_folder_is_downloaded_only_once_it_is_complete(s3_env, tmp_path, monkeypatch):
    models = f"s3://{BUCKET}/unit/models"
    monkeypatch.setenv("RAVLM_CACHE_DIR", str(tmp_path / "cache-a"))
    folder = locations.local_models(models) / "answerers" / "abc"
    folder.mkdir(parents=True)
    (folder / "weights.safetensors").write_bytes(b"w" * 1000)
    (folder / "config.json").write_text("{}")
    # A half-uploaded folder (its files, no marker yet), as a reader on another machine could find it.
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(models)
    with fs.open_output_stream(f"{root}/answerers/half/weights.safetensors") as out:
        out.write(b"partial")
    locations.publish(models, folder)
    ref = locations.shared_ref(models, folder)  # how tasks name it to each other
    assert ref == f"{models}/answerers/abc"

    monkeypatch.setenv("RAVLM_CACHE_DIR", str(tmp_path / "cache-b"))  # the second machine
    fetched = locations.pulled(models, "answerers")
    assert sorted(p.name for p in fetched.iterdir()) == ["abc"]  # never the half folder
    assert (fetched / "abc" / "weights.safetensors").read_bytes() == b"w" * 1000
    assert (fetched / "abc" / locations.COMPLETE).is_file()
    assert locations.local_model(ref) == str(fetched / "abc")


def ravlm(data_dir: str, cwd, env: dict, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "flows.cli", "--data-dir", data_dir, *args, "--json"], cwd=cwd,
                          env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


@pytest.mark.slow
@pytest.mark.server
def test_a_second_machine_works_from_the_bucket(s3_env, harness, tmp_path):
    """Machine A ingests and embeds into s3://; machine B (another working dir, an empty model cache) searches
    the same data dir: vectors, shards and the trained encoder all come from the bucket."""
    from tests.helpers.shapes import make_shapes_dataset

    data_dir = f"s3://{BUCKET}/e2e/ravlm"
    folder = tmp_path / "shapes"
    make_shapes_dataset(folder, n_train=32, n_test=8, seed=1, fmt="jsonl")
    machine_a, machine_b = tmp_path / "a", tmp_path / "b"
    for machine in (machine_a, machine_b):
        machine.mkdir()
    env_a = {"PREFECT_API_URL": harness, "RAVLM_CACHE_DIR": str(machine_a / "cache"), "RAVLM_SHARD_SIZE": "16"}
    ingested = ravlm(data_dir, machine_a, env_a, "ingest", str(folder), "--dataset", "shapes")
    embedded = ravlm(data_dir, machine_a, env_a, "embed")
    assert ingested["new_images"] == embedded["new_images"] == 40
    assert embedded["model_ref"].startswith(f"{data_dir}/models/builtin-")
    assert sorted(p.name for p in machine_a.iterdir()) == ["cache"]  # nothing but the model cache is local

    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(data_dir)
    shards = [info.path for info in fs.get_file_info(pafs.FileSelector(f"{root}/parquet/content"))]
    assert len(shards) == 3 and all(p.endswith(".parquet") for p in shards)
    pin = json.loads(locations.read_text(f"{data_dir}/models/builtin.json"))
    assert fs.get_file_info(f"{root}/models/{pin['model_dir']}/{locations.COMPLETE}").type == pafs.FileType.File

    env_b = {"RAVLM_CACHE_DIR": str(machine_b / "cache")}
    # Status reads the pin and the encoder's tag where they live, without downloading the model.
    status = ravlm(data_dir, machine_b, env_b, "status")
    assert status["encoder"]["model_tag"] == embedded["model_tag"]
    assert status["images_without_vectors"]["count"] == 0 and not (machine_b / "cache").exists()
    hits = ravlm(data_dir, machine_b, env_b, "search", "a red circle", "-k", "5")
    assert len(hits) == 5 and all(hit["dataset"] == "shapes" for hit in hits)
    # Analysts' SQL and table listing read the bucket's Lance datasets in place.
    assert ravlm(data_dir, machine_b, env_b, "sql", "select split, count(*) as n from images group by split "
                 "order by split") == [{"split": "test", "n": 8}, {"split": "train", "n": 32}]
    assert ravlm(data_dir, machine_b, env_b, "tables")["images"]["rows"] == 40
    cached = machine_b / "cache" / "s3" / BUCKET / "e2e" / "ravlm" / "models" / pin["model_dir"]
    assert (cached / "heads.safetensors").is_file() and (cached / locations.COMPLETE).is_file()

    # B's embed run finds every vector and the pinned encoder in the bucket: nothing new, nothing trained.
    again = ravlm(data_dir, machine_b, {**env_b, "PREFECT_API_URL": harness}, "embed")
    assert again["new_images"] == 0 and again["model_tag"] == embedded["model_tag"]
