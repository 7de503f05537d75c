"""A corpus of bad, hostile and unusual inputs for `ravlm ingest`, each case described as data, and its judge.

`build_corpus(root)` writes `root/corpus` (images + one `manifest.jsonl`, several lines per case), `root/plain`
(a folder without a manifest), `root/csv` and `root/parquet` (typed manifests), one small folder per
manifest-level failure, and files OUTSIDE those folders (`root/secret.png`, `root/outside/inner.png`) that paths
and symlinks point at and that must never be read.
`ingest_corpus` runs the ingest steps (`stores.ingest_folder`) on every folder; `judge` says per case whether it
was ingested correctly, rejected with file, row and reason, or refused as a whole manifest.
"""
from __future__ import annotations

import io
import json
import os
import random
import re
import struct
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

Check = Callable[[dict], None]
MAIN = "corpus"  # the dataset (and folder) holding every row-level case
PLAIN = "plain"  # a folder without a manifest: every image file in it is a row
RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)
CYAN, YELLOW, MID_GRAY = (0, 255, 255), (255, 255, 0), (128, 128, 128)
# A rejection reason must also say what to do: one of these verbs.
REMEDY = re.compile(
    r"\b(fix|remove|rename|convert|add|give|shorten|move|copy|write|re-?save|save|export|replace|use|keep|"
    r"list|delete|resize|shrink|raise|fill|point|split|re-?encode|rerun|check)\b"
)


@dataclass
class Case:
    """One kind of input and what ingest must do with it.

    `rows` are its manifest lines (a dict is JSON-encoded, a str written as is). For a "rejected" case the LAST
    row is the bad one and any rows before it are good context that must be kept.
    """

    name: str
    kind: str  # "ok" | "rejected" | "manifest-error"
    image: str | None = None  # ok: the stored path (posix, relative); rejected: the path the row names
    reason_has: str = ""  # rejected / manifest-error: lower-case substring of the reason
    check: Check | None = None  # asserts on the stored row (+ "content", "thumb", "qa_rows")
    size: tuple[int, int] | None = None  # ok: (width, height) as displayed
    rows: list = field(default_factory=list)
    stored: int | None = None  # `images` rows expected for `image`; default 1 for ok, 0 for rejected
    dataset: str = MAIN
    lines: list[int] = field(default_factory=list)  # filled in by build_corpus: manifest line numbers

    @property
    def expected_rows(self) -> int:
        return self.stored if self.stored is not None else int(self.kind == "ok")


@dataclass
class Source:
    folder: Path
    manifest: Path | None = None  # explicit --manifest
    names: str = "manifest.jsonl"  # manifest-error: the file its message must name


@dataclass
class Corpus:
    root: Path
    folder: Path  # root/"corpus"
    cases: list[Case]
    sources: dict[str, Source]  # dataset name -> folder
    outside: list[Path]  # files outside every dataset folder: never to be opened


# --- image helpers -------------------------------------------------------------------------------


def _halves(left, right, size=(32, 16), mode="RGB") -> Image.Image:
    image = Image.new(mode, size, left)
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return image


def _save(folder: Path, rel: str, image: Image.Image, **kwargs) -> None:
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


def _write(folder: Path, rel: str, data: bytes) -> Path:
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, idat: bytes | None, extra: bytes = b"") -> bytes:
    """A hand-written 1-bit grayscale PNG (Pillow would need width*height bytes of memory to write a bomb)."""
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
    body = extra + (_chunk(b"IDAT", idat) + _chunk(b"IEND", b"") if idat is not None else b"")
    return b"\x89PNG\r\n\x1a\n" + header + body


def _zeros_idat(width: int, height: int) -> bytes:
    """Compressed all-black rows of a 1-bit image: 900 megapixels fit in ~100 KB."""
    row = bytes(1 + (width + 7) // 8)  # filter byte + packed bits
    compressor, rows_per_step = zlib.compressobj(9), 1000
    steps = (compressor.compress(row * min(rows_per_step, height - i)) for i in range(0, height, rows_per_step))
    return b"".join(steps) + compressor.flush()


# --- checks on the stored row --------------------------------------------------------------------


def pixels(*points: tuple[float, float, tuple[int, int, int]], tol: int = 40) -> Check:
    """The thumbnail's colour at (x, y) given as fractions of its size is within `tol` of each expected RGB."""

    def check(row: dict) -> None:
        thumb = row["thumb"]
        for fx, fy, rgb in points:
            xy = (min(int(fx * thumb.width), thumb.width - 1), min(int(fy * thumb.height), thumb.height - 1))
            got = thumb.getpixel(xy)
            assert all(abs(g - e) <= tol for g, e in zip(got, rgb)), f"thumbnail pixel at {xy} is {got}, want ~{rgb}"

    return check


def fields(**expected) -> Check:
    def check(row: dict) -> None:
        for key, want in expected.items():
            got = row["content"][key] if key == "source_mode" else row[key]
            assert got == want, f"{key} is {got!r}, want {want!r}"

    return check


def qa(*pairs: tuple[str, str]) -> Check:
    def check(row: dict) -> None:
        got = sorted((q["question"], q["answer"]) for q in row["qa_rows"])
        assert got == sorted(pairs), f"QA rows are {got}, want {sorted(pairs)}"

    return check


def extra(**expected) -> Check:
    def check(row: dict) -> None:
        got = json.loads(row["extra"]) if row.get("extra") else {}
        assert got == expected, f"extra is {got!r}, want {expected!r}"

    return check


def all_of(*checks: Check) -> Check:
    def check(row: dict) -> None:
        for one in checks:
            one(row)

    return check


# --- the cases, one family per function ----------------------------------------------------------


def _ok(folder: Path, rel: str, name: str, image: Image.Image, fmt: str, check: Check | None = None,
        size: tuple[int, int] | None = None, **save) -> Case:
    _save(folder, rel, image, format=fmt, **save)
    return Case(name, "ok", rel, check=check, size=size or image.size, rows=[{"image": rel}])


def _bad(rel: str, name: str, reason: str, **row) -> Case:
    return Case(name, "rejected", rel, reason, rows=[{"image": rel, **row}])


def broken_files(folder: Path) -> list[Case]:
    """Files with an image name that are not a readable image, or are too big to decode."""
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96, 3), np.uint8))  # long pixel stream
    png, jpeg = _encoded(noisy, "PNG"), _encoded(noisy, "JPEG", quality=95)
    real = _png(8, 8, zlib.compress(bytes(8 * 2)))
    pdf = b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
    ztxt = _chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(bytes(8 << 20), 9))  # 8 MB of metadata text
    crc = bytearray(real)
    crc[29] ^= 0xFF  # the IHDR checksum
    files = [
        ("random bytes named .png", "broken/noise.png", random.Random(0).randbytes(4096), "not an image"),
        ("text file named .png", "broken/letter.png", b"Dear user, this is plain text.\n" * 20, "not an image"),
        ("PDF named .jpg", "broken/report.jpg", pdf, "not an image"),
        ("zero-byte file", "broken/nothing.png", b"", "empty"),
        ("truncated PNG", "broken/half.png", png[: len(png) // 2], "truncated"),
        ("truncated JPEG", "broken/half.jpg", jpeg[: len(jpeg) * 2 // 3], "truncated"),
        ("PNG header without pixel data", "broken/header.png", real[:33], "damaged"),
        ("PNG with a corrupted chunk checksum", "broken/crc.png", bytes(crc), "damaged"),
        ("PNG 0 pixels wide", "broken/flat.png", _png(0, 10, zlib.compress(bytes(10))), "damaged"),
        ("decompression bomb: 30000x30000 1-bit PNG in 100 KB", "broken/huge.png",
         _png(30000, 30000, _zeros_idat(30000, 30000)), "pixels"),
        ("just over the 64-megapixel limit: 10000x6500", "broken/over.png",
         _png(10000, 6500, _zeros_idat(10000, 6500)), "pixels"),
        ("PNG whose text chunk inflates to 8 MB", "broken/ztxt.png", real[:33] + ztxt + real[33:], "large"),
    ]
    for _, rel, data, _ in files:
        _write(folder, rel, data)
    return [_bad(rel, name, reason) for name, rel, _, reason in files]


def unusual_modes(folder: Path) -> list[Case]:
    """Pixel modes and formats that must come out as the right RGB: alpha on white, 16-bit scaled, EXIF applied."""
    gray16 = np.zeros((10, 30), np.uint16)
    gray16[:, 10:20], gray16[:, 20:] = 32896, 65535  # black | mid-gray | white, 16 bits
    three_bands = pixels((1 / 6, 0.5, BLACK), (0.5, 0.5, MID_GRAY), (5 / 6, 0.5, WHITE), tol=16)
    palette = Image.new("P", (32, 16), 0)
    palette.putpalette([*RED, *GREEN, *BLUE] + [0] * 759)
    palette.paste(1, (16, 0, 32, 16))
    palette_alpha = palette.copy()
    palette_alpha.paste(2, (16, 0, 32, 16))
    la = _halves((0, 0), (64, 255), mode="LA")
    rgba = _halves((0, 0, 0, 0), (*RED, 255), mode="RGBA")
    frames = [Image.new("RGB", (20, 12), RED), Image.new("RGB", (20, 12), BLUE)]
    exif6, exif3 = Image.Exif(), Image.Exif()
    exif6[0x0112], exif3[0x0112] = 6, 3
    cases = [
        _ok(folder, "modes/gray16.png", "16-bit grayscale PNG", Image.fromarray(gray16), "PNG",
            all_of(three_bands, lambda row: _mode_starts(row, "I"))),
        _ok(folder, "modes/gray16.tif", "16-bit grayscale TIFF", Image.fromarray(gray16), "TIFF", three_bands),
        _ok(folder, "modes/palette.png", "palette PNG", palette, "PNG",
            all_of(pixels((0.25, 0.5, RED), (0.75, 0.5, GREEN)), fields(source_mode="P"))),
        _ok(folder, "modes/palette_alpha.png", "palette PNG with a transparent index", palette_alpha, "PNG",
            pixels((0.25, 0.5, WHITE), (0.75, 0.5, BLUE)), transparency=0),
        _ok(folder, "modes/la.png", "LA (gray + alpha) PNG", la, "PNG",
            all_of(pixels((0.25, 0.5, WHITE), (0.75, 0.5, (64, 64, 64)), tol=16), fields(source_mode="LA"))),
        _ok(folder, "modes/rgba.png", "RGBA PNG with a transparent half", rgba, "PNG",
            all_of(pixels((0.25, 0.5, WHITE), (0.75, 0.5, RED)), fields(source_mode="RGBA"))),
        _ok(folder, "modes/rgba_half.png", "RGBA PNG, black at 50% alpha", Image.new("RGBA", (16, 16), (0, 0, 0, 128)),
            "PNG", pixels((0.5, 0.5, MID_GRAY), tol=20)),
        _ok(folder, "modes/rgb_trns.png", "RGB PNG with a tRNS colour key", _halves(BLACK, RED), "PNG",
            pixels((0.25, 0.5, WHITE), (0.75, 0.5, RED)), transparency=BLACK),
        _ok(folder, "modes/cmyk.jpg", "CMYK JPEG", Image.new("CMYK", (16, 16), (255, 0, 0, 0)), "JPEG",
            all_of(pixels((0.5, 0.5, CYAN), tol=48), fields(source_mode="CMYK", format="JPEG"))),
        _ok(folder, "modes/bilevel.png", "1-bit PNG", _halves(0, 255, mode="1"), "PNG",
            all_of(pixels((0.25, 0.5, BLACK), (0.75, 0.5, WHITE)), fields(source_mode="1"))),
        _ok(folder, "modes/green.tif", "RGB TIFF", Image.new("RGB", (18, 14), GREEN), "TIFF",
            all_of(pixels((0.5, 0.5, GREEN)), fields(format="TIFF"))),
        _ok(folder, "modes/blue.bmp", "BMP", Image.new("RGB", (17, 13), BLUE), "BMP",
            all_of(pixels((0.5, 0.5, BLUE)), fields(format="BMP"))),
        _ok(folder, "modes/yellow.webp", "WebP (lossless)", Image.new("RGB", (19, 11), YELLOW), "WEBP",
            all_of(pixels((0.5, 0.5, YELLOW)), fields(format="WEBP")), lossless=True),
        _ok(folder, "modes/anim.gif", "animated GIF (first frame kept)", frames[0], "GIF",
            all_of(pixels((0.5, 0.5, RED)), fields(format="GIF")), save_all=True, append_images=frames[1:],
            duration=100, loop=0),
        _ok(folder, "modes/clear.gif", "GIF with a transparent index", palette_alpha, "GIF",
            pixels((0.25, 0.5, WHITE), (0.75, 0.5, BLUE)), transparency=0),
        _ok(folder, "modes/gray.jpg", "grayscale JPEG", Image.new("L", (15, 9), 100), "JPEG",
            pixels((0.5, 0.5, (100, 100, 100)), tol=8)),
        _ok(folder, "modes/progressive.jpg", "progressive JPEG", Image.new("RGB", (21, 9), RED), "JPEG",
            pixels((0.5, 0.5, RED)), progressive=True),
        # Stored 40x20 red|blue; orientation 6 shows it turned a quarter clockwise: 20x40, red on top.
        _ok(folder, "modes/exif6.jpg", "EXIF orientation 6 (shown rotated)", _halves(RED, BLUE, (40, 20)), "JPEG",
            pixels((0.5, 0.25, RED), (0.5, 0.75, BLUE)), size=(20, 40), exif=exif6, quality=95),
        _ok(folder, "modes/exif3.jpg", "EXIF orientation 3 (upside down)", _halves(RED, BLUE, (30, 20)), "JPEG",
            pixels((0.25, 0.5, BLUE), (0.75, 0.5, RED)), exif=exif3, quality=95),
    ]
    # A JPEG whose EXIF block points past its end: viewers ignore it, so must ingest.
    data = _encoded(Image.new("RGB", (23, 23), GREEN), "JPEG")
    app1 = b"Exif\x00\x00II*\x00" + struct.pack("<I", 0x7FFFFF00) + bytes(16)
    _write(folder, "modes/bad_exif.jpg", data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:])
    cases.append(Case("JPEG with a broken EXIF block", "ok", "modes/bad_exif.jpg", check=pixels((0.5, 0.5, GREEN)),
                      size=(23, 23), rows=[{"image": "modes/bad_exif.jpg"}]))
    return cases


def _mode_starts(row: dict, prefix: str) -> None:
    assert row["content"]["source_mode"].startswith(prefix), f"source_mode is {row['content']['source_mode']!r}"


def odd_sizes(folder: Path) -> list[Case]:
    return [
        _ok(folder, "sizes/one.png", "1x1 image", Image.new("RGB", (1, 1), RED), "PNG", pixels((0, 0, RED))),
        _ok(folder, "sizes/odd.jpg", "3x7 JPEG", Image.new("RGB", (3, 7), BLUE), "JPEG"),
        _ok(folder, "sizes/wide.png", "20000x2 image", Image.new("RGB", (20000, 2), GREEN), "PNG",
            pixels((0.5, 0.5, GREEN))),
        _ok(folder, "sizes/tall.png", "2x20000 image", Image.new("RGB", (2, 20000), BLUE), "PNG",
            pixels((0.5, 0.5, BLUE))),
    ]


def file_names(folder: Path) -> list[Case]:
    """Names that are legal but awkward: case, spaces, unicode, quotes, no or the wrong extension, odd spelling."""
    cases = [
        _ok(folder, "names/UPPER.PNG", "uppercase extension", Image.new("RGB", (5, 6), RED), "PNG"),
        _ok(folder, "names/with space.png", "spaces in the file name", Image.new("RGB", (6, 5), RED), "PNG"),
        _ok(folder, "names/фото 日本 ☃.png", "unicode file name", Image.new("RGB", (7, 5), RED), "PNG"),
        _ok(folder, "names/o'brien; --.png", "quote and semicolon in the name (SQL quoting)",
            Image.new("RGB", (8, 5), RED), "PNG"),
        _ok(folder, "names/noext", "no extension (content decides)", Image.new("RGB", (9, 5), RED), "PNG",
            fields(format="PNG")),
        _ok(folder, "names/really_png.jpg", "PNG bytes named .jpg", Image.new("RGB", (10, 5), RED), "PNG",
            fields(format="PNG")),
    ]
    _save(folder, "names/dots.png", Image.new("RGB", (11, 5), RED))
    cases.append(Case("'./' and '//' in the path (stored normalised)", "ok", "names/dots.png", size=(11, 5),
                      rows=[{"image": "./names//dots.png"}]))
    _save(folder, "names/backslash.png", Image.new("RGB", (12, 5), RED))
    cases.append(Case("Windows backslashes in the path (stored posix)", "ok", "names/backslash.png", size=(12, 5),
                      rows=[{"image": "names\\backslash.png"}]))
    return cases


def path_escapes(folder: Path, secret: Path, outside_dir: Path) -> list[Case]:
    """Paths that point outside the folder (rejected, never read) or at things that are not files."""
    paths = folder / "paths"
    (paths / "real").mkdir(parents=True)
    Image.new("RGB", (13, 7), BLUE).save(paths / "real/target.png")
    (paths / "out.png").symlink_to(secret)
    (paths / "outdir").symlink_to(outside_dir, target_is_directory=True)
    (paths / "in.png").symlink_to("real/target.png")
    (paths / "indir").symlink_to("real", target_is_directory=True)
    (paths / "ring.png").symlink_to("ring.png")
    os.mkfifo(paths / "pipe.png")
    long_name = "paths/" + "x" * 5000 + ".png"
    return [
        _bad("../secret.png", "'..' out of the folder", "leaves"),
        _bad(str(secret), "absolute path to a file outside", "absolute"),
        _bad("paths/out.png", "symlink inside pointing outside", "outside"),
        _bad("paths/outdir/inner.png", "path through a symlinked directory outside", "outside"),
        Case("symlink pointing inside the folder", "ok", "paths/in.png", size=(13, 7),
             rows=[{"image": "paths/in.png"}]),
        Case("path through a symlinked directory inside", "ok", "paths/indir/target.png", size=(13, 7),
             rows=[{"image": "paths/indir/target.png"}]),
        _bad("paths/real", "path to a directory", "not a"),
        _bad("paths/nowhere.png", "missing file", "exist"),
        _bad("paths/a\x00b.png", "NUL byte in the path", "nul"),
        _bad("paths/ring.png", "symlink loop", "link"),  # "Symlink loop" or "Too many levels of symbolic links"
        _bad("paths/pipe.png", "FIFO named .png (would block a reader)", "not a"),
        _bad(long_name, "5000-character path", "long"),
        Case("duplicate JSON keys smuggling '../secret.png' (last key wins)", "rejected", "../secret.png", "leaves",
             rows=['{"image": "paths/real/target.png", "image": "../secret.png"}']),
    ]


def row_fields(folder: Path) -> list[Case]:
    """Manifest rows whose values have the wrong type, shape or size; plus rows that are fine but unusual."""
    for number in range(1, 25):
        Image.new("RGB", (20 + number, 3), GREEN).save(_parent(folder / f"rows/r{number:02}.png"))
    r = {number: f"rows/r{number:02}.png" for number in range(1, 25)}
    mb = "x" * 1_000_000
    return [
        _bad(r[1], "caption is a list", "caption", caption=["a", "b"]),
        _bad(r[2], "answer is an object", "answer", question="what?", answer={"a": 1}),
        _bad(r[3], "question is a boolean", "question", question=True, answer="yes"),
        _bad(r[4], "question_type is a list", "question_type", question="q?", answer="a", question_type=["x"]),
        Case("image is a number", "rejected", "424242", "424242", rows=[{"image": 424242}]),
        Case("split is a number (taken as text)", "ok", r[5], check=fields(split="3"), size=(25, 3),
             rows=[{"image": r[5], "split": 3}]),
        Case("answer is a number (taken as text)", "ok", r[6], check=qa(("how many?", "2")), size=(26, 3),
             rows=[{"image": r[6], "question": "how many?", "answer": 2}]),
        _bad(r[7], "split with slashes", "split", split="train/../x"),
        _bad(r[8], "split '..'", "split", split=".."),
        _bad(r[9], "question without answer", "answer", question="what colour?"),
        _bad(r[10], "answer without question", "question", answer="green"),
        _bad(r[11], "1 MB caption", "limit", caption=mb),
        _bad(r[12], "1 MB question", "limit", question=mb, answer="a"),
        Case("row without an image", "rejected", None, "image", rows=[{"caption": "a picture"}]),
        Case("empty image value", "rejected", None, "image", rows=[{"image": "  ", "caption": "a picture"}]),
        Case("a JSON array instead of an object", "rejected", None, "object", rows=['["rows/r13.png", "cap"]']),
        Case("a JSON null line", "rejected", None, "object", rows=["null"]),
        Case("invalid JSON", "rejected", None, "valid json", rows=['{"image": "rows/r13.png", "caption": '] ),
        Case("JSON nested 100000 deep", "rejected", None, "valid json", rows=["[" * 100_000 + "]" * 100_000]),
        Case("nulls mean missing", "ok", r[14], check=fields(caption=None, split="test"), size=(34, 3),
             rows=[{"image": r[14], "caption": None, "question": None, "answer": None, "split": None}]),
        Case("unknown columns kept as extra", "ok", r[15], check=extra(photographer="ann", tags=["a", "b"]),
             size=(35, 3), rows=[{"image": r[15], "photographer": "ann", "tags": ["a", "b"]}]),
        Case("empty split means test", "ok", r[16], check=fields(split="test"), size=(36, 3),
             rows=[{"image": r[16], "split": ""}]),
        Case("CRLF line ending", "ok", r[17], check=fields(caption="crlf"), size=(37, 3),
             rows=[json.dumps({"image": r[17], "caption": "crlf"}) + "\r"]),
        Case("blank and whitespace-only lines", "ok", None, stored=0, rows=["", "   \t"]),
        Case("a good QA row next to a bad one for the same image", "rejected", r[18], "answer", stored=1,
             check=qa(("is it green?", "yes")),
             rows=[{"image": r[18], "question": "is it green?", "answer": "yes"}, {"image": r[18], "question": "?"}]),
    ]


def _parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def duplicates(folder: Path) -> list[Case]:
    """The same image or the same bytes listed more than once."""
    for name, colour in (("same", RED), ("many", GREEN), ("conflict", BLUE)):
        Image.new("RGB", (14, 9), colour).save(_parent(folder / f"dups/{name}.png"))
    twin = _encoded(Image.new("RGB", (15, 9), YELLOW), "PNG")
    _write(folder, "dups/twin_a.png", twin)
    _write(folder, "dups/twin_b.png", twin)
    row = {"image": "dups/same.png", "question": "what colour?", "answer": "red", "split": "train"}
    return [
        Case("identical rows twice (deduplicated, not an error)", "ok", "dups/same.png", size=(14, 9),
             check=all_of(qa(("what colour?", "red")), fields(split="train")), rows=[row, dict(row)]),
        Case("one image, three QA rows", "ok", "dups/many.png", size=(14, 9),
             check=qa(("q1?", "a1"), ("q2?", "a2"), ("q3?", "a3")),
             rows=[{"image": "dups/many.png", "question": f"q{i}?", "answer": f"a{i}"} for i in (1, 2, 3)]),
        Case("same image in two splits (conflict reported, first kept)", "rejected", "dups/conflict.png", "split",
             stored=1, check=all_of(fields(split="train"), qa(("q1?", "a1"))),
             rows=[{"image": "dups/conflict.png", "split": "train", "question": "q1?", "answer": "a1"},
                   {"image": "dups/conflict.png", "split": "test", "question": "q2?", "answer": "a2"}]),
        Case("same bytes, two paths, two splits: first path", "ok", "dups/twin_a.png", size=(15, 9),
             check=fields(split="train"), rows=[{"image": "dups/twin_a.png", "split": "train"}]),
        Case("same bytes, two paths, two splits: second path", "ok", "dups/twin_b.png", size=(15, 9),
             check=fields(split="val"), rows=[{"image": "dups/twin_b.png", "split": "val"}]),
    ]


def text_encoding(folder: Path) -> tuple[Case, Case]:
    """The first and last manifest lines: a UTF-8 byte-order mark, and a raw U+2028 inside a JSON string
    (a line break for str.splitlines, not for JSON or editors: it must not split the row or shift line numbers)."""
    Image.new("RGB", (16, 4), RED).save(_parent(folder / "text/bom.png"))
    Image.new("RGB", (17, 4), RED).save(_parent(folder / "text/ls.png"))
    caption = "first\u2028second"
    bom = Case("manifest starts with a UTF-8 BOM", "ok", "text/bom.png", size=(16, 4),
               rows=["\ufeff" + json.dumps({"image": "text/bom.png"})])
    line_separator = Case("raw U+2028 in a caption", "ok", "text/ls.png", size=(17, 4), check=fields(caption=caption),
                          rows=[json.dumps({"image": "text/ls.png", "caption": caption}, ensure_ascii=False)])
    return bom, line_separator


def plain_folder(folder: Path, secret: Path) -> list[Case]:
    """A folder without a manifest: every image file is a row, its path the reference."""
    Image.new("RGB", (18, 4), RED).save(_parent(folder / "good.png"))
    Image.new("RGB", (19, 4), RED).save(folder / "LOUD.JPG", format="JPEG")
    (folder / "noise.png").write_bytes(random.Random(1).randbytes(2048))
    (folder / "notes.txt").write_text("not an image, not listed\n")
    (folder / "out.png").symlink_to(secret)
    (folder / "ring.png").symlink_to("ring.png")
    cases = [
        Case("no manifest: a good image", "ok", "good.png", size=(18, 4)),
        Case("no manifest: uppercase .JPG found", "ok", "LOUD.JPG", size=(19, 4)),
        Case("no manifest: random bytes named .png", "rejected", "noise.png", "not an image"),
        Case("no manifest: non-image file ignored", "ok", "notes.txt", stored=0),
        Case("no manifest: symlink pointing outside", "rejected", "out.png", "outside"),
        Case("no manifest: symlink loop", "rejected", "ring.png", "link"),
    ]
    for case in cases:
        case.dataset = PLAIN
    return cases


def typed_manifests(root: Path) -> tuple[list[Case], dict[str, Source]]:
    """CSV and Parquet manifests: a byte-order mark, quoted newlines, leading zeros, typed and null cells."""
    csv, parquet = root / "csv", root / "parquet"
    for folder in (csv, parquet):
        for number, name in enumerate(("a.png", "b.png", "c.png"), start=1):
            Image.new("RGB", (number, 9), BLUE).save(_parent(folder / name))
    text = 'image,caption,question,answer\na.png,,,\nb.png,"red, round\nshiny",,\nc.png,,how many?,007\n'
    (csv / "manifest.csv").write_bytes(text.encode("utf-8-sig"))  # what Excel writes as "CSV UTF-8"
    (parquet / "manifest.parquet").write_bytes(
        _parquet({"image": ["a.png", None], "question": ["how many?", "q?"], "answer": [2, 3]}))
    cases = [
        Case("CSV manifest with a UTF-8 BOM (Excel)", "ok", "a.png", size=(1, 9), dataset="csv", lines=[1]),
        Case("CSV caption quoted with a comma and a newline", "ok", "b.png", size=(2, 9), dataset="csv", lines=[2],
             check=fields(caption="red, round\nshiny")),
        Case("CSV answer '007' stays text", "ok", "c.png", size=(3, 9), dataset="csv", lines=[3],
             check=qa(("how many?", "007"))),
        Case("Parquet integer answer taken as text", "ok", "a.png", size=(1, 9), dataset="parquet", lines=[1],
             check=qa(("how many?", "2"))),
        Case("Parquet row with a null image", "rejected", None, "image", dataset="parquet", lines=[2]),
    ]
    return cases, {"csv": Source(csv), "parquet": Source(parquet)}


def manifest_errors(root: Path) -> tuple[list[Case], dict[str, Source]]:
    """One folder per manifest that cannot be used at all; each also holds a good image that must NOT be ingested."""
    good = json.dumps({"image": "ok.png"}) + "\n"
    garbage = b"\xff\xfe\x00\x81" + random.Random(2).randbytes(1024)
    specs = [  # (name, file, content, reason substring, explicit manifest?)
        ("manifest without an image column", "manifest.jsonl", '{"picture": "ok.png"}\n', "image", False),
        ("Parquet manifest without an image column", "manifest.parquet", _parquet({"picture": ["ok.png"]}), "image",
         False),
        ("empty manifest file", "manifest.jsonl", "", "no rows", False),
        ("manifest of blank lines", "manifest.jsonl", "\n  \n\n", "no rows", False),
        ("CSV manifest with only a header", "manifest.csv", "image,caption\n", "no rows", False),
        ("CSV manifest with a ragged row", "manifest.csv", "image,caption\nok.png,fine\nok.png,a,b,c\n", "csv", False),
        ("CSV manifest in UTF-16", "manifest.csv", "image,caption\nok.png,fine\n".encode("utf-16"), "utf-8", False),
        ("Parquet manifest that is not Parquet", "manifest.parquet", "image\nok.png\n", "parquet file", False),
        ("binary garbage as manifest.jsonl", "manifest.jsonl", garbage, "utf-8", False),
        ("two manifests in one folder", "manifest.jsonl", good, "manifest.csv", False),
        ("unknown manifest extension via --manifest", "manifest.txt", good, ".jsonl", True),
        ("every row bad", "manifest.jsonl", '{"image": "gone.png"}\n', "usable", False),
    ]
    cases, sources = [], {}
    for number, (name, file, content, reason, explicit) in enumerate(specs, start=1):
        dataset = f"merr-{number:02}"
        folder = root / "manifest-errors" / dataset
        Image.new("RGB", (40 + number, 5), RED).save(_parent(folder / "ok.png"))
        _write(folder, file, content.encode() if isinstance(content, str) else content)
        if name.startswith("two manifests"):
            (folder / "manifest.csv").write_text("image\nok.png\n")
        sources[dataset] = Source(folder, folder / file if explicit else None, file)
        cases.append(Case(name, "manifest-error", None, reason, dataset=dataset))
    return cases, sources


def _parquet(columns: dict) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    return buffer.getvalue()


def build_corpus(root: Path) -> Corpus:
    """Write every case under `root` (an empty folder) and return them with their manifest line numbers."""
    folder = root / MAIN
    folder.mkdir(parents=True)
    secret = root / "secret.png"  # next to the corpus: a manifest can name it, nothing may read it
    Image.new("RGB", (61, 59), (1, 2, 3)).save(secret)
    outside_dir = root / "outside"
    outside_dir.mkdir()
    Image.new("RGB", (67, 53), (4, 5, 6)).save(outside_dir / "inner.png")
    bom, line_separator = text_encoding(folder)
    main = [bom, *broken_files(folder), *unusual_modes(folder), *odd_sizes(folder), *file_names(folder),
            *path_escapes(folder, secret, outside_dir), *row_fields(folder), *duplicates(folder), line_separator]
    lines: list[str] = []
    for case in main:
        for row in case.rows:
            lines.append(row if isinstance(row, str) else json.dumps(row))
            case.lines.append(len(lines))
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    typed, typed_sources = typed_manifests(root)
    errors, error_sources = manifest_errors(root)
    sources = {MAIN: Source(folder), PLAIN: Source(root / PLAIN), **typed_sources, **error_sources}
    cases = main + plain_folder(root / PLAIN, secret) + typed + errors
    return Corpus(root, folder, cases, sources, [secret, outside_dir / "inner.png"])


# --- ingesting the corpus and judging the outcome ------------------------------------------------


@dataclass
class Run:
    """What ingest made of the corpus: per dataset its summary (or the exception it raised), and the tables."""

    results: dict[str, object]
    images: list[dict]
    qa: list[dict]
    contents: list[dict]
    opened_outside: list[str]  # files outside the dataset folders that ingest opened (must stay empty)


@dataclass
class Verdict:
    case: Case
    outcome: str  # "ingested" | "rejected" | "manifest error" | "crash" | "wrong"
    detail: str  # the rejection reason, the error message, or what was wrong
    passed: bool


_opened: list[str] | None = None  # paths opened while ingest runs, recorded by the audit hook


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _opened is not None and isinstance(args[0], (str, bytes, os.PathLike)):
        _opened.append(os.fsdecode(args[0]))


def ingest_corpus(corpus: Corpus, store, data_dir: Path, shard_size: int = 8) -> Run:
    """The ingest steps on every dataset folder of the corpus into `store`, watching which files get opened."""
    global _opened
    from ravlm_core.schemas import CONTENTS, IMAGES, QA
    from tests.helpers.stores import ingest_folder

    if not getattr(sys, "_ravlm_bad_inputs_hook", False):  # audit hooks cannot be removed: add it once
        sys.addaudithook(_audit)
        sys._ravlm_bad_inputs_hook = True
    results: dict[str, object] = {}
    _opened = opened = []
    try:
        for dataset, source in corpus.sources.items():
            try:
                results[dataset] = ingest_folder(source.folder, dataset, store, data_dir,
                                                 manifest=source.manifest, shard_size=shard_size)
            except Exception as err:  # noqa: BLE001 - every exception is a verdict here, not a test error
                results[dataset] = err
    finally:
        _opened = None
    secrets = {os.path.realpath(path) for path in corpus.outside}
    touched = sorted({path for path in opened if _realpath(path) in secrets})
    tables = (store.read(name).to_pylist() for name in (IMAGES, QA, CONTENTS))
    return Run(results, *tables, touched)


def _realpath(path: str) -> str:
    try:
        return os.path.realpath(path)
    except (OSError, ValueError, RuntimeError):
        return path


def judge(corpus: Corpus, run: Run) -> list[Verdict]:
    """One verdict per case: did ingest do what the case says it must?"""
    return [_judge(case, corpus, run) for case in corpus.cases]


def _judge(case: Case, corpus: Corpus, run: Run) -> Verdict:
    result = run.results.get(case.dataset)
    if case.kind == "manifest-error":
        return _judge_manifest_error(case, corpus.sources[case.dataset], result, run)
    if isinstance(result, BaseException):
        if _is_user_error(result):
            return Verdict(case, "wrong", f"whole source refused: {_one_line(result)}", False)
        return Verdict(case, "crash", _one_line(result), False)
    bad = [row for row in result.bad_rows if _names(row.ref, case, case.lines)]
    problems: list[str] = []
    stored = [r for r in run.images if r["dataset"] == case.dataset and r["path"] == case.image] if case.image else []
    if len(stored) != case.expected_rows:
        problems.append(f"{len(stored)} `images` rows for {case.image!r}, want {case.expected_rows}")
    outcome, detail = "ingested", ""
    if case.kind == "ok":
        problems += [f"rejected as {row.ref}: {row.reason}" for row in bad]
    else:
        outcome = "rejected"
        mine = [row for row in bad if _names(row.ref, case, case.lines[-1:])]
        problems += [f"good row rejected as {row.ref}: {row.reason}" for row in bad if row not in mine]
        if not mine:
            problems.append(f"no bad row names {_where(case)}")
        for row in mine:
            detail = f"{row.ref}: {row.reason}"
            if case.reason_has not in row.reason.lower():
                problems.append(f"reason lacks {case.reason_has!r}: {row.reason}")
            if not REMEDY.search(row.reason.lower()):
                problems.append(f"reason says nothing to do: {row.reason}")
    if len(stored) == 1:
        problems += _check_row(case, stored[0], run)
    if problems:
        return Verdict(case, "wrong", "; ".join(problems), False)
    return Verdict(case, outcome, detail, True)


def _names(ref: str, case: Case, lines: list[int]) -> bool:
    """Whether a bad row's reference points at this case: one of its manifest lines, or its file."""
    if any(re.search(rf"\b(line|row) {number}\b", ref) for number in lines):
        return True
    return bool(case.image) and re.search(rf"(?<![\w.-]){re.escape(case.image)}(?![\w.-])", ref) is not None


def _where(case: Case) -> str:
    return f"manifest line/row {case.lines[-1]}" if case.lines else repr(case.image)


def _check_row(case: Case, row: dict, run: Run) -> list[str]:
    content = next((c for c in run.contents if c["image_id"] == row["image_id"]), None)
    if content is None:
        return [f"no `contents` row for image_id {row['image_id']}"]
    problems = []
    if case.size and (row["width"], row["height"]) != case.size:
        problems.append(f"stored {row['width']}x{row['height']}, want {case.size[0]}x{case.size[1]}")
    if case.check:
        thumb = Image.open(io.BytesIO(content["thumbnail"])).convert("RGB")
        qa_rows = [q for q in run.qa if q["member_id"] == row["member_id"] and q.get("removed_at") is None]
        try:
            case.check({**row, "content": content, "thumb": thumb, "qa_rows": qa_rows})
        except AssertionError as err:
            problems.append(str(err))
    return problems


def _judge_manifest_error(case: Case, source: Source, result: object, run: Run) -> Verdict:
    from ravlm_core.ingest.records import ManifestError

    if not isinstance(result, BaseException):
        return Verdict(case, "wrong", f"no error: {result.added} added, {len(result.bad_rows)} bad rows", False)
    if not isinstance(result, ManifestError):
        return Verdict(case, "crash", _one_line(result), False)
    message, problems = str(result), []
    if "\n" in message or "\r" in message:
        problems.append("message is more than one line")
    for part in (source.names, case.reason_has):
        if part not in message.lower():
            problems.append(f"message lacks {part!r}")
    if any(row["dataset"] == case.dataset for row in run.images):
        problems.append("images were stored anyway")
    if problems:
        return Verdict(case, "wrong", "; ".join(problems) + f": {message}", False)
    return Verdict(case, "manifest error", message, True)


def _is_user_error(err: BaseException) -> bool:
    from ravlm_core.errors import UserError

    return isinstance(err, UserError)


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: " + " ".join(str(err).split())[:300]


def escapes(corpus: Corpus, run: Run) -> list[str]:
    """Evidence that something outside a dataset folder was read: opened files, stored uris, stored secrets."""
    found = [f"opened {path}" for path in run.opened_outside]
    for row in run.images:
        folder = corpus.sources[row["dataset"]].folder.resolve()
        if not _realpath(row["uri"]).startswith(str(folder) + os.sep):
            found.append(f"{row['dataset']}/{row['path']}: uri {row['uri']} is outside {folder}")
    secret_sizes = {Image.open(path).size for path in corpus.outside}
    found += [f"a secret's size is stored: {c['width']}x{c['height']}" for c in run.contents
              if (c["width"], c["height"]) in secret_sizes]
    return found


def stray_bad_rows(corpus: Corpus, run: Run) -> list[str]:
    """Bad rows that no rejected case accounts for (a good row wrongly rejected, or a case not described)."""
    stray = []
    for dataset, result in run.results.items():
        if isinstance(result, BaseException):
            continue
        rejected = [c for c in corpus.cases if c.dataset == dataset and c.kind == "rejected"]
        stray += [f"{dataset}: {row.ref}: {row.reason}" for row in result.bad_rows
                  if not any(_names(row.ref, case, case.lines) for case in rejected)]
    return stray
