"""easy-VQA's vocabulary drawn unlike easy-VQA: other sizes, rotated shapes, textured backgrounds, new wording."""
from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ravlm_core.ingest.easy_vqa import EASY_VQA_RGB

SHAPES = ("circle", "rectangle", "triangle")
COLORS = tuple(EASY_VQA_RGB)  # easy-VQA's eight colour words, which are also its answers
MIN_SIDE, MAX_SIDE = 72, 160
NON_SQUARE_SHARE, JPEG_SHARE, ANTI_ALIAS_SHARE = 0.4, 0.2, 0.5
SUPERSAMPLE = 4  # anti-aliased shapes are drawn 4x larger, then box-filtered down
# Background channels stay this light, so no background pixel comes near any shape colour
# (the closest, gray (128, 128, 128), is over 80 away in every channel).
BACKGROUND_MIN, BACKGROUND_MAX = 222, 252
MARGIN = 2  # pixels between the shape and the border: the whole shape is always visible
MIN_QUESTIONS, MAX_QUESTIONS = 5, 10

# Paraphrases of easy-VQA's templates: none is one of its strings ("what color is the shape?" and so on).
COLOR_QUESTIONS = (
    "which colour is the shape?", "what is the shape's color?", "which color has the {shape} been painted?",
    "tell me the colour of the {shape}.", "the {shape} is what colour?", "what colour is used for the object?",
)
SHAPE_QUESTIONS = (
    "which shape is drawn here?", "what kind of shape does the picture show?", "name the {color} object.",
    "which figure is {color}?", "what is drawn in this picture?", "what sort of figure can you see?",
)
# (template, which attribute it names, whether it is negated); answers are yes/no either way.
YES_NO_QUESTIONS = (
    ("does the picture contain a {value} shape?", "color", False),
    ("is the object {value}?", "color", False),
    ("can you see anything {value} in this picture?", "color", False),
    ("is the shape not {value}?", "color", True),
    ("is there no {value} object in this picture?", "color", True),
    ("does the picture lack a {value} shape?", "color", True),
    ("is the object a {value}?", "shape", False),
    ("does this picture show a {value}?", "shape", False),
    ("can you spot a {value} here?", "shape", False),
    ("is the figure not a {value}?", "shape", True),
    ("is there no {value} in this picture?", "shape", True),
    ("is the shape something other than a {value}?", "shape", True),
)


def draw_easy_vqa_style(out_dir: Path, n_train: int, n_test: int, rng: random.Random) -> list[dict]:
    """Draw the images into `out_dir/images/` and return the manifest rows, one per (image, question).

    Rows have image, caption, question, answer and split, and no question_type: the reader must work it out.
    """
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(n_train + n_test):
        split = "train" if index < n_train else "test"
        shape, color = rng.choice(SHAPES), rng.choice(COLORS)
        image = draw_image(rng, shape, color)
        name = f"images/{split}_{index:05d}"
        if rng.random() < JPEG_SHARE:
            name += ".jpg"
            image.save(out_dir / name, quality=rng.randint(85, 95))
        else:
            name += ".png"
            image.save(out_dir / name)
        caption = f"a picture of a {color} {shape}"
        for question, answer in make_questions(rng, shape, color):
            rows.append({"image": name, "caption": caption, "question": question, "answer": answer, "split": split})
    return rows


def draw_image(rng: random.Random, shape: str, color: str) -> Image.Image:
    """One rotated, scaled and placed shape in easy-VQA's exact RGB on a light, textured background."""
    width = height = rng.randint(MIN_SIDE, MAX_SIDE)
    if rng.random() < NON_SQUARE_SHARE:
        height = rng.randint(MIN_SIDE, MAX_SIDE)
    scale = SUPERSAMPLE if rng.random() < ANTI_ALIAS_SHARE else 1
    mask = Image.new("L", (width * scale, height * scale), 0)
    draw = ImageDraw.Draw(mask)
    outline = _outline(rng, shape, min(width, height))  # points around (0, 0), in output pixels
    cx, cy = _place(rng, outline, width, height)
    if shape == "circle":
        r = outline[0][0]
        draw.ellipse([(cx - r) * scale, (cy - r) * scale, (cx + r) * scale, (cy + r) * scale], fill=255)
    else:
        draw.polygon([((cx + x) * scale, (cy + y) * scale) for x, y in outline], fill=255)
    if scale > 1:
        mask = mask.resize((width, height), Image.Resampling.BOX)  # soft edges: partial coverage
    shape_layer = Image.new("RGB", (width, height), EASY_VQA_RGB[color])
    return Image.composite(shape_layer, _background(rng, width, height), mask)


def _outline(rng: random.Random, shape: str, side: int) -> list[tuple[float, float]]:
    """The shape's corners around the origin (a circle: one point (radius, 0)), already rotated and scaled."""
    if shape == "circle":
        return [(rng.uniform(0.15, 0.4) * side, 0.0)]
    if shape == "rectangle":
        long = rng.uniform(0.35, 0.75) * side
        short = long * rng.uniform(0.45, 1.0)
        corners = [(-long / 2, -short / 2), (long / 2, -short / 2), (long / 2, short / 2), (-long / 2, short / 2)]
        # A rectangle looks the same every 90 degrees: stay 12 degrees or more off the axes.
        angle = rng.choice((0, 90, 180, 270)) + rng.uniform(12, 78)
    else:
        radius = rng.uniform(0.22, 0.45) * side
        # Corners near 90, 210 and 330 degrees (pointing up, like easy-VQA's), each nudged a little.
        corners = [
            (radius * rng.uniform(0.9, 1.1) * math.cos(a), -radius * rng.uniform(0.9, 1.1) * math.sin(a))
            for a in (math.radians(90 + k * 120 + rng.uniform(-12, 12)) for k in range(3))
        ]
        # A triangle looks nearly the same every 120 degrees: stay 15 degrees or more off upright.
        angle = rng.choice((0, 120, 240)) + rng.uniform(15, 105)
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return [(x * cos - y * sin, x * sin + y * cos) for x, y in corners]


def _place(rng: random.Random, outline: list[tuple[float, float]], width: int, height: int) -> tuple[float, float]:
    """A random centre that keeps the whole shape inside the image (shrinking `outline` in place if it must)."""
    if len(outline) == 1:  # circle
        r = outline[0][0]
        xs, ys = [-r, r], [-r, r]
    else:
        xs, ys = [x for x, _ in outline], [y for _, y in outline]
    fit = min(1.0, (width - 2 * MARGIN) / (max(xs) - min(xs)), (height - 2 * MARGIN) / (max(ys) - min(ys)))
    if fit < 1.0:
        outline[:] = [(x * fit, y * fit) for x, y in outline]
        xs, ys = [x * fit for x in xs], [y * fit for y in ys]
    cx = rng.uniform(MARGIN - min(xs), width - MARGIN - max(xs))
    cy = rng.uniform(MARGIN - min(ys), height - MARGIN - max(ys))
    return cx, cy


def _background(rng: random.Random, width: int, height: int) -> Image.Image:
    """A light tint, a soft two-tint gradient, either with light noise on top; never plain white."""
    noise_rng = np.random.default_rng(rng.getrandbits(64))
    start = np.array([rng.randint(BACKGROUND_MIN, BACKGROUND_MAX) for _ in range(3)], dtype=np.float32)
    pixels = np.broadcast_to(start, (height, width, 3)).astype(np.float32)  # (H, W, 3)
    if rng.random() < 0.5:  # gradient along a random direction
        end = np.array([rng.randint(BACKGROUND_MIN, BACKGROUND_MAX) for _ in range(3)], dtype=np.float32)
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)  # (H, W) each
        along = xs * math.cos(angle) + ys * math.sin(angle)
        t = (along - along.min()) / max(float(np.ptp(along)), 1.0)  # 0..1 across the image
        pixels = start + (end - start) * t[..., None]
    if rng.random() < 0.4:
        pixels = pixels + noise_rng.normal(0, rng.uniform(2, 6), size=pixels.shape)
    pixels = np.clip(np.rint(pixels), BACKGROUND_MIN - 12, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def make_questions(rng: random.Random, shape: str, color: str) -> list[tuple[str, str]]:
    """5-10 distinct (question, answer): one colour, one shape, the rest yes/no, alternating from a random start."""
    truth = {"shape": shape, "color": color}
    others = {"shape": [s for s in SHAPES if s != shape], "color": [c for c in COLORS if c != color]}
    questions = [
        (rng.choice(COLOR_QUESTIONS).format(shape=shape), color),
        (rng.choice(SHAPE_QUESTIONS).format(color=color), shape),
    ]
    wanted = rng.randint(MIN_QUESTIONS, MAX_QUESTIONS)
    first_yes = rng.random() < 0.5  # so images with an odd number of yes/no questions do not favour one answer
    seen = {q for q, _ in questions}
    while len(questions) < wanted:
        template, attribute, negated = rng.choice(YES_NO_QUESTIONS)
        answer_yes = (len(questions) % 2 == 0) == first_yes
        statement_true = answer_yes != negated  # "is the shape not red?" is answered yes when it is not red
        value = truth[attribute] if statement_true else rng.choice(others[attribute])
        question = template.format(value=value)
        if question in seen:
            continue
        seen.add(question)
        questions.append((question, "yes" if answer_yes else "no"))
    return questions
