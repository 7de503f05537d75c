"""Render a shapes VQA set the way someone else would: easy-VQA's answers, drawn and asked differently.

    python benchmarks/render_other_shapes.py OUT_DIR [--train 600] [--test 300] [--seed 0]

Written apart from `make_shapes_dataset.py` (and without reading easy-VQA's generator): images of 48-160 px,
one circle / rectangle / triangle each, 25-75% of the image, rotated, on a tinted background with a texture
(noise, stripes, a checkerboard or a gradient); each colour name drawn in several shades, gray next to black and
brown next to red. Questions are paraphrases (and negations) of easy-VQA's kinds, with easy-VQA's answer
vocabulary: a shape, a colour, yes or no. Writes OUT_DIR/images/*.png and OUT_DIR/manifest.jsonl (one row per
question: image, split, caption, question, answer, question_type), the same for the same seed.
"""
from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "rectangle", "triangle")
# Several shades per colour name; the darkest gray sits 45 grey levels from the lightest black.
SHADES = {
    "red": [(255, 0, 0), (214, 32, 38), (235, 64, 52), (178, 18, 24)],
    "green": [(0, 255, 0), (46, 170, 60), (20, 200, 90), (70, 140, 40)],
    "blue": [(0, 0, 255), (36, 72, 210), (20, 110, 235), (24, 30, 150)],
    "black": [(0, 0, 0), (22, 22, 26), (38, 34, 30)],
    "gray": [(128, 128, 128), (96, 96, 100), (156, 154, 150), (83, 86, 86)],
    "yellow": [(255, 255, 0), (245, 215, 30), (230, 200, 10)],
    "teal": [(0, 128, 128), (24, 150, 140), (0, 100, 112)],
    "brown": [(165, 42, 42), (139, 78, 36), (118, 62, 22)],
}
COLORS = tuple(SHADES)

# Paraphrases per kind; {shape} / {color} are filled with the image's own or another value.
SHAPE_QUESTIONS = ["what shape is in the picture?", "which shape do you see?", "what kind of shape is drawn here?",
                   "what is the {color} object?", "name the shape in this image.", "what shape is shown?"]
COLOR_QUESTIONS = ["what colour is the shape?", "which color is the {shape}?", "what is the colour of the object?",
                   "what color has the {shape} in the picture?", "which colour is the figure drawn in?"]
YES_NO_QUESTIONS = ["is a {color} shape shown?", "can you see a {shape}?", "does this picture show a {shape}?",
                    "is the shape {color}?", "is the object a {shape}?", "is there a {color} figure here?"]
NEGATED_QUESTIONS = ["is there no {shape} in the picture?", "is the shape not {color}?",
                     "does the picture lack a {color} shape?", "is the object something other than a {shape}?",
                     "is no {color} figure shown?", "is the figure not a {shape}?"]


def background(rng: random.Random, size: int) -> np.ndarray:
    """A light tinted background [size, size, 3] float with one texture on top."""
    tint = np.array([rng.uniform(200, 255) for _ in range(3)])
    yy, xx = np.mgrid[0:size, 0:size] / size
    texture = rng.choice(["noise", "stripes", "checker", "gradient"])
    if texture == "noise":
        pattern = np.random.default_rng(rng.randrange(2**32)).normal(0, 1, (size, size))
    elif texture == "stripes":
        angle = rng.uniform(0, math.pi)
        pattern = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * rng.uniform(6, 20) * math.pi)
    elif texture == "checker":
        cells = rng.randint(3, 8)
        pattern = ((xx * cells).astype(int) + (yy * cells).astype(int)) % 2 * 2.0 - 1
    else:
        pattern = xx * 2 - 1 if rng.random() < 0.5 else yy * 2 - 1
    pixels = tint[None, None, :] + rng.uniform(6, 18) * pattern[..., None]
    return np.clip(pixels, 175, 255)


def polygon(shape: str, cx: float, cy: float, radius: float, angle: float, aspect: float) -> list[tuple[float, float]]:
    """The rotated outline of a rectangle (width:height = aspect) or a triangle around (cx, cy)."""
    if shape == "triangle":
        corners = [(radius * math.cos(a), radius * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    else:
        w, h = radius * math.sqrt(aspect), radius / math.sqrt(aspect)
        corners = [(-w, -h), (w, -h), (w, h), (-w, h)]
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in corners]


def draw(rng: random.Random, shape: str, color: str) -> Image.Image:
    size = rng.randint(48, 160)
    image = Image.fromarray(background(rng, size).astype(np.uint8))
    pen = ImageDraw.Draw(image)
    radius = size * rng.uniform(0.25, 0.75) / 2
    cx, cy = (rng.uniform(radius + 1, size - radius - 1) for _ in range(2))
    fill = tuple(min(255, max(0, c + rng.randint(-8, 8))) for c in rng.choice(SHADES[color]))
    if shape == "circle":
        pen.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    else:
        pen.polygon(polygon(shape, cx, cy, radius * (0.75 if shape == "rectangle" else 1.0),
                            rng.uniform(0, 2 * math.pi), rng.uniform(0.6, 1.7)), fill=fill)
    return image


def questions(rng: random.Random, shape: str, color: str) -> list[tuple[str, str, str]]:
    """(question, answer, question_type): one shape, one colour, two plain and two negated yes/no, balanced."""
    def ask(template: str, shape_word: str, color_word: str) -> str:
        return template.format(shape=shape_word, color=color_word)

    out = [(ask(rng.choice(SHAPE_QUESTIONS), shape, color), shape, "shape"),
           (ask(rng.choice(COLOR_QUESTIONS), shape, color), color, "color")]
    for templates, negated in ((YES_NO_QUESTIONS, False), (YES_NO_QUESTIONS, False),
                               (NEGATED_QUESTIONS, True), (NEGATED_QUESTIONS, True)):
        template = rng.choice(templates)
        true = rng.random() < 0.5  # whether the named attribute is the image's own
        shape_word = shape if true else rng.choice([s for s in SHAPES if s != shape])
        color_word = color if true else rng.choice([c for c in COLORS if c != color])
        answer = "yes" if true != negated else "no"
        out.append((ask(template, shape_word, color_word), answer, "yes/no"))
    return list({q: (q, a, t) for q, a, t in out}.values())  # a repeated draw asks once


def render(out_dir: Path, n_train: int, n_test: int, seed: int) -> Path:
    """Draw the set into out_dir; returns its manifest."""
    rng = random.Random(seed)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(n_train + n_test):
        split = "train" if index < n_train else "test"
        shape, color = rng.choice(SHAPES), rng.choice(COLORS)
        name = f"images/{split}-{index:05d}.png"
        draw(rng, shape, color).save(out_dir / name)
        caption = f"a {color} {shape} drawn on a textured background"
        for question, answer, kind in questions(rng, shape, color):
            rows.append({"image": name, "split": split, "caption": caption, "question": question,
                         "answer": answer, "question_type": kind})
    manifest = out_dir / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(render(args.out_dir, args.train, args.test, args.seed))


if __name__ == "__main__":
    main()
