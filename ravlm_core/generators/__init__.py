"""Generators behind one factory, `load_generator`: what turns an item and its retrieved context into text.

A generator spec is data (`GeneratorSpec`): a kind, a model folder or hub id, a prompt template and generation
settings. On the command line it is `KIND[:MODEL][,key=value...]` (`vlm:/models/smolvlm,max_new_tokens=32`) or
a JSON file of the same fields. Importing this module never imports torch.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ravlm_core.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

# The answerers and caption baselines that need no language model: baselines every report keeps.
# builtin-nearest: the KB caption whose text vector is nearest the image's (a search of the KB's captions).
BUILTIN_KINDS = ("builtin-vote", "builtin-fusion", "builtin-transfer", "builtin-nearest")
MODEL_KINDS = ("blip", "vlm", "smallcap")
KINDS = BUILTIN_KINDS + MODEL_KINDS
TASKS = {"vqa": ("builtin-vote", "builtin-fusion", "blip", "vlm"),
         "caption": ("builtin-transfer", "builtin-nearest", "blip", "vlm", "smallcap")}
# Short names of the baselines (the `variant` names their prediction rows carry), accepted as generator specs.
ALIASES = {"voting": "builtin-vote", "vote": "builtin-vote", "fusion": "builtin-fusion",
           "consensus": "builtin-transfer", "transfer": "builtin-transfer", "nearest-caption": "builtin-nearest"}


# SmallCap writes the beam hypothesis the retrieved captions agree with most: 5 beams give that choice room
# (80 held-out flickr8k-dev train images: CIDEr-D 0.504 with 5 beams, 0.481 with 3, 0.446 with 3 and no
# re-ranking; benchmarks/smallcap_bench.py). The model generators keep greedy decoding unless asked, as their
# checkpoints' cards suggest for captions.
DEFAULT_BEAMS = {"smallcap": 5}


@dataclass(frozen=True)
class GeneratorSpec:
    """What generates, and how: every field is part of the generator's tag, so a change makes a new job."""

    kind: str
    model: str = ""  # blip / vlm: a local folder or a hub id; smallcap: a trained folder (else trained here)
    # A template name from `prompts.TEMPLATES`, or a text file; its text (hashed) is part of the tag.
    prompt: str = "default"
    max_new_tokens: int = 24
    num_beams: int = 0  # 0: the kind's default (DEFAULT_BEAMS); 1: greedy
    batch_size: int = 8
    context_items: int = 5  # retrieved neighbours whose captions / answers go into the prompt
    context_images: int = 0  # vlm: that many neighbours' thumbnails go in as extra images
    dtype: str = "auto"  # auto: bfloat16 on GPU, float32 on CPU

    def __post_init__(self):
        if self.kind not in KINDS:
            raise UserError(f"unknown generator kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.num_beams == 0:  # resolved here, so the tag names the beams that actually ran
            object.__setattr__(self, "num_beams", DEFAULT_BEAMS.get(self.kind, 1))
        if self.kind in ("blip", "vlm") and not self.model:
            raise UserError(f"generator {self.kind} needs a model: --generator {self.kind}:FOLDER_OR_HUB_ID")
        for name in ("max_new_tokens", "num_beams", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"generator {name} must be at least 1, not {getattr(self, name)}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise UserError(f"generator dtype {self.dtype!r}: choose auto, float32, bfloat16 or float16")

    @classmethod
    def parse(cls, text: str) -> GeneratorSpec:
        """`KIND[:MODEL][,key=value...]`, an alias (`fusion`, `voting`, `consensus`), or a JSON file of fields."""
        text = text.strip()
        if text.endswith(".json") and Path(text).is_file():
            try:
                fields = json.loads(Path(text).read_text())
            except json.JSONDecodeError as err:
                raise UserError(f"generator spec {text}: not JSON ({err.msg} at line {err.lineno})") from None
            if not isinstance(fields, dict):
                raise UserError(f"generator spec {text}: write a JSON object of fields, e.g. {{\"kind\": \"blip\"}}")
            return cls.from_fields(fields, text)
        head, *options = text.split(",")
        kind, _, model = head.partition(":")
        fields: dict = {"kind": ALIASES.get(kind, kind), "model": model}
        for option in options:
            key, sep, value = option.partition("=")
            if not sep:
                raise UserError(f"generator spec {text!r}: option {option!r} is not key=value")
            fields[key.strip()] = value.strip()
        return cls.from_fields(fields, text)

    @classmethod
    def from_fields(cls, fields: dict, source: str = "") -> GeneratorSpec:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - set(known))
        if unknown:
            raise UserError(f"generator spec {source!r}: unknown field(s) {', '.join(unknown)}; "
                            f"known: {', '.join(known)}")
        if "kind" not in fields:
            raise UserError(f"generator spec {source!r} names no kind; choose one of {', '.join(KINDS)}")
        values = {}
        for key, value in fields.items():
            if known[key].type == "int":
                try:
                    value = int(value)
                except (TypeError, ValueError):
                    raise UserError(f"generator spec {source!r}: {key} must be a whole number, not {value!r}") from None
            values[key] = str(value) if known[key].type == "str" else value
        return cls(**values)

    def fields(self) -> dict:
        return dataclasses.asdict(self)

    def serves(self, task: str) -> bool:
        """Whether this generator does `task`; a BLIP folder holds one head, captioning or VQA."""
        if self.kind == "blip":
            return blip_task(self.model) == task
        return self.kind in TASKS[task]


def blip_task(model: str) -> str:
    """"vqa" for a BlipForQuestionAnswering folder, else "caption" (read from its config, no torch)."""
    from ravlm_core.model_files import resolve_folder

    try:
        config = json.loads((resolve_folder(model) / "config.json").read_text())
    except (UserError, FileNotFoundError, json.JSONDecodeError) as err:
        raise UserError(f"generator blip: {model} has no readable config.json ({err})") from None
    return "vqa" if "BlipForQuestionAnswering" in (config.get("architectures") or []) else "caption"


def model_folder(spec: GeneratorSpec) -> Path:
    """The local folder of `spec.model` (a hub id resolves through the local cache); a missing one is a user
    error naming the generator."""
    from ravlm_core.model_files import resolve_folder

    try:
        return resolve_folder(spec.model)
    except UserError as err:
        raise UserError(f"generator {spec.kind}: {err}") from None


def generator_tag(spec: GeneratorSpec, weights: str | Path | None = None) -> str:
    """`<kind>-<12 hex>` over the spec's fields, its model files and its prompt templates' text: whatever decides
    what it generates. Needs no torch, so flows name jobs before any model loads.

    Args:
        weights: where the weights are, when not `spec.model` (a smallcap decoder trained for this KB).
    """
    from ravlm_core.generators.prompts import load_template
    from ravlm_core.model_files import folder_digest

    digest = hashlib.blake2b(json.dumps(spec.fields(), sort_keys=True).encode(), digest_size=6)
    if weights is not None:
        digest.update(folder_digest(Path(weights)).encode())
    elif spec.kind in MODEL_KINDS and spec.model:
        digest.update(folder_digest(model_folder(spec)).encode())
    if spec.kind in MODEL_KINDS:
        for task, kinds in TASKS.items():
            if spec.kind in kinds:
                digest.update(load_template(spec.kind, spec.prompt, task).encode())
    return f"{spec.kind}-{digest.hexdigest()}"


# The variant each baseline writes into prediction rows and reports, with and without retrieval: part of stored job
# ids, so they stay fixed.
_BUILTIN_VARIANTS = {("builtin-vote", True): "voting", ("builtin-fusion", True): "fusion",
                     ("builtin-fusion", False): "fusion-no-retrieval", ("builtin-transfer", True): "consensus",
                     ("builtin-nearest", True): "nearest-caption"}
# Why a baseline has no run without retrieval: it is made of what retrieval finds.
NO_RETRIEVAL_MODE = {
    "builtin-vote": "voting counts the neighbours' answers, so without retrieval it has nothing to vote with; "
                    "builtin-fusion runs without",
    "builtin-transfer": "caption transfer copies the neighbours' captions, so without retrieval it has nothing to "
                        "transfer; a model generator such as smallcap runs without",
    "builtin-nearest": "nearest-caption is itself a search of the knowledge base's captions",
}


def without_retrieval(spec: GeneratorSpec) -> str | None:
    """None when the generator runs without retrieval, else why it cannot (the reports say it as "n/a")."""
    return NO_RETRIEVAL_MODE.get(spec.kind)


def generation_variant(spec: GeneratorSpec, use_retrieval: bool) -> str:
    """`fusion`, `voting`, `consensus`, `nearest-caption`, `fusion-no-retrieval` for the baselines; the kind for
    models, suffixed `-no-retrieval` when they run without. Part of the job id, so known before the job is."""
    if spec.kind in BUILTIN_KINDS:
        if (spec.kind, use_retrieval) not in _BUILTIN_VARIANTS:
            raise UserError(f"{spec.kind} has no --no-retrieval run: {without_retrieval(spec)}")
        return _BUILTIN_VARIANTS[(spec.kind, use_retrieval)]
    return spec.kind if use_retrieval else f"{spec.kind}-no-retrieval"


@dataclass(frozen=True)
class GenerationJob:
    """What one job runs, built once by its flow and handed as it is to every task: the generator and whether it
    sees retrieval."""

    job_id: str
    spec: GeneratorSpec
    tag: str  # `generator_tag`
    use_retrieval: bool = True
    model_dir: str | None = None  # weights trained here (fusion answerer, SmallCap decoder), else spec.model

    def __post_init__(self):
        generation_variant(self.spec, self.use_retrieval)

    @property
    def variant(self) -> str:
        return generation_variant(self.spec, self.use_retrieval)

    def to_dict(self) -> dict:
        """Its JSON form; `from_dict` reads it back."""
        return {**dataclasses.asdict(self), "spec": self.spec.fields()}

    def spec_json(self) -> str:
        """What each prediction row records of its generator: the spec's fields, retrieval, trained weights."""
        return json.dumps({**self.spec.fields(), "use_retrieval": self.use_retrieval, "model_dir": self.model_dir},
                          sort_keys=True)

    @classmethod
    def from_dict(cls, fields: dict) -> GenerationJob:
        return cls(**{**fields, "spec": GeneratorSpec.from_fields(fields["spec"])})


@dataclass
class Request:
    """One item to generate for: its image, its question (None when captioning) and the retrieved context."""

    image: Image.Image | None  # None for generators that read the image vector instead (`needs_pixels` False)
    question: str | None
    context: list[dict]  # per retrieved neighbour: {"caption", "qa": [(question, answer)], "score", "image"?}
    vector: np.ndarray | None = None  # float32 [d], the image's vector in the KB's encoder space


@dataclass
class Generation:
    text: str
    prompt: str  # exactly what the model was given as text (chat template applied), for every prediction row


class Generator(Protocol):
    """A language model that generates for a batch of requests; built by `load_generator`."""

    spec: GeneratorSpec
    tag: str  # kind + digest of the spec, the weights and the prompt template: names jobs and prediction rows

    def generate(self, requests: list[Request], task: str) -> list[Generation]: ...


_CLASSES = {"blip": "ravlm_core.generators.blip:BlipGenerator",
            "vlm": "ravlm_core.generators.vlm:ChatVLMGenerator",
            "smallcap": "ravlm_core.generators.smallcap:SmallCapGenerator"}


def load_generator(spec: GeneratorSpec, *, device: str = "cpu") -> Generator:
    """Open a model generator (`blip`, `vlm`, `smallcap`) with its processor, ready for `generate`.

    Args:
        spec: what to load; its `model` is a local folder or a hub id (read from the local cache offline).
        device: torch device ("cpu", "cuda", ...); bfloat16 on CUDA unless the spec says otherwise.
    Returns:
        A `Generator`.
    Raises:
        UserError: a builtin kind (those run inside the jobs, not as a model), or the model cannot be found
            or is not of the kind's family.
    """
    if spec.kind not in _CLASSES:
        raise UserError(f"generator kind {spec.kind} is not a model; the jobs run it directly")
    module, _, name = _CLASSES[spec.kind].partition(":")
    return getattr(importlib.import_module(module), name)(spec, device=device)


def torch_dtype(spec: GeneratorSpec, device: str):
    import torch

    if spec.dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, spec.dtype)
