"""A small out-of-distribution VQA folder dataset: shapes, colours and question wording easy-VQA lacks.

`style="easy-vqa"` draws easy-VQA's own shapes, colours and answers instead, but unlike easy-VQA (sizes,
rotation, backgrounds, reworded questions, no question_type column): a knowledge base of a different look.
"""
from __future__ import annotations

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
# Per style: (train images, test images, manifest format) when the caller gives none.
STYLE_DEFAULTS = {"other-shapes": (300, 100, "csv"), "easy-vqa": (0, 300, "jsonl")}
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


def make_shapes_dataset(
    out_dir: Path, n_train: int | None = None, n_test: int | None = None, seed: int = 0, fmt: str | None = None,
    style: str = "other-shapes", holdout: int = 0,
) -> Path:
    """Draw the images into `out_dir/images/` and write `out_dir/manifest.<fmt>`, one row per (image, question).

    Args:
        out_dir: folder to create or fill.
        n_train, n_test: images per split; None takes the style's default (`STYLE_DEFAULTS`).
        seed: the same seed gives byte-identical images and manifest.
        fmt: manifest format, one of csv, jsonl, parquet; None takes the style's default.
        style: "other-shapes" (shapes and colours easy-VQA lacks) or "easy-vqa" (easy-VQA's, drawn differently).
        holdout: other-shapes only: this many (colour, shape) combinations never appear in train, and half the
            test images show one of them (manifest column `novel_combination`: "yes" / "no"), so a captioner can
            be scored on captions no train image has.
    Returns:
        The manifest path.
    Raises:
        ValueError: unknown `fmt` or `style`.
    """
    if style not in STYLE_DEFAULTS:
        raise ValueError(f"unknown style {style!r}: use one of {', '.join(STYLE_DEFAULTS)}")
    default_train, default_test, default_fmt = STYLE_DEFAULTS[style]
    n_train = default_train if n_train is None else n_train
    n_test = default_test if n_test is None else n_test
    fmt = fmt or default_fmt
    if fmt not in FORMATS:
        raise ValueError(f"unknown manifest format {fmt!r}: use one of {', '.join(FORMATS)}")
    rng = random.Random(seed)
    if style == "easy-vqa":
        from tests.helpers.easy_vqa_shapes import draw_easy_vqa_style  # lazy: needs numpy and ravlm_core

        rows = draw_easy_vqa_style(out_dir, n_train, n_test, rng)
    else:
        rows = _draw_other_shapes(out_dir, n_train, n_test, rng, holdout)
    manifest = out_dir / f"manifest.{fmt}"
    _write_manifest(rows, manifest)
    log.info("wrote %d images and %d questions to %s", n_train + n_test, len(rows), manifest)
    return manifest


def _draw_other_shapes(out_dir: Path, n_train: int, n_test: int, rng: random.Random, holdout: int = 0) -> list[dict]:
    """Draw the default style's images into `out_dir/images/`; returns its manifest rows."""
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    combos = [(shape, color) for shape in SHAPES for color in COLORS]
    held = set(rng.sample(combos, holdout)) if holdout else set()
    seen = [c for c in combos if c not in held]
    rows = []
    for index in range(n_train + n_test):
        split = "train" if index < n_train else "test"
        if not held:
            shape, color = rng.choice(SHAPES), rng.choice(COLORS)
        else:  # train never shows a held-out combination; every other test image does
            shape, color = rng.choice(sorted(held) if split == "test" and index % 2 else seen)
        name = f"images/{split}_{index:05d}.png"
        draw_image(rng, shape, color).save(out_dir / name)
        caption = f"a drawing of a {color} {shape}"
        novel = {"novel_combination": "yes" if (shape, color) in held else "no"} if held else {}
        for question, answer, question_type in make_questions(rng, shape, color):
            rows.append(
                {"image": name, "caption": caption, "question": question, "answer": answer,
                 "split": split, "question_type": question_type, **novel}
            )
    return rows


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
