"""Embed flow: resolve (or train) the encoder → embed every content shard's missing images → new texts → indexes."""
from __future__ import annotations

from prefect import flow, get_run_logger, unmapped

from flows.common import RUN_HOOKS, on_device, resolve_run_encoder, run_name, settings_from
from ravlm_core.ingest.shards import stored_shards
from ravlm_core.store import Store
from tasks.embed import embed_shard, embed_texts
from tasks.index import build_indexes


@flow(name="embed", flow_run_name=run_name("embed"), **RUN_HOOKS)
def embed_flow(retrain_encoder: bool = False, overrides: dict | None = None) -> dict:
    """Embed every listed image and text the configured encoder's tables lack; only new rows do work."""
    settings = settings_from(overrides)
    logger = get_run_logger()
    device = settings.torch_device()
    gpu = on_device(device, settings)
    encoder = resolve_run_encoder(settings, device, retrain=retrain_encoder)
    shards = stored_shards(Store(settings.store_uri))
    logger.info("embedding %d content shards with %s on %s", len(shards), encoder.model_tag, device)
    results = gpu(embed_shard).map(store_uri=unmapped(settings.store_uri), encoder=unmapped(encoder),
                                   shard_path=shards, device=unmapped(device),
                                   batch_size=unmapped(settings.image_batch_size)).result()
    texts = gpu(embed_texts)(store_uri=settings.store_uri, encoder=encoder, device=device,
                             batch_size=settings.batch_size)
    indexes = build_indexes(store_uri=settings.store_uri, model_tag=encoder.model_tag,
                            question_tag=encoder.question_tag, min_rows_for_ann=settings.min_rows_for_ann,
                            target_recall=settings.ann_target_recall)
    return {
        **encoder.to_json(),
        "shards": len(shards),
        "new_images": sum(r["new_images"] for r in results),
        "new_texts": texts["new_texts"],
        "new_questions": texts["new_questions"],
        "encode_s": round(sum(r["encode_s"] for r in results) + texts["encode_s"], 2),
        "indexes": indexes,
    }
