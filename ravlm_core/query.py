"""Interactive queries over the store: text or image search, and asking a question about a new image.

They answer at the speed of a query: no flow, no server, and only the models the query needs, which the
pipeline trained (`ravlm embed`, `ravlm vqa`); nothing is trained here. `Session` opens them from Settings."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from ravlm_core.answerers import FusionAnswerer, vote_answers
from ravlm_core.config import Settings
from ravlm_core.errors import UserError
from ravlm_core.imaging import ImageRejected, open_rgb, signature
from ravlm_core.knowledge import KnowledgeBase, parse_kb, retrieval_config
from ravlm_core.models import BUILTIN, pinned_encoder, timed_load
from ravlm_core.retrieve import Guard, kb_filter, search, vector_sets_filter
from ravlm_core.store import ACTIVE, IMAGES, Store, image_vectors_table, in_list, sql_quote
from ravlm_core.vqa import retrieve_for_vectors


class Session:
    """A store and the models its interactive queries use, each opened on first use."""

    def __init__(self, settings: Settings):
        self.settings, self.store = settings, Store(settings.store_uri)
        self._encoder = None

    @property
    def device(self) -> str:
        return self.settings.torch_device()  # imports torch for "auto": only asked when a torch model loads

    @property
    def encoder(self):
        """The store's encoder (the pinned built-in one, or the configured model)."""
        if self._encoder is None:
            from ravlm_core.encoders import load_encoder

            ref = pinned_encoder(self.settings.encoder, self.settings.models_dir)
            self._encoder = timed_load(f"encoder {ref}", lambda: load_encoder(ref, device=self.device))
        return self._encoder

    def text_encoder(self):
        """What embeds a text query: the built-in encoder's exported text graph when there is one (no torch
        import; one short text runs as fast on the CPU as on a GPU), else the encoder itself, which then
        exports the graph for the next query."""
        from ravlm_core.encoders import describe_encoder
        from ravlm_core.encoders.text_query import TextQueryEncoder, export_text_query, text_query_ready

        if self.settings.encoder != BUILTIN:
            return self.encoder
        ref = pinned_encoder(BUILTIN, self.settings.models_dir)
        if text_query_ready(Path(ref), describe_encoder(ref)[0]):
            return timed_load(f"text query graph {ref}", lambda: TextQueryEncoder(ref))
        export_text_query(self.encoder, Path(ref))
        return self.encoder

    def search(self, text: str | None = None, image: str | Path | None = None, k: int = 10,
               dataset: str | None = None, split: str | None = None) -> list[dict]:
        """The k images nearest to a text or an image, among those listed in `dataset` / `split` when given."""
        encoder = self.text_encoder() if text is not None else self.encoder
        return search_images(self.store, encoder, text=text, image=image, k=k,
                             where=listed_in(self.store, dataset, split), dataset=dataset, split=split)

    def ask(self, image: str | Path, question: str, kb: list[str] | None = None) -> dict:
        """Answer a question about an image with the fusion answerer the pipeline trained for the KB."""
        from ravlm_core.encoders.questions import QuestionEncoder, question_encoder_tag
        from ravlm_core.jobs import cached_knowledge_base
        from ravlm_core.vqa import trained_answerer

        settings = self.settings
        sets = parse_kb(kb, "easy-vqa", settings.kb_split)
        knowledge = cached_knowledge_base(self.store.uri, self.encoder.tag, question_encoder_tag(), sets,
                                          retrieval_config(settings))
        from ravlm_core.locations import pulled

        folder = trained_answerer(knowledge, settings.k, pulled(settings.models_dir, "answerers"), use_retrieval=True)
        if folder is None:
            dataset, split = sets[0]
            raise UserError(f"no fusion answerer has been trained for the knowledge base {knowledge.label} with "
                            f"k={settings.k} yet: run `ravlm vqa --dataset {dataset} --split {split} --kb "
                            f"{dataset}:{split}` (or `ravlm eval`) first")
        answerer = timed_load(f"fusion answerer {folder}", lambda: FusionAnswerer(folder, self.device))
        questions = timed_load("question encoder", lambda: QuestionEncoder(self.device))
        return ask(self.store, knowledge, self.encoder, questions, answerer, image, question, settings.k)


def listed_in(store: Store, dataset: str | None, split: str | None) -> str | None:
    """The vector-table filter for images listed in `dataset` (all its splits, or `split`), or in `split` of
    any dataset; None for no filter, "false" when nothing is listed there."""
    if not dataset and not split:
        return None
    where = kb_filter(dataset, split) if dataset else f"split = {sql_quote(split)} AND {ACTIVE}"
    rows = store.read(IMAGES, columns=["dataset", "split"], where=where)
    sets = sorted(set(zip(rows.column("dataset").to_pylist(), rows.column("split").to_pylist()))) if rows.num_rows else []
    return vector_sets_filter(sets) if sets else "false"


def open_image(path: str | Path) -> Image.Image:
    """Decode a query image as ingest does, with an error that names the file when it cannot be used."""
    try:
        return open_rgb(Path(path).read_bytes())
    except OSError as error:
        raise UserError(f"cannot read image {path}: {error.strerror or error}") from error
    except ImageRejected as error:
        raise UserError(f"image {path}: {error}") from error


def search_images(store: Store, encoder, *, text: str | None = None, image: str | Path | None = None, k: int = 10,
                  where: str | None = None, dataset: str | None = None, split: str | None = None) -> list[dict]:
    """The k images nearest to a text or an image query, with their caption and provenance (a listing in
    `dataset` / `split` when given: the same bytes may be listed in several)."""
    if (text is None) == (image is None):
        raise ValueError("give exactly one of a text query or an image path")
    vector = encoder.embed_texts([text]) if text is not None else encoder.embed_images([open_image(image)])
    hits = search(store, image_vectors_table(encoder.tag), vector, k, where=where)
    return _describe(store, hits.ids[0], hits.scores[0], dataset, split)


def _describe(store: Store, ids: list[str], scores: list[float], dataset: str | None = None,
              split: str | None = None) -> list[dict]:
    if not ids:
        return []
    where = f"{in_list('image_id', ids)} AND {ACTIVE}"
    where += f" AND dataset = {sql_quote(dataset)}" if dataset else ""
    where += f" AND split = {sql_quote(split)}" if split else ""
    rows = store.read(IMAGES, columns=["image_id", "dataset", "split", "path", "caption", "uri"],
                      where=where).to_pylist()
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
