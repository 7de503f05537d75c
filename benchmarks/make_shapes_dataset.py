"""Generate a small out-of-distribution VQA folder dataset: shapes, colours and question wording easy-VQA lacks."""
from __future__ import annotations

import argparse
import logging
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

IMAGE_SIZE = 64
SHAPES = ("star", "pentagon", "hexagon", "cross", "ellipse")
COLORS = ("orange", "purple", "pink", "navy", "olive", "cyan")  # PIL colour names
FORMATS = ("csv", "jsonl", "parquet")
MIN_QUESTIONS, MAX_QUESTIONS = 6, 10

# Paraphrased templates; every family is worded unlike easy-VQA's "what color is the shape?" style.
COLOR_QUESTIONS = ("Which colour is the figure?", "What colour has the {shape} been painted?", "Tell me the colour of the object.")
SHAPE_QUESTIONS = ("Name the shape in this picture.", "Which figure is drawn here?", "What kind of {color} object is this?")
# (template, which attribute it names, whether it is negated)
YES_NO_QUESTIONS = (
    ("Can you see a {value} here?", "shape", False),
    ("Does this picture show a {value}?", "shape", False),
    ("Is the figure painted {value}?", "color", False),
    ("Is anything {value} in this drawing?", "color", False),
    ("Is the shape anything other than a {value}?", "shape", True),
    ("Is the figure not {value}?", "color", True),
)


def make_shapes_dataset(out_dir: Path, n_train: int = 300, n_test: int = 100, seed: int = 0, fmt: str = "csv") -> Path:
    """Draw the images into `out_dir/images/` and write `out_dir/manifest.<fmt>`, one row per (image, question).

    Args:
        out_dir: folder to create or fill.
        n_train, n_test: images per split.
        seed: the same seed gives byte-identical images and manifest.
        fmt: manifest format, one of csv, jsonl, parquet.
    Returns:
        The manifest path.
    Raises:
        ValueError: unknown `fmt`.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown manifest format {fmt!r}: use one of {', '.join(FORMATS)}")
    rng = random.Random(seed)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(n_train + n_test):
        split = "train" if index < n_train else "test"
        shape, color = rng.choice(SHAPES), rng.choice(COLORS)
        name = f"images/{split}_{index:05d}.png"
        draw_image(rng, shape, color).save(out_dir / name)
        caption = f"a drawing of a {color} {shape}"
        for question, answer, question_type in make_questions(rng, shape, color):
            rows.append(
                {"image": name, "caption": caption, "question": question, "answer": answer,
                 "split": split, "question_type": question_type}
            )
    manifest = out_dir / f"manifest.{fmt}"
    _write_manifest(rows, manifest)
    log.info("wrote %d images and %d questions to %s", n_train + n_test, len(rows), manifest)
    return manifest


def draw_image(rng: random.Random, shape: str, color: str) -> Image.Image:
    """One shape of random size and position on a random light background."""
    background = tuple(rng.randint(225, 255) for _ in range(3))
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background)
    radius = rng.randint(10, 22)
    cx, cy = (rng.randint(radius + 1, IMAGE_SIZE - radius - 2) for _ in range(2))
    draw = ImageDraw.Draw(image)
    if shape == "ellipse":
        # Clearly flattened, so it cannot pass for a circle.
        ry = round(radius * rng.uniform(0.45, 0.7))
        draw.ellipse([cx - radius, cy - ry, cx + radius, cy + ry], fill=color)
    elif shape in ("pentagon", "hexagon"):
        sides = 5 if shape == "pentagon" else 6
        draw.regular_polygon((cx, cy, radius), sides, rotation=rng.uniform(0, 360), fill=color)
    elif shape == "star":
        draw.polygon(_star_points(cx, cy, radius, rng.uniform(0, 2 * math.pi)), fill=color)
    else:  # cross
        arm = max(3, radius // 3)
        draw.rectangle([cx - radius, cy - arm, cx + radius, cy + arm], fill=color)
        draw.rectangle([cx - arm, cy - radius, cx + arm, cy + radius], fill=color)
    return image


def _star_points(cx: float, cy: float, radius: float, rotation: float) -> list[tuple[float, float]]:
    """Five-pointed star: ten vertices alternating between the outer and an inner radius."""
    points = []
    for i in range(10):
        r = radius if i % 2 == 0 else radius * 0.42
        angle = rotation + i * math.pi / 5
        points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return points


def make_questions(rng: random.Random, shape: str, color: str) -> list[tuple[str, str, str]]:
    """6-10 distinct (question, answer, question_type): one colour, one shape, the rest balanced yes/no."""
    truth = {"shape": shape, "color": color}
    others = {"shape": [s for s in SHAPES if s != shape], "color": [c for c in COLORS if c != color]}
    questions = [
        (rng.choice(COLOR_QUESTIONS).format(shape=shape), color, "color"),
        (rng.choice(SHAPE_QUESTIONS).format(color=color), shape, "shape"),
    ]
    wanted = rng.randint(MIN_QUESTIONS, MAX_QUESTIONS)
    seen = {q for q, _, _ in questions}
    while len(questions) < wanted:
        template, attribute, negated = rng.choice(YES_NO_QUESTIONS)
        # Alternate the answer so yes and no are balanced whatever the mix of negated templates.
        answer_yes = len(questions) % 2 == 0
        statement_true = answer_yes != negated
        value = truth[attribute] if statement_true else rng.choice(others[attribute])
        question = template.format(value=value)
        if question in seen:
            continue
        seen.add(question)
        questions.append((question, "yes" if answer_yes else "no", "yes/no"))
    return questions


def _write_manifest(rows: list[dict], manifest: Path) -> None:
    import pandas as pd  # lazy: drawing needs only PIL

    frame = pd.DataFrame(rows)
    if manifest.suffix == ".csv":
        frame.to_csv(manifest, index=False)
    elif manifest.suffix == ".jsonl":
        frame.to_json(manifest, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_parquet(manifest, index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--train", type=int, default=300, help="train images")
    parser.add_argument("--test", type=int, default=100, help="test images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=FORMATS, default="csv", dest="fmt")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    make_shapes_dataset(args.out_dir, args.train, args.test, args.seed, args.fmt)


if __name__ == "__main__":
    main()
