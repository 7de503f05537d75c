"""The embedded demo dataset: easy-VQA's images and questions (PyPI `easy-vqa`), with a caption derived per image."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ravlm_core.ingest.records import QAPair, SourceRecord

log = logging.getLogger(__name__)

EASY_VQA = "easy-vqa"
YES_NO = frozenset({"yes", "no"})
# easy-VQA's drawing palette (gen_data/color.py in github.com/vzhou842/easy-VQA).
EASY_VQA_RGB = {
    "black": (0, 0, 0), "gray": (128, 128, 128), "red": (255, 0, 0), "green": (0, 255, 0),
    "blue": (0, 0, 255), "yellow": (255, 255, 0), "teal": (0, 128, 128), "brown": (165, 42, 42),
}
# Words that flip an easy-VQA yes/no question ("is there NOT a red shape?", "is NO circle present?").
NEGATIONS = frozenset({"not", "no"})


@dataclass(frozen=True)
class _Vocabulary:
    colors: frozenset[str]
    shapes: frozenset[str]


def open_easy_vqa() -> list[SourceRecord]:
    import easy_vqa  # only this source needs it

    splits = {
        "train": (easy_vqa.get_train_questions(), easy_vqa.get_train_image_paths()),
        "test": (easy_vqa.get_test_questions(), easy_vqa.get_test_image_paths()),
    }
    vocab = _easy_vqa_vocabulary([questions for questions, _ in splits.values()])
    records = []
    for split, ((texts, answers, image_nums), image_paths) in splits.items():
        qa_by_image: dict[int, list[QAPair]] = {num: [] for num in image_paths}
        for question, answer, num in zip(texts, answers, image_nums):
            qa_by_image[num].append(QAPair(question, answer, _easy_vqa_question_type(answer, vocab)))
        for num in sorted(image_paths):
            path = Path(image_paths[num])
            caption = _easy_vqa_caption(path, qa_by_image[num], vocab)
            records.append(SourceRecord(str(path), path, f"{split}/{path.name}", split, caption, qa_by_image[num]))
    log.info("easy-vqa: %d images, %d without a caption", len(records), sum(r.caption is None for r in records))
    return records


def _easy_vqa_vocabulary(question_sets: list[tuple[list, list, list]]) -> _Vocabulary:
    """Colour and shape words, learnt from what "what color ...?" / "what shape ...?" questions answer."""
    colors, shapes = set(), set()
    for texts, answers, _ in question_sets:
        for question, answer in zip(texts, answers):
            if question.startswith("what") and "color" in question:
                colors.add(answer)
            elif question.startswith("what shape"):
                shapes.add(answer)
    return _Vocabulary(frozenset(colors), frozenset(shapes))


def _easy_vqa_question_type(answer: str, vocab: _Vocabulary) -> str | None:
    if answer in YES_NO:
        return "yes/no"
    if answer in vocab.colors:
        return "color"
    return "shape" if answer in vocab.shapes else None


def _easy_vqa_caption(path: Path, qa: list[QAPair], vocab: _Vocabulary) -> str | None:
    """"a picture of a {color} {shape}" from the image's answers, with its pixels settling what they leave open."""
    colors, shapes = _color_shape_candidates(qa, vocab)
    if len(colors) > 1 or len(shapes) > 1:
        colors, shapes = _narrow_by_pixels(path, colors, shapes)
    if len(colors) != 1 or len(shapes) != 1:
        return None
    return f"a picture of a {next(iter(colors))} {next(iter(shapes))}"


def _color_shape_candidates(qa: list[QAPair], vocab: _Vocabulary) -> tuple[set[str], set[str]]:
    """The colours and shapes consistent with all of an image's answers."""
    colors, shapes = set(vocab.colors), set(vocab.shapes)
    for pair in qa:
        words = pair.question.rstrip("?").split()
        named_colors = {w for w in words if w in vocab.colors}
        named_shapes = {w for w in words if w in vocab.shapes}
        if pair.answer in vocab.colors:  # "what color is the circle?" -> red; the circle is named
            colors.intersection_update({pair.answer})
            shapes.intersection_update(named_shapes or shapes)
        elif pair.answer in vocab.shapes:  # "what is the blue shape?" -> circle; blue is named
            shapes.intersection_update({pair.answer})
            colors.intersection_update(named_colors or colors)
        elif pair.answer in YES_NO:
            present = (pair.answer == "yes") != bool(NEGATIONS & set(words))
            for named, candidates in ((named_colors, colors), (named_shapes, shapes)):
                if not named:
                    continue
                if present:
                    candidates.intersection_update(named)
                else:
                    candidates.difference_update(named)
    return colors, shapes


def _narrow_by_pixels(path: Path, colors: set[str], shapes: set[str]) -> tuple[set[str], set[str]]:
    """Pick among the candidates the answers left (easy-VQA samples its questions, ~11% of images stay open).

    easy-VQA paints each shape in one flat colour, so exact pixel matches give the shape's colour and mask.
    """
    import numpy as np  # lazy: only ambiguous easy-VQA images get here
    from PIL import Image

    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))  # (H, W, 3)
    masks = {c: (pixels == EASY_VQA_RGB[c]).all(axis=-1) for c in colors if c in EASY_VQA_RGB}  # (H, W) each
    color = max(masks, key=lambda c: masks[c].sum(), default=None)
    if color is None or not masks[color].any():
        return colors, shapes
    shape = _shape_of_mask(masks[color])
    return {color}, ({shape} & shapes) or shapes


def _shape_of_mask(mask) -> str:
    """Rectangle, circle or triangle from a (H, W) bool mask of one easy-VQA shape."""
    import numpy as np

    rows, cols = np.nonzero(mask)
    box_fill = mask.sum() / ((np.ptp(rows) + 1) * (np.ptp(cols) + 1))  # rectangles are axis-aligned: 1.0
    top_share = (rows < (rows.min() + rows.max()) / 2).mean()  # triangles point up: a thin top half
    if box_fill >= 0.95:
        return "rectangle"
    # On the 4,791 images whose answers fix the shape, fill + top share is <= 0.95 for triangles, >= 1.03 for circles.
    return "triangle" if box_fill + top_share < 0.99 else "circle"
