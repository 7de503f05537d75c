"""Embedding tasks: make sure the encoder exists (training the built-in heads once), embed one shard, embed texts."""
from __future__ import annotations

from dataclasses import asdict
from functools import lru_cache

from prefect import task
from prefect.cache_policies import NO_CACHE

from ravlm_core.embed import pinning, reader, shards
from ravlm_core.encoders import EncoderRef
from ravlm_core.errors import naming
from ravlm_core.locations import local_model, shared_ref
from ravlm_core.model_files import timed_load
from ravlm_core.store import Store
from tasks.retry import RETRY


@lru_cache(maxsize=2)
def load_cached_encoder(model_ref: str, device: str):
    # Heavy objects are built inside the worker that uses them, once per process, not passed between tasks.
    from ravlm_core.encoders import load_encoder

    return timed_load(f"encoder {model_ref}", lambda: load_encoder(model_ref, device=device))


@lru_cache(maxsize=2)
def load_cached_question_encoder(device: str):
    from ravlm_core.encoders.questions import QuestionEncoder

    return timed_load("question encoder", lambda: QuestionEncoder(device))


def lazy_encoder(encoder: EncoderRef, device: str):
    """The encoder as tasks use it: tag and dim from its reference, weights loaded only when something is new."""
    from ravlm_core.encoders import LazyEncoder

    model_ref = local_model(encoder.model_ref)  # a trained encoder on object storage: fetched into this machine's cache
    return LazyEncoder(encoder.model_tag, encoder.dim, lambda: load_cached_encoder(model_ref, device))


def lazy_question_encoder(device: str):
    from ravlm_core.encoders import LazyEncoder
    from ravlm_core.encoders.questions import QuestionEncoder, question_encoder_tag

    return LazyEncoder(question_encoder_tag(), QuestionEncoder.dim, lambda: load_cached_question_encoder(device))


@task(cache_policy=NO_CACHE)
def resolve_encoder(encoder_spec: str, store_uri: str, models_dir: str, device: str,
                    retrain: bool = False) -> EncoderRef:
    """The encoder `encoder_spec` (`Settings.encoder`) names, training the built-in alignment heads first when
    needed (its weights are not loaded here: tag and dim come from its files)."""
    from ravlm_core.encoders import describe_encoder
    from ravlm_core.encoders.questions import question_encoder_tag

    with naming(f"encoder {encoder_spec}"):
        model_ref = pinning.resolve_encoder(encoder_spec, Store(store_uri), models_dir, device, retrain=retrain)
        tag, dim = describe_encoder(model_ref)
    shared = shared_ref(models_dir, model_ref) if model_ref != encoder_spec else encoder_spec
    return EncoderRef(model_ref=shared, model_tag=tag, dim=dim, question_tag=question_encoder_tag())


@task(cache_policy=NO_CACHE, **RETRY)
def embed_shard(store_uri: str, encoder: EncoderRef, shard_path: str, device: str, batch_size: int) -> dict:
    # Batches are sized by the encoder for the device (measured once per machine on a CPU) unless `batch_size`
    # (Settings.image_batch_size) fixes them; 0 leaves it to the encoder.
    with naming(f"embedding shard {shard_path}"):
        return asdict(shards.embed_shard(Store(store_uri), lazy_encoder(encoder, device), shard_path,
                                        batch_size or None, workers=reader.reader_workers(device)))


@task(cache_policy=NO_CACHE, **RETRY)
def embed_texts(store_uri: str, encoder: EncoderRef, device: str, batch_size: int, datasets: list[str] | None = None,
                extra_questions: list[str] | None = None) -> dict:
    with naming(f"embedding the texts of {', '.join(datasets) if datasets else 'every dataset'}"):
        return asdict(shards.embed_texts(Store(store_uri), lazy_encoder(encoder, device), datasets, batch_size * 4,
                                        lazy_question_encoder(device), extra_questions or []))
