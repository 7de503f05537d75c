"""Interactive queries over the store: text or image search, and asking a question about a new image."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from ravlm_core.answerers import FusionAnswerer, vote_answers
from ravlm_core.knowledge import KnowledgeBase
from ravlm_core.retrieve import search
from ravlm_core.store import IMAGES, Store, image_vectors_table, sql_quote
from ravlm_core.vqa import retrieve_for_vectors


def open_image(path: str | Path) -> Image.Image:
    """Decode a query image, with an error that names the file when it cannot be read."""
    try:
        return Image.open(path).convert("RGB")
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read image {path}: {error}; pass a JPEG/PNG/WebP file") from error


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
    rows = store.read(IMAGES, columns=["image_id", "dataset", "split", "caption", "uri"],
                      where=f"image_id IN ({', '.join(sql_quote(i) for i in ids)})").to_pylist()
    by_id = {r["image_id"]: r for r in rows}
    return [{**by_id.get(i, {"image_id": i}), "score": round(float(s), 4)} for i, s in zip(ids, scores)]


def ask(store: Store, kb: KnowledgeBase, encoder, question_encoder, answerer: FusionAnswerer | None,
        image: str | Path, question: str, k: int) -> dict:
    """Answer one question about one (possibly unseen) image, retrieving from the KB."""
    image_vector = encoder.embed_images([open_image(image)])  # [1, d]
    question_vector = question_encoder.embed_texts([question])  # [1, dq]
    retrieved = retrieve_for_vectors(store, kb, image_vector, question_vector, k)
    context = retrieved.context(kb)
    matched = int(retrieved.question_index[0])
    result = {"question": question, "matched_question": kb.questions[matched] if matched >= 0 else None,
              "voting": vote_answers(context, kb.answers)[0]}
    if answerer is not None:
        result["answer"] = answerer.predict(image_vector, question_vector, context)[0]
    neighbours = retrieved.neighbours
    result["neighbours"] = _describe(store, neighbours.ids[0][:5], neighbours.scores[0][:5])
    return result
