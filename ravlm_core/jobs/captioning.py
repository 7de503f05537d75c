"""Retrieval-augmented captioning: nearest-neighbour caption transfer with consensus re-ranking."""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa

from ravlm_core.generators import GenerationJob
from ravlm_core.ids import pred_ids
from ravlm_core.retrieval.knowledge import IMAGE_TAU, KnowledgeBase
from ravlm_core.retrieval.search import Neighbours
from ravlm_core.schemas import CAPTION_PREDICTIONS_SCHEMA


def consensus_captions(neighbours: Neighbours, captions: dict[str, str],
                       caption_vectors: dict[str, np.ndarray]) -> list[str]:
    """For each image, the neighbours' caption that agrees most with all neighbours' captions.

    Consensus re-ranking (Devlin et al., 2015): a caption that many close neighbours roughly share beats the
    one caption of the single nearest image, which may be an outlier. Agreement is cosine similarity of caption
    vectors, each neighbour weighted by how close its image is.
    """
    out = []
    for ids, scores in zip(neighbours.ids, neighbours.scores):
        pairs = [(captions[i], s) for i, s in zip(ids, scores) if i in captions]
        if not pairs:
            out.append("")
            continue
        texts = [t for t, _ in pairs]
        weights = np.exp((np.array([s for _, s in pairs]) - max(s for _, s in pairs)) / IMAGE_TAU)
        candidates = list(dict.fromkeys(texts))
        cand = np.stack([caption_vectors[t] for t in candidates])  # [n_candidates, d]
        refs = np.stack([caption_vectors[t] for t in texts])  # [n_neighbours, d]
        out.append(candidates[int(np.argmax((cand @ refs.T) @ weights))])
    return out


def direct_captions(image_vectors: np.ndarray, candidates: list[str], candidate_vectors: np.ndarray) -> list[str]:
    """The no-neighbour baseline: for each image, the known caption whose text vector is closest to it."""
    if not candidates:
        return [""] * len(image_vectors)
    return [candidates[i] for i in (image_vectors @ candidate_vectors.T).argmax(1)]


def caption_rows(job: GenerationJob, kb: KnowledgeBase, members: pd.DataFrame, neighbours: Neighbours,
                 predictions: list[str], run_id: str = "", prompts: list[str] | None = None) -> pa.Table:
    """The `caption_predictions` rows of one job over `members` (listed images), keyed by (job, listing)."""

    n = len(members)
    now = datetime.now(timezone.utc)
    return pa.Table.from_pydict(
        {
            "pred_id": pred_ids(job.job_id, members["member_id"].tolist()), "job_id": [job.job_id] * n,
            "dataset": members["dataset"].tolist(), "split": members["split"].tolist(),
            "member_id": members["member_id"].tolist(), "image_id": members["image_id"].tolist(),
            "prediction": predictions, "reference": members["caption"].tolist(), "variant": [job.variant] * n,
            "kb": [kb.label] * n, "neighbour_ids": neighbours.ids, "neighbour_scores": neighbours.scores,
            "near_duplicates": neighbours.near_duplicates, "model_tag": [kb.model_tag] * n,
            "generator": [job.tag] * n, "generator_spec": [job.spec_json()] * n, "prompt": prompts or [""] * n,
            "kb_version": [kb.fingerprint] * n,
            "run_id": [run_id] * n, "created_at": [now] * n,
        },
        schema=CAPTION_PREDICTIONS_SCHEMA,
    )
