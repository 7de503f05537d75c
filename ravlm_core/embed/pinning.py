"""Which encoder a store uses: a user-given model, or the built-in one, trained once and then pinned."""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from ravlm_core.contents import read_shard
from ravlm_core.errors import UserError
from ravlm_core.imaging import decode_image
from ravlm_core.locations import is_remote, join, local_models, publish, pulled, read_text, write_text
from ravlm_core.schemas import ACTIVE, CONTENTS, IMAGES, IMAGES_SCHEMA
from ravlm_core.store import Store, chunks, in_list, sql_quote

log = logging.getLogger(__name__)
T = TypeVar("T")

BUILTIN = "builtin"
# Captioned images used to train the built-in heads; more adds little for frozen towers and costs decode time.
MAX_ALIGNMENT_IMAGES = 20_000


def resolve_encoder(spec: str, store: Store, models_dir: str | Path, device: str, *, split: str = "train",
                    retrain: bool = False) -> str:
    """Return what `load_encoder` should load for `spec`.

    A folder or hub id is returned as is. "builtin" returns the pinned trained encoder of this models folder,
    training its alignment heads first on the store's captioned `split` images when none is pinned (or when
    `retrain`). Pinning keeps the model tag, and so every vector table, stable across nightly runs.

    Raises:
        UserError: "builtin" must be trained but the store has no captioned images in `split`, or a shard of
            theirs is missing.
    """
    if spec != BUILTIN:
        return spec
    pinned = None if retrain else _pinned_builtin(models_dir)
    if pinned:
        return pinned
    images, captions = alignment_pairs(store, split)
    if not images:
        raise UserError(f"no captioned '{split}' images in {store.uri} to train the built-in encoder on: "
                        "ingest a dataset with captions first (e.g. `ravlm ingest easy-vqa`)")
    from ravlm_core.encoders.training import train_builtin_encoder

    log.info("training the built-in encoder's alignment heads on %d images, %d captions", len(images),
             sum(map(len, captions)))
    model_dir = train_builtin_encoder(images, captions, local_models(models_dir), device=device)
    from ravlm_core.encoders.builtin import BuiltinEncoder
    from ravlm_core.encoders.text_query import export_text_query

    export_text_query(BuiltinEncoder(model_dir, device="cpu"), model_dir)  # so `ravlm search` starts fast
    publish(models_dir, model_dir)  # on object storage: uploaded before the pin names it
    # A local pin names the folder itself; one on object storage names it relative to the models
    # location, since each machine keeps its copy in its own cache.
    pinned_name = model_dir.name if is_remote(models_dir) else str(model_dir)
    write_text(join(models_dir, "builtin.json"), json.dumps({"model_dir": pinned_name}))
    return str(model_dir)


def pinned_encoder(spec: str, models_dir: str | Path) -> str:
    """What `resolve_encoder` returns, without ever training: for interactive commands, which must answer at
    the speed of a query. Raises a UserError saying what to run when the built-in encoder is not trained yet."""
    if spec != BUILTIN:
        return spec
    pinned = _pinned_builtin(models_dir)
    if pinned is None:
        raise UserError(f"no built-in encoder has been trained in {models_dir} yet: run `ravlm embed` (or `ravlm "
                        "demo`) first, or pass --data-dir of a store that has one")
    return pinned


def _pinned_builtin(models_dir: str | Path) -> str | None:
    """The pinned encoder's local folder (downloaded first when the models are on object storage), or None."""
    pin = read_text(join(models_dir, "builtin.json"))
    if pin is None:
        return None
    pinned = json.loads(pin)["model_dir"]
    if is_remote(models_dir):
        pinned = str(pulled(models_dir, pinned))
    return pinned if Path(pinned).exists() else None


def alignment_pairs(store: Store, split: str,
                    limit: int = MAX_ALIGNMENT_IMAGES) -> tuple[list[Image.Image], list[list[str]]]:
    """Decoded images and all their captions (`captions`, else `caption`) for every captioned image of `split` (all
    datasets), up to `limit` images. An image listed in several datasets gets the captions of every listing."""
    rows = store.read(IMAGES, columns=["image_id", "caption", "captions"],
                      where=f"split = {sql_quote(split)} AND {ACTIVE}", schema=IMAGES_SCHEMA)
    if not rows.num_rows:  # no images table yet reads as an empty table without columns
        return [], []
    captions_of: dict[str, list[str]] = defaultdict(list)
    for image_id, caption, captions in zip(*(rows.column(c).to_pylist() for c in ("image_id", "caption", "captions"))):
        given = [c for c in (captions or [caption]) if c and c.strip()]
        captions_of[image_id].extend(c for c in given if c not in captions_of[image_id])
    captions_of = {image_id: given for image_id, given in sorted(captions_of.items()) if given}
    by_shard: dict[str, dict[str, list[str]]] = defaultdict(dict)
    for ids in chunks(sorted(captions_of)):
        shards = store.read(CONTENTS, columns=["image_id", "shard"], where=in_list("image_id", ids))
        for image_id, shard in zip(*(shards.column(c).to_pylist() for c in ("image_id", "shard"))):
            by_shard[shard][image_id] = captions_of[image_id]
    images, captions = [], []
    for shard, wanted in sorted(by_shard.items()):
        table = read_shard(shard, ["image_id", "image"])
        table = table.filter(pc.is_in(table.column("image_id"), value_set=pa.array(list(wanted))))
        for image_id, data in zip(table.column("image_id").to_pylist(), table.column("image").to_pylist()):
            image = decode_image(data).image
            image.thumbnail((256, 256))  # the heads see small inputs anyway; keeps 20k photos in memory cheap
            images.append(image)
            captions.append(wanted[image_id])
            if len(images) >= limit:
                return images, captions
    return images, captions
