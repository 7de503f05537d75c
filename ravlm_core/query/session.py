"""Interactive queries over the store: text or image search for images or texts (vector, or hybrid with full
text), and asking a question about a new image.

They answer at the speed of a query: no flow, no server, and only the models the query needs, which the
pipeline trained (`ravlm embed`, `ravlm vqa`); nothing is trained here. `Session` opens them from Settings."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import pyarrow as pa
from PIL import Image

from ravlm_core.config import Settings
from ravlm_core.embed.pinning import BUILTIN, pinned_encoder
from ravlm_core.errors import UserError
from ravlm_core.imaging import ImageRejected, open_rgb, signature
from ravlm_core.jobs.answerers import FusionAnswerer, appearance, vote_answers
from ravlm_core.model_files import timed_load
from ravlm_core.query.results import Hits
from ravlm_core.retrieval.filters import Filter, listed_in, listing_where, parse_filters
from ravlm_core.retrieval.knowledge import KnowledgeBase, parse_kb, retrieval_config
from ravlm_core.retrieval.questions import retrieve_for_vectors
from ravlm_core.retrieval.search import Guard, search
from ravlm_core.schemas import ACTIVE, IMAGES, QA, image_vectors_table, text_vectors_table
from ravlm_core.store import Store, chunks, in_list, sql_quote

TARGETS = ("images", "texts")
# Hits each leg of a hybrid search hands the reranker, so the fused top k can draw on both.
HYBRID_DEPTH = 50
# Ids per prefilter IN list: a `--where` searches only the rows it selects, in slices this long (measured on
# 50k 256-d rows with a B-tree on the id: one slice of 50k ids 0.63 s, ten of 5k 1.3 s, no filter 0.07 s).
PREFILTER_IDS = 50_000


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
               dataset: str | None = None, split: str | None = None, *,
               where: Sequence[str] | Mapping[str, object] | None = None, target: str = "images",
               hybrid: bool = False, reranker: str = "rrf") -> Hits:
        """The k images (`target="images"`) or captions and questions (`target="texts"`) nearest to a text or
        an image, among those listed in `dataset` / `split` that pass every `where` filter ("width>=640",
        "caption~dog", "split in train,val", or a mapping {column: value}).

        `hybrid` fuses the vector hits with full-text hits on the query's words (captions, or the texts),
        reranked by `reranker`: "rrf" (reciprocal rank fusion) or "cross-encoder:FOLDER" (a local
        sentence-transformers cross-encoder). Returns `Hits`: a list of dicts, with to_pandas() / to_arrow().
        """
        if (text is None) == (image is None):
            raise UserError("give a text query or an image (exactly one)")
        if target not in TARGETS:
            raise UserError(f"unknown search target {target!r}; targets: {', '.join(TARGETS)}")
        if not hybrid and reranker != "rrf":
            raise UserError("--reranker reranks the two halves of a --hybrid search: add --hybrid")
        if hybrid and text is None:
            raise UserError("--hybrid needs a text query: its full-text half matches the query's words")
        if k < 1:
            raise UserError(f"-k must be at least 1, got {k}")
        scope = Scope(parse_filters(where), dataset, split)
        fusion = load_reranker(reranker) if hybrid else None
        encoder = self.text_encoder() if text is not None else self.encoder
        vector = encoder.embed_texts([text]) if text is not None else encoder.embed_images([open_image(image)])
        found = search_images if target == "images" else search_texts
        hits = found(self.store, encoder.tag, vector, k, scope, fts_query=text if hybrid else None, reranker=fusion)
        hits.title = f"{target} nearest to {text if text is not None else image}"
        return hits

    def dedup(self, threshold: float, dataset: str | None = None, split: str | None = None) -> Hits:
        """Groups of near-duplicate images (cosine >= `threshold`) among the store encoder's image vectors; see
        `dedup.guarded`. Loads no model: the encoder's tag is read from its files."""
        from ravlm_core.encoders import describe_encoder
        from ravlm_core.query.dedup import near_duplicates

        model_tag = describe_encoder(pinned_encoder(self.settings.encoder, self.settings.models_dir))[0]
        return near_duplicates(self.store, model_tag, threshold, dataset, split)

    def ask(self, image: str | Path, question: str, kb: list[str] | None = None) -> dict:
        """Answer a question about an image with the fusion answerer the pipeline trained for the KB."""
        from ravlm_core.encoders.questions import QuestionEncoder, question_encoder_tag
        from ravlm_core.jobs.parts import cached_knowledge_base
        from ravlm_core.jobs.vqa import trained_answerer

        settings = self.settings
        kb_ref = parse_kb(kb, "easy-vqa", settings.kb_split)
        knowledge = cached_knowledge_base(self.store.uri, self.encoder.tag, question_encoder_tag(), kb_ref,
                                          retrieval_config(settings))
        from ravlm_core.locations import pulled

        folder = trained_answerer(knowledge, settings.k, pulled(settings.models_dir, "answerers"), use_retrieval=True)
        if folder is None:
            dataset, split = kb_ref.sets[0]
            raise UserError(f"no fusion answerer has been trained for the knowledge base {knowledge.label} with "
                            f"k={settings.k} yet: run `ravlm vqa {dataset} --split {split} --kb "
                            f"{dataset}:{split}` (or `ravlm eval`) first")
        answerer = timed_load(f"fusion answerer {folder}", lambda: FusionAnswerer(folder, self.device))
        questions = timed_load("question encoder", lambda: QuestionEncoder(self.device))
        return ask(self.store, knowledge, self.encoder, questions, answerer, image, question, settings.k)


@dataclass
class Scope:
    """Which listings a search may return: those in `dataset` / `split` passing every filter."""

    filters: list[Filter] = field(default_factory=list)
    dataset: str | None = None
    split: str | None = None

    def listings(self) -> str:
        """The `where` clause over `images`."""
        return listing_where(self.filters, self.dataset, self.split)

    def image_prefilter(self, store: Store) -> tuple[str | None, list[str] | None]:
        """(where, ids) that restrict an image vector search to this scope before it ranks: the memberships
        label filter for a dataset / split alone, else the ids of the images some passing listing shows."""
        if not self.filters:
            return listed_in(store, self.dataset, self.split), None
        rows = store.read(IMAGES, columns=["image_id"], where=self.listings())
        return None, sorted(set(rows.column("image_id").to_pylist())) if rows.num_rows else []

    def text_prefilter(self, store: Store) -> list[str] | None:
        """The ids of the captions and questions of the passing listings; None when everything passes."""
        if not (self.filters or self.dataset or self.split):
            return None
        from ravlm_core.ids import text_id

        listed = store.read(IMAGES, columns=["member_id", *_caption_columns(store)], where=self.listings())
        if not listed.num_rows:
            return []
        members = set(listed.column("member_id").to_pylist())
        texts = {c for row in listed.select(_caption_columns(store)).to_pylist() for c in _captions_of(row)}
        asked = store.read(QA, columns=["member_id", "question"], where=listing_where((), self.dataset, self.split))
        if asked.num_rows:
            texts |= {q for m, q in zip(*(asked.column(c).to_pylist() for c in ("member_id", "question")))
                      if m in members}
        return sorted(text_id(t) for t in texts)


def open_image(path: str | Path) -> Image.Image:
    """Decode a query image as ingest does, with an error that names the file when it cannot be used."""
    try:
        return open_rgb(Path(path).read_bytes())
    except OSError as error:
        raise UserError(f"cannot read image {path}: {error.strerror or error}") from error
    except ImageRejected as error:
        raise UserError(f"image {path}: {error}") from error


def search_images(store: Store, model_tag: str, vector, k: int, scope: Scope, *, fts_query: str | None = None,
                  reranker=None) -> Hits:
    """The k images nearest to a query vector ([1, d]) within `scope`, each described by a listing that passes
    it; with `fts_query`, fused with the full-text hits on captions by `reranker`."""
    if not store.has(image_vectors_table(model_tag)):
        raise UserError(f"no image vectors for encoder {model_tag} in {store.uri}: run `ravlm embed` first")
    where, ids = scope.image_prefilter(store)
    depth = max(k, HYBRID_DEPTH) if fts_query else k
    nearest = _nearest(store, image_vectors_table(model_tag), vector, depth, "image_id", where, ids)
    if not fts_query:
        return Hits(describe_images(store, [i for i, _ in nearest], [s for _, s in nearest], scope.listings()))
    _require_full_text(store, IMAGES, "caption")
    matched = _full_text(store, IMAGES, "caption", fts_query, depth, "image_id", scope.listings())
    ids_seen = list(dict.fromkeys([i for i, _ in nearest] + [i for i, _ in matched]))
    listing = {row["image_id"]: row for row in describe_images(store, ids_seen, [0.0] * len(ids_seen), scope.listings())}
    fused = _fuse(reranker, fts_query, nearest, matched, {i: row.get("caption") for i, row in listing.items()})[:k]
    vector_score, text_score = dict(nearest), dict(matched)
    return Hits([{**listing.get(i, {"image_id": i}), "score": round(s, 6), "vector_score": _rounded(vector_score.get(i)),
                  "text_score": _rounded(text_score.get(i))} for i, s in fused])


def search_texts(store: Store, model_tag: str, vector, k: int, scope: Scope, *, fts_query: str | None = None,
                 reranker=None) -> Hits:
    """The k captions and questions nearest to a query vector ([1, d]) among those of the listings in `scope`,
    each with where it comes from; with `fts_query`, fused with the full-text hits on the texts."""
    table = text_vectors_table(model_tag)
    if not store.has(table):
        raise UserError(f"no text vectors for encoder {model_tag} in {store.uri}: run `ravlm embed` first")
    ids = scope.text_prefilter(store)
    depth = max(k, HYBRID_DEPTH) if fts_query else k
    nearest = _nearest(store, table, vector, depth, "text_id", None, ids)
    matched = []
    if fts_query:
        _require_full_text(store, table, "text")
        matched = _full_text(store, table, "text", fts_query, depth, "text_id", None, ids)
    text_of = _texts(store, table, list(dict.fromkeys([i for i, _ in nearest] + [i for i, _ in matched])))
    ranked = _fuse(reranker, fts_query, nearest, matched, text_of)[:k] if fts_query else nearest
    sources = _text_sources(store, [text_of[i] for i, _ in ranked if i in text_of], scope)
    vector_score, text_score = dict(nearest), dict(matched)
    hits = []
    for i, score in ranked:
        text = text_of.get(i)
        hit = {"text_id": i, "text": text, **sources.get(text, {"kind": None, "listings": 0}), "score": round(score, 6)}
        if fts_query:
            hit.update(vector_score=_rounded(vector_score.get(i)), text_score=_rounded(text_score.get(i)))
        hits.append(hit)
    return Hits(hits, kind="texts")


def describe_images(store: Store, ids: list[str], scores: list[float], where: str = ACTIVE) -> list[dict]:
    """Each image with its score and one listing matching `where` (the first by dataset, split, path: the same
    bytes may be listed in several places)."""
    if not ids:
        return []
    rows = []
    for part in chunks(list(dict.fromkeys(ids))):
        rows += store.read(IMAGES, columns=["image_id", "dataset", "split", "path", "caption", "uri", "width",
                                            "height"], where=f"{in_list('image_id', part)} AND {where}").to_pylist()
    by_id: dict[str, dict] = {}
    for row in sorted(rows, key=lambda r: (r["dataset"], r["split"] or "", r["path"])):
        by_id.setdefault(row["image_id"], row)
    return [{**by_id.get(i, {"image_id": i}), "score": round(float(s), 4)} for i, s in zip(ids, scores)]


def load_reranker(spec: str):
    """A LanceDB reranker: "rrf" (reciprocal rank fusion, k=60), or "cross-encoder:FOLDER" (a local
    sentence-transformers cross-encoder that scores the query against each hit's text; nothing is downloaded)."""
    from lancedb.rerankers import CrossEncoderReranker, RRFReranker

    if spec == "rrf":
        return RRFReranker()
    kind, _, folder = spec.partition(":")
    if kind == "cross-encoder" and folder:
        if not Path(folder).is_dir():
            raise UserError(f"--reranker {spec}: {folder} is not a folder; give a local cross-encoder model "
                            "(sentence-transformers CrossEncoder.save) — nothing is downloaded")
        return CrossEncoderReranker(model_name=folder, column="text", device="cpu", trust_remote_code=False)
    raise UserError(f"unknown reranker {spec!r}; use rrf or cross-encoder:FOLDER")


def _nearest(store: Store, table: str, vector, k: int, key: str, where: str | None,
             ids: list[str] | None) -> list[tuple[str, float]]:
    """(key, cosine) of the k nearest rows, best first; with `ids`, among those rows only (each slice of the
    list prefilters one search, and the slices' top k are merged: the same k an unsliced search would give)."""
    if ids is None:
        hits = search(store, table, vector, k, key=key, where=where)
        return list(zip(hits.ids[0], hits.scores[0]))
    found = []
    for part in chunks(ids, PREFILTER_IDS):
        hits = search(store, table, vector, k, key=key, where=in_list(key, part), where_rows=len(part))
        found += zip(hits.ids[0], hits.scores[0])
    return sorted(found, key=lambda hit: -hit[1])[:k]


def _require_full_text(store: Store, table: str, column: str) -> None:
    if not store.has(table) or not any(
            index.index_type == "FTS" and list(index.columns) == [column] for index in store.table(table).list_indices()):
        raise UserError(f"{table}.{column} has no full-text index for --hybrid: run `ravlm embed`, which builds the "
                        "indexes")


def _full_text(store: Store, table: str, column: str, query: str, depth: int, key: str, where: str | None,
               ids: list[str] | None = None) -> list[tuple[str, float]]:
    """(key, BM25 score) of the best full-text matches, best first, one per key; prefiltered like `_nearest`."""
    wheres = [where] if ids is None else [in_list(key, part) for part in chunks(ids, PREFILTER_IDS)]
    best: dict[str, float] = {}
    for clause in wheres:
        query_ = store.table(table).search(query, query_type="fts", fts_columns=column).select([key]).limit(depth)
        if clause:
            query_ = query_.where(clause, prefilter=True)
        result = query_.to_arrow()
        for hit, score in zip(result.column(key).to_pylist(), result.column("_score").to_pylist()):
            best[hit] = max(score, best.get(hit, score))
    return sorted(best.items(), key=lambda hit: -hit[1])[:depth]


def _fuse(reranker, query: str, nearest: list[tuple[str, float]], matched: list[tuple[str, float]],
          text_of: dict[str, str | None]) -> list[tuple[str, float]]:
    """(key, relevance) of the two legs' hits reranked by a LanceDB reranker, best first.

    The legs may come from different tables (image vectors, caption listings), so each hit gets a row id of
    its own key for the reranker to merge on, and its text for rerankers that read it (cross-encoders)."""
    if not nearest and not matched:
        return []
    row_of = {key: n for n, key in enumerate(dict.fromkeys([k for k, _ in nearest] + [k for k, _ in matched]))}

    def leg(hits, score_column, scores):
        return pa.table({"_rowid": pa.array([row_of[k] for k, _ in hits], pa.uint64()),
                         "key": pa.array([k for k, _ in hits], pa.string()),
                         "text": pa.array([text_of.get(k) or "" for k, _ in hits], pa.string()),
                         score_column: pa.array(scores, pa.float32())})

    fused = reranker.rerank_hybrid(query, leg(nearest, "_distance", [1.0 - s for _, s in nearest]),
                                   leg(matched, "_score", [s for _, s in matched]))
    return list(zip(fused.column("key").to_pylist(), map(float, fused.column("_relevance_score").to_pylist())))


def _texts(store: Store, table: str, ids: list[str]) -> dict[str, str]:
    found = {}
    for part in chunks(ids):
        rows = store.read(table, columns=["text_id", "text"], where=in_list("text_id", part))
        found.update(zip(rows.column("text_id").to_pylist(), rows.column("text").to_pylist()))
    return found


def _text_sources(store: Store, texts: list[str], scope: Scope) -> dict[str, dict]:
    """Where each text comes from within `scope`: caption and / or question, how many listings use it, and the
    first of them (by dataset, split, path)."""
    if not texts:
        return {}
    uses: dict[str, list[tuple[str, dict]]] = {}
    wanted, columns = set(texts), _caption_columns(store)
    named = in_list("caption", texts)
    if "captions" in columns:
        named = f"({named} OR array_has_any(captions, [{', '.join(map(sql_quote, texts))}]))"
    for row in store.read(IMAGES, columns=["member_id", "image_id", "dataset", "split", "path", *columns],
                          where=f"{named} AND {scope.listings()}").to_pylist():
        for text in wanted.intersection(_captions_of(row)):
            uses.setdefault(text, []).append(("caption", row))
    asked = store.read(QA, columns=["member_id", "question"],
                       where=f"{in_list('question', texts)} AND {listing_where((), scope.dataset, scope.split)}")
    if asked.num_rows:
        members = sorted(set(asked.column("member_id").to_pylist()))
        listing = {}
        for part in chunks(members):
            for row in store.read(IMAGES, columns=["member_id", "image_id", "dataset", "split", "path"],
                                  where=f"{in_list('member_id', part)} AND {scope.listings()}").to_pylist():
                listing[row["member_id"]] = row
        for member, question in zip(asked.column("member_id").to_pylist(), asked.column("question").to_pylist()):
            if member in listing:
                uses.setdefault(question, []).append(("question", listing[member]))
    sources = {}
    for text, found in uses.items():
        first = min((row for _, row in found), key=lambda r: (r["dataset"], r["split"] or "", r["path"]))
        sources[text] = {"kind": ", ".join(sorted({kind for kind, _ in found})),
                         "listings": len({row["member_id"] for _, row in found}),
                         **{key: first[key] for key in ("image_id", "dataset", "split", "path")}}
    return sources


def _caption_columns(store: Store) -> list[str]:
    """`caption`, and `captions` (all of a listing's) where the store has it: a search never adds a column."""
    has = store.has(IMAGES) and "captions" in store.table(IMAGES).schema.names
    return ["caption", "captions"] if has else ["caption"]


def _captions_of(row: dict) -> list[str]:
    return [c for c in [row["caption"], *(row.get("captions") or ())] if c]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


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
              "near_duplicates": retrieved.neighbours.guarded[0]}
    if answerer is not None:
        result["answer"] = answerer.predict(image_vector, question_vector, context,
                                            looks=appearance([signature(pixels)]))[0]
    neighbours = retrieved.neighbours
    result["neighbours"] = describe_images(store, neighbours.ids[0][:5], neighbours.scores[0][:5])
    return result
