"""Embedding throughput of an encoder: the batched shard pipeline vs a one-image-at-a-time loop, in one run.

    python benchmarks/embed_throughput.py [--images 1000] [--single 200] [--batch-size 64] [--model DIR]

Both paths embed real easy-VQA test images from the same Parquet shard into a fresh LanceDB store:
- batched: `ravlm_core.embed.embed_shard`, the code the embed flow runs (read batches → decode → encode → commit);
- one at a time: for each image, decode → `embed_images([image])` → upsert one row (the naive loop).
It also times the encoder alone both ways, to tell model batching from I/O batching. Only the ratios measured
in this one run are meaningful; absolute images/s depend on the machine.

Without `--model`, the built-in encoder's heads are trained for one epoch on 256 captioned images first: head
quality does not change the cost of a forward pass, and the backbones are the real pretrained ones.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ravlm_core import embed, ingest  # noqa: E402
from ravlm_core.encoders import load_encoder  # noqa: E402
from ravlm_core.imaging import decode_image  # noqa: E402
from ravlm_core.store import MEMBERSHIPS, Store, image_vectors_table, vector_schema  # noqa: E402


def make_shard(work: Path, n_images: int, store: Store) -> str:
    """One content shard holding the first `n_images` easy-VQA test images, ingested into `store` by the real
    ingest code (embedding only embeds images some dataset lists)."""
    import easy_vqa

    folder = work / "images"
    folder.mkdir(parents=True)
    for num, path in sorted(easy_vqa.get_test_image_paths().items())[:n_images]:
        (folder / f"{num:05d}.png").write_bytes(Path(path).read_bytes())
    ingest.ingest_all(str(folder), "bench", store, work, shard_size=n_images)
    return ingest.content_shards(work / "parquet")[0]


def quick_builtin(work: Path, device: str) -> str:
    from ravlm_core.encoders.builtin import train_builtin_encoder
    from ravlm_core.sources import open_source

    records = [r for r in open_source("easy-vqa")[0] if r.split == "train" and r.caption][:256]
    images = [Image.open(r.path).convert("RGB") for r in records]
    return str(train_builtin_encoder(images, [r.caption for r in records], work / "models", device=device, epochs=1))


def shard_images(shard: str, limit: int) -> list[tuple[str, bytes]]:
    table = pq.read_table(shard, columns=["image_id", "image"]).slice(0, limit)
    return list(zip(table.column("image_id").to_pylist(), table.column("image").to_pylist()))


def one_at_a_time(store: Store, encoder, rows: list[tuple[str, bytes]]) -> float:
    """The naive loop: decode, encode and commit each image on its own. Returns seconds."""
    schema = vector_schema(encoder.dim, "image_id", MEMBERSHIPS)
    start = time.perf_counter()
    for image_id, data in rows:
        vector = encoder.embed_images([decode_image(data).image])
        row = {"image_id": [image_id], "vector": [vector[0]], "memberships": [["bench:test"]],
               "model_tag": [encoder.tag], "embedded_at": [None]}
        store.upsert(image_vectors_table(encoder.tag), pa.Table.from_pydict(row, schema=schema), "image_id")
    return time.perf_counter() - start


def encode_only(encoder, rows: list[tuple[str, bytes]], batch_size: int) -> tuple[float, float]:
    """Seconds to encode already-decoded images in batches, and one by one."""
    images = [decode_image(data).image for _, data in rows]
    encoder.embed_images(images[:batch_size])  # warm-up: first-call allocations are not throughput
    start = time.perf_counter()
    for i in range(0, len(images), batch_size):
        encoder.embed_images(images[i : i + batch_size])
    batched = time.perf_counter() - start
    start = time.perf_counter()
    for image in images:
        encoder.embed_images([image])
    return batched, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="images through the batched pipeline")
    parser.add_argument("--single", type=int, default=200, help="images through the one-at-a-time loop")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", help="encoder folder or hub id (default: built-in, heads trained briefly)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        batched_store = Store(str(work / "batched.lancedb"))
        shard = make_shard(work, max(args.images, args.single), batched_store)
        encoder = load_encoder(args.model or quick_builtin(work, args.device), device=args.device)
        encoder.embed_images([Image.new("RGB", (64, 64))] * 2)  # warm-up outside every timing

        start = time.perf_counter()
        result = embed.embed_shard(batched_store, encoder, shard, args.batch_size)
        batched_s = time.perf_counter() - start
        single_s = one_at_a_time(Store(str(work / "single.lancedb")), encoder, shard_images(shard, args.single))
        enc_batched_s, enc_single_s = encode_only(encoder, shard_images(shard, args.single), args.batch_size)

    n_single = args.single
    report = {
        "encoder": encoder.tag,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "pipeline_batched": {"images": result.new_images, "seconds": round(batched_s, 2),
                             "images_per_s": round(result.new_images / batched_s, 1),
                             "read_s": round(result.read_s, 2), "encode_s": round(result.encode_s, 2),
                             "write_s": round(result.write_s, 2)},
        "pipeline_one_at_a_time": {"images": n_single, "seconds": round(single_s, 2),
                                   "images_per_s": round(n_single / single_s, 1)},
        "encoder_only": {"images": n_single, "batched_images_per_s": round(n_single / enc_batched_s, 1),
                         "single_images_per_s": round(n_single / enc_single_s, 1)},
    }
    report["pipeline_speedup"] = round(report["pipeline_batched"]["images_per_s"]
                                       / report["pipeline_one_at_a_time"]["images_per_s"], 1)
    report["encoder_speedup"] = round(enc_single_s / enc_batched_s, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
