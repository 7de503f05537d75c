"""Stored images by content id: full pixels from their Parquet shard, thumbnails from the `contents` table."""
from __future__ import annotations

import io
from collections import defaultdict

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from ravlm_core.errors import UserError
from ravlm_core.imaging import decode_image
from ravlm_core.schemas import CONTENTS
from ravlm_core.store import Store, chunks, in_list


def stored_values(store: Store, image_ids, column: str) -> dict:
    """image id -> its value of `column` in `contents` (shard, thumbnail, signature, ...), for the ids stored."""
    found = {}
    for part in chunks(sorted(set(image_ids))):
        rows = store.read(CONTENTS, columns=["image_id", column], where=in_list("image_id", part))
        found.update(zip(rows.column("image_id").to_pylist(), rows.column(column).to_pylist()))
    return found


def shards_of(store: Store, image_ids) -> dict[str, str]:
    """image id -> the shard file `contents` says holds its bytes."""
    return stored_values(store, image_ids, "shard")


def read_images(store: Store, image_ids: list[str]) -> dict[str, Image.Image]:
    """The images' pixels as the encoder sees them (decoded, normalised to RGB), read from their shards.

    Raises:
        UserError: an image's shard is gone (`ravlm ingest` the dataset again to rebuild it).
    """
    wanted = sorted(set(image_ids))
    by_shard: dict[str, list[str]] = defaultdict(list)
    for image_id, shard in shards_of(store, wanted).items():
        by_shard[shard].append(image_id)
    images = {}
    for shard, ids in by_shard.items():
        table = read_shard(shard, ["image_id", "image"], filters=[("image_id", "in", ids)])
        for image_id, blob in zip(table.column("image_id").to_pylist(), table.column("image").to_pylist()):
            images[image_id] = decode_image(blob).image
    missing = [i for i in wanted if i not in images]
    if missing:
        raise UserError(f"{len(missing)} image(s) are not in any shard (first: {missing[0]}): "
                        f"run `ravlm ingest` on their dataset again to rebuild its shards")
    return images


def read_shard(shard: str, columns: list[str], filters=None) -> pa.Table:
    """`columns` of a content shard; a shard that is gone is a UserError saying how to write it again."""
    try:
        return pq.read_table(shard, columns=columns, filters=filters)
    except FileNotFoundError:
        raise UserError(f"shard {shard} is missing: run `ravlm ingest` on its source again, which writes its "
                        f"images anew") from None


def read_thumbnails(store: Store, image_ids: list[str]) -> dict[str, Image.Image]:
    """The small JPEG thumbnails kept in `contents` (what a prompt shows of a neighbour), decoded."""
    return {image_id: Image.open(io.BytesIO(jpeg)).convert("RGB")
            for image_id, jpeg in stored_values(store, image_ids, "thumbnail").items()}
