"""Embedding throughput in one run, per encoder: the model-only ceiling, end to end, one at a time, and a plain
torch DataLoader peer; `--rss` instead measures peak memory at two collection sizes.

    python benchmarks/embed_bench.py [--images 2000] [--single 100] [--encoders builtin,clip-b32] [--device cpu]
                                     [--workers N] [--json]
    python benchmarks/embed_bench.py --rss 10000,100000 [--json]

Images: N generated 256 x 256 JPEG photos (crops of scikit-image's sample photos), ingested by the real ingest
into Parquet shards of `--shard-size`. Per encoder, all in the same process and run:
- ceiling: `encoder.embed_pixels` on already-preprocessed batches of the encoder's own batch size (model only);
- end_to_end: `embed.embed_shard` over every shard into a fresh LanceDB store (read, decode, preprocess, encode,
  commit): what `ravlm embed` runs;
- one_at_a_time: decode → `embed_images([image])` → upsert one row, per image (`--single` images);
- dataloader_peer: a plain `torch.utils.data.DataLoader` (2 workers, torchvision decode-free transforms on the
  decoded image, batch 64) feeding the unoptimised model (the package's EfficientNet with batch-norm and
  explicit pads, contiguous memory; for CLIP the model as transformers loads it), then one LanceDB `add`.
Encoders: `builtin` (EfficientNet-Lite0 + heads trained for one epoch on 64 images: head quality does not change
the cost of a forward pass) and `clip-b32` (a CLIPModel with ViT-B/32's vision tower, random weights, 224 px; its
text tower is shrunk to 2 layers, which image embedding never runs). On CUDA the end-to-end run also samples GPU
utilisation (nvidia-smi, else torch.cuda.utilization). Only ratios within one run are comparable.

`--variants` (CPU, built-in encoder) also times the other ways its image side could run — the folded torch network
eager, torch.compile'd and under bf16 autocast, and the ONNX graph quantised to int8 — each with the lowest cosine
and largest difference of its vectors against the shipped graph's, the tolerance a faster variant would have to
meet to keep the model tag.

`--rss`: for each N, one child process ingests N tiny (32 px) JPEGs and a second embeds them with the built-in
encoder at 32 px (cheap, so 100k images finish in minutes); each reports its own peak RSS (ru_maxrss).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ravlm_core.config import apply_environment  # noqa: E402
from ravlm_core.embed import reader as embed_reader  # noqa: E402
from ravlm_core.embed import shards as embed  # noqa: E402
from ravlm_core.encoders import load_encoder  # noqa: E402
from ravlm_core.imaging import decode_image  # noqa: E402
from ravlm_core.ingest.shards import stored_shards  # noqa: E402
from ravlm_core.schemas import MEMBERSHIPS, image_vectors_table, vector_schema  # noqa: E402
from ravlm_core.store import Store  # noqa: E402
from tests.helpers.stores import ingest_folder  # noqa: E402

PEER_BATCH, PEER_WORKERS = 64, 2


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux reports KiB


def make_photos(folder: Path, n: int, side: int, seed: int = 0) -> None:
    """n distinct side x side JPEGs: random crops of scikit-image's sample photos."""
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry()]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        photo = photos[i % len(photos)]
        crop = int(rng.integers(side // 2, min(photo.shape[:2]) + 1))
        top, left = (int(rng.integers(0, photo.shape[d] - crop + 1)) for d in (0, 1))
        image = Image.fromarray(photo[top : top + crop, left : left + crop]).resize((side, side))
        image.save(folder / f"{i:06d}.jpg", quality=90)


def copy_easy_vqa(folder: Path, n: int) -> None:
    """The first n easy-VQA images (64 x 64 PNG, train then test): the demo's data."""
    import easy_vqa

    paths = [p for split in (easy_vqa.get_train_image_paths(), easy_vqa.get_test_image_paths())
             for _, p in sorted(split.items())][:n]
    if len(paths) < n:
        raise SystemExit(f"easy-VQA has {len(paths)} images; ask for fewer or use --images-from jpeg256")
    folder.mkdir(parents=True)
    for i, path in enumerate(paths):
        shutil.copyfile(path, folder / f"{i:06d}.png")


def ingest_photos(work: Path, n: int, side: int, shard_size: int, easy: bool = False) -> tuple[Store, list[str]]:
    copy_easy_vqa(work / "photos", n) if easy else make_photos(work / "photos", n, side)
    store = Store(str(work / "lancedb"))
    ingest_folder(work / "photos", "bench", store, work / "data", shard_size=shard_size)
    shutil.rmtree(work / "photos")
    return store, stored_shards(store)


def builtin_encoder(work: Path, device: str, image_size: int = 128) -> str:
    from ravlm_core.encoders.training import train_builtin_encoder

    make_photos(work / "train", 64, 64, seed=1)
    images = [Image.open(path).convert("RGB") for path in sorted((work / "train").glob("*.jpg"))]
    captions = ["a photo", "a picture"] * 32
    return str(train_builtin_encoder(images, captions, work / "models", device=device, image_size=image_size,
                                     epochs=1, batch_size=32))


def clip_b32_encoder(work: Path) -> str:
    """A ViT-B/32-sized CLIP (random weights) saved as a local folder the real loader opens."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    folder = work / "clip-b32"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{c + "</w>": 2 + i for i, c in enumerate("abcdefgh")}}
    text = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=2, num_attention_heads=8,
                vocab_size=len(vocab), max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  image_size=224, patch_size=32)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=512)).save_pretrained(folder)
    CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(folder)
    return str(folder)


def shard_rows(shards: list[str], limit: int | None = None) -> list[tuple[str, bytes]]:
    rows = []
    for shard in shards:
        table = pq.read_table(shard, columns=["image_id", "image"])
        rows += zip(table.column("image_id").to_pylist(), table.column("image").to_pylist())
        if limit and len(rows) >= limit:
            return rows[:limit]
    return rows


def ceiling(encoder, rows: list[tuple[str, bytes]], n: int) -> dict:
    """Images/s of the forward pass alone, on preprocessed batches of the encoder's batch size.

    The built-in encoder's CPU graph runs with onnxruntime's spinning threads turned off, which suits the reader
    thread beside it; the same graph with spinning on is timed too, and the faster of the two is the ceiling."""
    size = encoder.batch_size
    pixels = np.stack([encoder.preprocess(decode_image(blob).image) for _, blob in rows[:size]])
    runs = {"ceiling_as_run_img_s": encoder.embed_pixels}
    graph = getattr(encoder, "_graph", None)
    if graph:
        from ravlm_core.encoders.image_graph import ONNX_FILE, ImageGraphRunner

        runs["ceiling_spinning_img_s"] = ImageGraphRunner(encoder.model_dir / ONNX_FILE, graph.threads, spinning=True)
    report = {}
    for name, forward in runs.items():
        forward(pixels)  # warm-up
        batches = max(2, n // size)
        start = time.perf_counter()
        for _ in range(batches):
            forward(pixels)
        report[name] = round(batches * size / (time.perf_counter() - start), 1)
    return {"ceiling_img_s": max(report.values()), **report}


def end_to_end(encoder, shards: list[str], work: Path, workers: int, gpu: bool) -> dict:
    store = Store(str(work / "lancedb"))  # the ingested store, its vector rows of this encoder deleted
    if store.has(image_vectors_table(encoder.tag)):
        store.delete(image_vectors_table(encoder.tag), "true")
    sampler = _GpuSampler() if gpu else None
    faults, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    results = [embed.embed_shard(store, encoder, shard, workers=workers) for shard in shards]
    seconds = time.perf_counter() - start
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    n = sum(r.new_images for r in results)
    assert store.count(image_vectors_table(encoder.tag)) == n
    report = {"images": n, "img_s": round(n / seconds, 1), "minor_faults_per_image": round(faults / n),
              **{f"{part}_s": round(sum(getattr(r, f"{part}_s") for r in results), 2)
                 for part in ("read", "encode", "write")}}
    if sampler:
        report["gpu_utilisation_pct"] = sampler.stop()
    return report


def one_at_a_time(encoder, rows: list[tuple[str, bytes]], work: Path) -> float:
    store, schema = Store(str(work / "single.lancedb")), vector_schema(encoder.dim, "image_id", MEMBERSHIPS)
    start = time.perf_counter()
    for image_id, blob in rows:
        vector = encoder.embed_images([decode_image(blob).image])
        row = {"image_id": [image_id], "vector": [vector[0]], "memberships": [["bench:all"]],
               "model_tag": [encoder.tag], "embedded_at": [None]}
        store.upsert(image_vectors_table(encoder.tag), pa.Table.from_pydict(row, schema=schema), "image_id")
    return len(rows) / (time.perf_counter() - start)


def jpeg_draft_min_cosine(encoder, work: Path) -> float:
    """How far JPEG reduce-on-decode (PIL draft: 256 px decoded at 128 by DCT scaling) moves the built-in
    encoder's vectors from a full decode + bicubic resize, over 64 photos: the lowest cosine."""
    make_photos(work / "draft", 64, 256, seed=5)
    full, drafted = [], []
    for path in sorted((work / "draft").glob("*.jpg")):
        full.append(decode_image(path.read_bytes()).image)
        image = Image.open(path)
        image.draft("RGB", (encoder.spec.preprocessing.image_size,) * 2)
        drafted.append(image.convert("RGB"))
    return round(float((encoder.embed_images(full) * encoder.embed_images(drafted)).sum(1).min()), 4)


def model_variants(encoder, rows: list[tuple[str, bytes]], work: Path) -> dict:
    """The built-in image side's other ways to run on a CPU, each timed like the ceiling (images/s at the encoder's
    batch size) with how far its vectors are from the shipped graph's over `rows` (lowest cosine, largest
    difference): the folded torch network eager, under torch.compile, under bf16 autocast, and the ONNX graph
    quantised to int8 (onnxruntime static QDQ, per-channel weights, calibrated on the first 64 images)."""
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from ravlm_core.encoders.image_graph import ONNX_FILE, ImageGraphRunner
    from ravlm_core.vectors import unit_rows_np

    size = encoder.batch_size
    pixels = encoder.preprocess.many([decode_image(blob).image for _, blob in rows])
    shipped = encoder.embed_pixels(pixels)
    tower, head = encoder._image, encoder._heads.image

    def torch_forward(network, bf16=False):
        def forward(batch):
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                return head(network(tower.preprocess.normalise(torch.from_numpy(batch)))).float().numpy()
        return forward

    class Calibration(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"pixels": pixels[i : i + 16]} for i in range(0, min(64, len(pixels)), 16)])

        def get_next(self):
            return next(self.batches, None)

    int8_path = work / "image_embed.int8.onnx"
    quantize_static(str(encoder.model_dir / ONNX_FILE), str(int8_path), Calibration(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    variants = {"torch_eager": torch_forward(tower.network), "torch_bf16": torch_forward(tower.network, bf16=True),
                "onnx_int8": ImageGraphRunner(int8_path, torch.get_num_threads(), spinning=True)}
    compile_started = time.perf_counter()
    variants["torch_compile"] = torch_forward(torch.compile(tower.network))
    report = {}
    for name, forward in variants.items():
        vectors = unit_rows_np(np.concatenate([forward(pixels[i : i + size]) for i in range(0, len(pixels), size)]))
        if name == "torch_compile":
            report["torch_compile_first_s"] = round(time.perf_counter() - compile_started, 1)
        batch = pixels[:size]
        start, batches = time.perf_counter(), 0
        while time.perf_counter() - start < 5:
            forward(batch)
            batches += 1
        report[name] = {"img_s": round(batches * size / (time.perf_counter() - start), 1),
                        "min_cosine": round(float((vectors * shipped).sum(1).min()), 6),
                        "max_abs_diff": float(np.abs(vectors - shipped).max())}
    return report


class _ShardImages:
    """Map-style dataset over the shards' rows for the peer: decode, then torchvision transforms."""

    def __init__(self, rows, transform):
        self.rows, self.transform = rows, transform

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.transform(decode_image(self.rows[i][1]).image)


def dataloader_peer(kind: str, model_ref: str, shards: list[str], work: Path, device: str) -> float:
    """Images/s of the plain recipe: DataLoader (2 workers) → the unoptimised model → one LanceDB add."""
    import lancedb
    import torch
    from torchvision import transforms as T

    start = time.perf_counter()
    rows = shard_rows(shards)
    if kind == "builtin":
        from ravlm_core.encoders.builtin import BuiltinEncoder

        encoder = BuiltinEncoder(model_ref, device=device)
        tower, head = encoder._image, encoder._heads.image
        pre = tower.preprocess
        transform = T.Compose([T.Resize((pre.image_size, pre.image_size), T.InterpolationMode.BICUBIC),
                               T.ToTensor(), T.Normalize(pre.mean, pre.std)])
        forward = lambda x: head(torch.nn.functional.adaptive_avg_pool2d(  # noqa: E731
            tower.model.extract_features(x), 1).flatten(1))
    else:
        from transformers import CLIPModel

        model = CLIPModel.from_pretrained(model_ref).eval().to(device)
        transform = T.Compose([T.Resize(224, T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
                               T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])
        forward = lambda x: model.get_image_features(pixel_values=x).pooler_output  # noqa: E731
    loader = torch.utils.data.DataLoader(_ShardImages(rows, transform), batch_size=PEER_BATCH,
                                         num_workers=PEER_WORKERS)
    vectors = []
    with torch.inference_mode():
        for batch in loader:
            vectors.append(torch.nn.functional.normalize(forward(batch.to(device)), dim=-1).float().cpu().numpy())
    vectors = np.concatenate(vectors)
    table = pa.table({"image_id": [i for i, _ in rows],
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])})
    lancedb.connect(str(work / "peer.lancedb")).create_table("vectors", table, mode="overwrite")
    return len(rows) / (time.perf_counter() - start)


class _GpuSampler:
    """Mean GPU utilisation (%) over a run, sampled every 0.2 s."""

    def __init__(self):
        self.samples, self.done = [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        import torch

        while not self.done.wait(0.2):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      "-i", "0"], capture_output=True, text=True, timeout=5).stdout
                self.samples.append(float(out.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                self.samples.append(float(torch.cuda.utilization()))

    def stop(self) -> float | None:
        self.done.set()
        self.thread.join()
        return round(float(np.mean(self.samples)), 1) if self.samples else None


def bench_encoder(kind: str, shards: list[str], work: Path, args) -> dict:
    ref = builtin_encoder(work, args.device) if kind == "builtin" else clip_b32_encoder(work)
    if kind != "builtin" and args.device == "cpu":
        shards = shards[: args.clip_shards]  # ViT-B/32 runs ~15 images/s on 2 cores: a few shards tell its ratios
    workers = embed_reader.reader_workers(args.device) if args.workers is None else args.workers
    encoder = load_encoder(ref, device=args.device)
    rows = shard_rows(shards, max(args.single, 256))
    encoder.embed_images([decode_image(blob).image for _, blob in rows[:2]])  # export / warm-up outside timings
    report = {"encoder": encoder.tag, "batch_size": encoder.batch_size, "reader_workers": workers}
    report.update(ceiling(encoder, rows, sum(pq.read_metadata(s).num_rows for s in shards)))
    e2e = end_to_end(encoder, shards, work, workers, args.device.startswith("cuda"))
    report["end_to_end_img_s"] = e2e.pop("img_s")
    report["end_to_end"] = e2e
    if workers == 0:  # is a reader process worth its core here? (the default says no on a CPU)
        report["end_to_end_1_reader_img_s"] = end_to_end(encoder, shards, work, 1, False)["img_s"]
    report["one_at_a_time_img_s"] = round(one_at_a_time(encoder, rows[: args.single], work), 1)
    report["dataloader_peer_img_s"] = round(dataloader_peer(kind, ref, shards, work, args.device), 1)
    if kind == "builtin":
        report["jpeg_draft_min_cosine"] = jpeg_draft_min_cosine(encoder, work)
        if args.variants and args.device == "cpu":
            report["variants"] = model_variants(encoder, rows[:256], work)
    report["end_to_end_vs_ceiling"] = round(report["end_to_end_img_s"] / report["ceiling_img_s"], 3)
    report["end_to_end_vs_peer"] = round(report["end_to_end_img_s"] / report["dataloader_peer_img_s"], 2)
    return report


def throughput(args) -> dict:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _, shards = ingest_photos(work, args.images, 256, args.shard_size, easy=args.images_from == "easy-vqa")
        encoders = {kind: bench_encoder(kind, shards, work, args) for kind in args.encoders.split(",")}
    first = encoders.get("builtin") or next(iter(encoders.values()))
    top = {key: first[key] for key in ("ceiling_img_s", "end_to_end_img_s", "one_at_a_time_img_s",
                                       "dataloader_peer_img_s")}
    return {**top, "peak_rss_mb": peak_rss_mb(), "images": args.images, "images_from": args.images_from,
            "device": args.device,
            "torch_threads": torch.get_num_threads(), "load_avg_1m": round(os.getloadavg()[0], 2),
            "encoders": encoders}


def rss_child(stage: str, n: int, work: Path) -> dict:
    """One stage of the RSS measurement in this (child) process: ingest n 32-px JPEGs, or embed them."""
    if stage == "ingest":
        start = time.perf_counter()
        ingest_photos(work, n, 32, shard_size=1000)
        return {"ingest_s": round(time.perf_counter() - start, 1), "ingest_peak_rss_mb": peak_rss_mb()}
    store = Store(str(work / "lancedb"))
    encoder = load_encoder(builtin_encoder(work, "cpu", image_size=32))
    start = time.perf_counter()
    done = sum(embed.embed_shard(store, encoder, shard).new_images for shard in stored_shards(store))
    return {"embedded": done, "embed_s": round(time.perf_counter() - start, 1), "embed_peak_rss_mb": peak_rss_mb()}


def rss(sizes: list[int]) -> dict:
    runs = {}
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            runs[n] = {}
            for stage in ("ingest", "embed"):
                out = subprocess.run([sys.executable, __file__, "--rss-child", stage, str(n), tmp], check=True,
                                     capture_output=True, text=True).stdout
                runs[n].update(json.loads(out.splitlines()[-1]))
    embed_peaks = [runs[n]["embed_peak_rss_mb"] for n in sizes]
    return {"runs": {str(n): r for n, r in runs.items()}, "peak_rss_mb": max(embed_peaks),
            "embed_peak_rss_ratio": round(max(embed_peaks) / min(embed_peaks), 3),
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="images ingested and embedded end to end")
    parser.add_argument("--single", type=int, default=100, help="images through the one-at-a-time loop")
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--images-from", choices=("easy-vqa", "jpeg256"),
                        help="64-px easy-VQA PNGs or 256-px JPEG photos (default: easy-vqa on a CPU, else jpeg256)")
    parser.add_argument("--encoders", default="builtin,clip-b32")
    parser.add_argument("--clip-shards", type=int, default=1, help="shards the CLIP model embeds on a CPU")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, help="reader processes (default: embed_reader.reader_workers(device))")
    parser.add_argument("--variants", action="store_true",
                        help="also time the built-in encoder as torch eager / torch.compile / bf16 / ONNX int8 (CPU)")
    parser.add_argument("--rss", help="comma-separated collection sizes: measure peak RSS instead")
    parser.add_argument("--rss-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args()
    apply_environment()
    args.images_from = args.images_from or ("easy-vqa" if args.device == "cpu" else "jpeg256")
    if args.rss_child:
        print(json.dumps(rss_child(args.rss_child[0], int(args.rss_child[1]), Path(args.rss_child[2]))))
        return
    report = rss([int(n) for n in args.rss.split(",")]) if args.rss else throughput(args)
    if args.json:
        print(json.dumps(report))
        return
    print(json.dumps(report, indent=2) if args.rss else _table(report))


def _table(report: dict) -> str:
    lines = [f"{'encoder':<10} {'batch':>5} {'ceiling':>9} {'end-to-end':>11} {'1-at-a-time':>12} {'peer':>8} "
             f"{'e2e/ceil':>9} {'e2e/peer':>9}   (images/s)"]
    for kind, r in report["encoders"].items():
        lines.append(f"{kind:<10} {r['batch_size']:>5} {r['ceiling_img_s']:>9} {r['end_to_end_img_s']:>11} "
                     f"{r['one_at_a_time_img_s']:>12} {r['dataloader_peer_img_s']:>8} "
                     f"{r['end_to_end_vs_ceiling']:>9} {r['end_to_end_vs_peer']:>9}")
    lines.append(f"{report['images']} images, {report['device']}, {report['torch_threads']} threads, "
                 f"peak RSS {report['peak_rss_mb']} MB, load {report['load_avg_1m']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
