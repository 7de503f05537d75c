"""Embed flow: resolve (or train) the encoder → embed every content shard's missing images → new texts → indexes."""
from __future__ import annotations

from prefect import flow, get_run_logger, unmapped

from flows.common import RUN_HOOKS, on_device, run_name, settings_from
from ravlm_core.ingest.shards import stored_shards
from ravlm_core.store import Store
from tasks.embed import embed_shard, embed_texts, resolve_encoder
from tasks.index import build_indexes


@flow(name="embed", flow_run_name=run_name("embed"), **RUN_HOOKS)
def embed_flow(retrain_encoder: bool = False, overrides: dict | None = None) -> dict:
    """Embed every listed image and text the configured encoder's tables lack; only new rows do work."""
    settings = settings_from(overrides)
    logger = get_run_logger()
    device = settings.torch_device()
    gpu = on_device(device, settings)
    encoder = gpu(resolve_encoder)(settings.encoder, settings.store_uri, str(settings.models_dir), device,
                                   retrain_encoder)
    shards = stored_shards(Store(settings.store_uri))
    logger.info("embedding %d content shards with %s on %s", len(shards), encoder["model_tag"], device)
    results = gpu(embed_shard).map(unmapped(settings.store_uri), unmapped(encoder["model_ref"]), shards,
                                   unmapped(device), unmapped(settings.image_batch_size)).result()
    texts = gpu(embed_texts)(settings.store_uri, encoder["model_ref"], device, settings.batch_size)
    indexes = build_indexes(settings.store_uri, encoder["model_tag"], encoder["question_tag"],
                            settings.min_rows_for_ann, settings.ann_target_recall)
    return {
        **encoder,
        "shards": len(shards),
        "new_images": sum(r["new_images"] for r in results),
        "new_texts": texts["new_texts"],
        "new_questions": texts["new_questions"],
        "encode_s": round(sum(r["encode_s"] for r in results) + texts["encode_s"], 2),
        "indexes": indexes,
    }
