"""Generate a small out-of-distribution VQA folder dataset (tests/helpers/shapes.py draws it).

    python benchmarks/make_shapes_dataset.py OUT_DIR [--style other-shapes|easy-vqa] [--train N] [--test N]
        [--seed 0] [--format csv|jsonl|parquet] [--holdout K]

`--style easy-vqa` draws easy-VQA's own shapes, colours and answers instead, but unlike easy-VQA (sizes,
rotation, backgrounds, reworded questions, no question_type column): a knowledge base of a different look.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.shapes import FORMATS, STYLE_DEFAULTS, make_shapes_dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--style", choices=tuple(STYLE_DEFAULTS), default="other-shapes")
    parser.add_argument("--train", type=int, help="train images (other-shapes: 300, easy-vqa: 0)")
    parser.add_argument("--test", type=int, help="test images (other-shapes: 100, easy-vqa: 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=FORMATS, dest="fmt", help="other-shapes: csv, easy-vqa: jsonl")
    parser.add_argument("--holdout", type=int, default=0,
                        help="other-shapes: (colour, shape) combinations only test images show")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    make_shapes_dataset(args.out_dir, args.train, args.test, args.seed, args.fmt, args.style, args.holdout)


if __name__ == "__main__":
    main()
