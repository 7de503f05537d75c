"""Items/s (and tokens/s) of every generator kind, batched against one item at a time, in one run.

    python benchmarks/generator_throughput.py [--device cpu|cuda] [--items 16] [--batch-size 8]
                                              [--max-new-tokens 16] [--size bench|tiny] [--json]

Model generators run on random weights of real sizes, built from configs by `tests/helpers/random_models.py`:
BLIP-base (captioning, 224M parameters; VQA, 361M) and a SmolVLM-256M-shaped Idefics3 chat VLM (256M), plus SmallCap
at its default config. Each gets the same requests: a 64 px image and 5 retrieved neighbours' captions and answers
in its prompt. Every generation is forced to `--max-new-tokens` tokens (random weights would stop at random), so batched
and single runs decode the same amount. The builtin baselines (voting, the fusion answerer, consensus transfer)
work on vectors and are timed on the same item count. On CUDA the models run in bfloat16 (the generators' default
there); tokens/s counts generated tokens only. Timings are wall-clock after one warm-up call per setting.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ravlm_core.generators import GeneratorSpec, Request, load_generator  # noqa: E402
from tests.helpers.random_models import make_blip, make_vlm  # noqa: E402
from tests.helpers.shapes import COLORS, SHAPES, draw_image  # noqa: E402

log = logging.getLogger("generator_throughput")


def requests(n: int, seed: int = 0) -> list[Request]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        shape, color = rng.choice(SHAPES), rng.choice(COLORS)
        context = [{"caption": f"a drawing of a {rng.choice(COLORS)} {rng.choice(SHAPES)}",
                    "qa": [("what color is the shape?", rng.choice(COLORS))]} for _ in range(5)]
        out.append(Request(draw_image(rng, shape, color), "what color is the shape?", context,
                           np.random.default_rng(rng.randrange(1 << 30)).standard_normal(64).astype(np.float32)))
    return out


def force_length(generator, tokens: int) -> None:
    """Make every generate() call decode exactly `tokens` new tokens."""
    model = generator.model.decoder if hasattr(generator.model, "decoder") else generator.model
    original = model.generate

    def generate(*args, **kwargs):
        kwargs.update(min_new_tokens=tokens, max_new_tokens=tokens)
        return original(*args, **kwargs)

    model.generate = generate


def time_model(generator, reqs: list[Request], task: str, batch_size: int) -> float:
    generator.generate(reqs[:batch_size], task)  # warm-up: first-call allocations and lazy inits
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(reqs), batch_size):
        generator.generate(reqs[i : i + batch_size], task)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def smallcap_folder(root: Path, device: str) -> Path:
    """A SmallCap decoder at the default config, briefly trained on synthetic captions (timing, not quality)."""
    from ravlm_core.generators.smallcap import SmallCapConfig
    from ravlm_core.generators.smallcap_train import train_smallcap

    rng = random.Random(1)
    captions = [f"a drawing of a {rng.choice(COLORS)} {rng.choice(SHAPES)}" for _ in range(64)]
    vectors = np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)
    neighbours = [[[c] for c in captions[(i + 1) % 64 : (i + 1) % 64 + 5]] for i in range(64)]  # one caption each
    return train_smallcap(vectors, neighbours, captions, root, "throughput", SmallCapConfig(epochs=1), device)


def builtin_rows(n: int, device: str) -> list[dict]:
    """Voting, the fusion answerer and consensus transfer, all items at once against one at a time."""
    from ravlm_core.jobs.answerers import FusionAnswerer, FusionConfig, train_fusion, vote_answers
    from ravlm_core.jobs.captioning import consensus_captions
    from ravlm_core.retrieval.search import Neighbours

    rng = np.random.default_rng(0)
    answers = [f"a{i}" for i in range(13)]
    images, questions = rng.standard_normal((n, 256)).astype(np.float32), rng.standard_normal((n, 384)).astype(np.float32)
    context = rng.random((n, len(answers) + 1)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        folder = train_fusion(images, questions, context, rng.integers(0, 13, n), answers, Path(tmp), "bench",
                              FusionConfig(epochs=1), device)
        fusion = FusionAnswerer(folder, device)
        captions = {f"i{j}": f"a drawing of a {COLORS[j % 6]} {SHAPES[j % 5]}" for j in range(30)}
        caption_vectors = {c: v for c, v in zip(sorted(set(captions.values())),
                                                rng.standard_normal((30, 256)).astype(np.float32))}
        neighbours = Neighbours([[f"i{(i + j) % 30}" for j in range(16)] for i in range(n)],
                                [list(np.linspace(0.9, 0.5, 16)) for _ in range(n)], [0] * n)
        kinds = {
            "builtin-vote": lambda s: vote_answers(context[s], answers),
            "builtin-fusion": lambda s: fusion.predict(images[s], questions[s], context[s]),
            "builtin-transfer": lambda s: consensus_captions(
                Neighbours(neighbours.ids[s], neighbours.scores[s]), {i: [c] for i, c in captions.items()},
                caption_vectors),
        }
        rows = []
        for kind, run in kinds.items():
            timings = {}
            for batch in (n, 1):
                run(slice(0, batch))
                start = time.perf_counter()
                for i in range(0, n, batch):
                    run(slice(i, i + batch))
                timings[batch] = time.perf_counter() - start
            rows.append({"kind": kind, "task": "caption" if kind == "builtin-transfer" else "vqa",
                         "batched_items_per_s": round(n / timings[n], 1), "single_items_per_s": round(n / timings[1], 1),
                         "speedup": round(timings[1] / timings[n], 2), "batch_size": n})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--size", choices=("bench", "tiny"), default="bench")
    parser.add_argument("--models", type=Path, default=Path("/tmp/ravlm-generator-models"),
                        help="where the random models are built (reused when present)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.manual_seed(0)
    root = args.models / args.size
    folders = {}
    for name, build in (("blip-caption", lambda f: make_blip(f, "caption", args.size)),
                        ("blip-vqa", lambda f: make_blip(f, "vqa", args.size)),
                        ("vlm", lambda f: make_vlm(f, args.size))):
        folders[name] = root / name
        if not (folders[name] / "config.json").is_file():
            build(folders[name])
    folders["smallcap"] = smallcap_folder(root / "smallcap", args.device)
    settings = [("blip", folders["blip-caption"], "caption"), ("blip", folders["blip-vqa"], "vqa"),
                ("vlm", folders["vlm"], "caption"), ("vlm", folders["vlm"], "vqa"),
                ("smallcap", folders["smallcap"], "caption")]
    reqs = requests(args.items)
    rows = []
    for kind, folder, task in settings:
        spec = GeneratorSpec.parse(f"{kind}:{folder},max_new_tokens={args.max_new_tokens}")
        generator = load_generator(spec, device=args.device)
        force_length(generator, args.max_new_tokens)
        params = sum(p.numel() for p in generator.model.parameters())
        timings = {b: time_model(generator, reqs, task, b) for b in (args.batch_size, 1)}
        row = {"kind": kind, "task": task, "parameters": params, "batch_size": args.batch_size,
               "batched_items_per_s": round(args.items / timings[args.batch_size], 2),
               "single_items_per_s": round(args.items / timings[1], 2),
               "batched_tokens_per_s": round(args.items * args.max_new_tokens / timings[args.batch_size], 1),
               "speedup": round(timings[1] / timings[args.batch_size], 2)}
        log.info("%s", row)
        rows.append(row)
        del generator
    rows += builtin_rows(args.items, args.device)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    report = {"device": device, "items": args.items, "max_new_tokens": args.max_new_tokens, "size": args.size,
              "dtype": "bfloat16" if args.device.startswith("cuda") else "float32", "rows": rows,
              "command": "python " + " ".join(sys.argv)}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['device']}, {args.items} items, {args.max_new_tokens} new tokens each, {report['dtype']}")
    print(f"{'kind':17s} {'task':8s} {'params':>12s} {'batched it/s':>13s} {'single it/s':>12s} {'speedup':>8s}")
    for r in rows:
        print(f"{r['kind']:17s} {r['task']:8s} {r.get('parameters', ''):>12} {r['batched_items_per_s']:>13} "
              f"{r['single_items_per_s']:>12} {r['speedup']:>8}")


if __name__ == "__main__":
    main()
