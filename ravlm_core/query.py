"""Interactive queries over the store: text or image search, and asking a question about a new image."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from ravlm_core.answerers import FusionAnswerer, vote_answers
from ravlm_core.errors import UserError
from ravlm_core.imaging import ImageRejected, open_rgb, signature
from ravlm_core.knowledge import KnowledgeBase
from ravlm_core.retrieve import Guard, search
from ravlm_core.store import ACTIVE, IMAGES, Store, image_vectors_table, in_list
from ravlm_core.vqa import retrieve_for_vectors


def open_image(path: str | Path) -> Image.Image:
    """Decode a query image as ingest does, with an error that names the file when it cannot be used."""
    try:
        return open_rgb(Path(path).read_bytes())
    except OSError as error:
        raise UserError(f"cannot read image {path}: {error.strerror or error}") from error
    except ImageRejected as error:
        raise UserError(f"image {path}: {error}") from error


def search_images(store: Store, encoder, *, text: str | None = None, image: str | Path | None = None, k: int = 10,
                  where: str | None = None) -> list[dict]:
    """The k images nearest to a text or an image query, with their caption and provenance."""
    if (text is None) == (image is None):
        raise ValueError("give exactly one of a text query or an image path")
    vector = encoder.embed_texts([text]) if text is not None else encoder.embed_images([open_image(image)])
    hits = search(store, image_vectors_table(encoder.tag), vector, k, where=where)
    return _describe(store, hits.ids[0], hits.scores[0])


def _describe(store: Store, ids: list[str], scores: list[float]) -> list[dict]:
    if not ids:
        return []
    rows = store.read(IMAGES, columns=["image_id", "dataset", "split", "path", "caption", "uri"],
                      where=f"{in_list('image_id', ids)} AND {ACTIVE}").to_pylist()
    by_id = {r["image_id"]: r for r in rows}
    return [{**by_id.get(i, {"image_id": i}), "score": round(float(s), 4)} for i, s in zip(ids, scores)]


def ask(store: Store, kb: KnowledgeBase, encoder, question_encoder, answerer: FusionAnswerer | None,
        image: str | Path, question: str, k: int) -> dict:
    """Answer one question about one (possibly unseen) image, retrieving from the KB."""
    pixels = open_image(image)
    image_vector = encoder.embed_images([pixels])  # [1, d]
    question_vector = question_encoder.embed_texts([question])  # [1, dq]
    # The image may be new to the store: its own bytes and near-duplicates in the KB are found by its pixels.
    guard = Guard([None], [signature(pixels)], kb.config.near_duplicate_distance, kb.config.leakage_guard)
    retrieved = retrieve_for_vectors(store, kb, image_vector, question_vector, k, [question], guard=guard)
    context = retrieved.context(kb)
    matched = int(retrieved.question_index[0])
    close = float(retrieved.question_sim[0]) >= kb.config.question_match_min
    result = {"question": question, "kb": kb.label,
              "matched_question": kb.questions[matched] if matched >= 0 and close else None,
              "voting": vote_answers(context, kb.answers)[0],
              "near_duplicates": retrieved.neighbours.near_duplicates[0]}
    if answerer is not None:
        result["answer"] = answerer.predict(image_vector, question_vector, context)[0]
    neighbours = retrieved.neighbours
    result["neighbours"] = _describe(store, neighbours.ids[0][:5], neighbours.scores[0][:5])
    return result
