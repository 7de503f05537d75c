"""Prompt templates: how retrieved neighbours (captions, question-answer pairs) are written into a model's prompt.

A template has `{context}` (the retrieved block, empty without retrieval) and, for VQA, `{question}`. Templates
are versioned by their text: its hash is part of every generator tag, so editing one makes new jobs, and each
prediction row stores the exact prompt its model received.
"""
from __future__ import annotations

import json
from pathlib import Path

from ravlm_core.errors import UserError

# Per model kind, per task. BLIP's captioner continues its text (a prefix), so its template ends mid-sentence;
# BLIP's VQA model reads one text, the question, so the context goes in front of it.
TEMPLATES = {
    "vlm": {
        "vqa": "{context}Answer the question about the first image with one or two words.\nQuestion: {question}",
        "caption": "{context}Describe the first image in one short sentence.",
    },
    "blip": {
        "vqa": "{context}{question}",
        "caption": "{context}this image shows",
    },
    "smallcap": {
        "caption": "{context}this image shows",
    },
}
CONTEXT_HEADER = {"vlm": "Similar images:\n", "blip": "similar images: ", "smallcap": "similar images show "}


def load_template(kind: str, name: str, task: str) -> str:
    """The template text for a generator kind and task: a built-in (`default`) or a file.

    A file is either plain text (one template for every task) or JSON {"vqa": ..., "caption": ...}.

    Raises:
        UserError: the file is missing, lacks this task, or has no `{context}` placeholder.
    """
    if name == "default":
        template = TEMPLATES.get(kind, {}).get(task)
        if template is None:
            raise UserError(f"generator {kind} does not do {task}")
        return template
    path = Path(name)
    if not path.is_file():
        raise UserError(f"prompt template {name!r} is neither 'default' nor a file: write one with {{context}} "
                        f"and {{question}} placeholders")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            text = json.loads(text)[task]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"prompt template {path}: write a JSON object with a {task!r} template") from None
    if "{context}" not in text or (task == "vqa" and "{question}" not in text):
        raise UserError(f"prompt template {path} for {task} needs {{context}}"
                        + (" and {question}" if task == "vqa" else ""))
    return text


def context_block(kind: str, neighbours: list[dict], task: str) -> str:
    """The retrieved neighbours as prompt text: their captions, and for VQA their answers to the question.

    Args:
        neighbours: in retrieval order, {"caption": str | None, "qa": [(question, answer), ...]}.
    Returns:
        "" without neighbours, so a template renders the same prompt as without retrieval.
    """
    if kind == "vlm":
        lines = []
        for n in neighbours:
            answers = "; ".join(f"{q} {a}" for q, a in n.get("qa", ()))
            text = " - ".join(part for part in (n.get("caption"), answers if task == "vqa" else "") if part)
            if text:
                lines.append(f"- {text}\n")
        return CONTEXT_HEADER[kind] + "".join(lines) if lines else ""
    # BLIP / SmallCap read short plain text: distinct captions (and answers) in retrieval order.
    parts = []
    for n in neighbours:
        if task == "vqa":
            parts += [a for _, a in n.get("qa", ())]
        if n.get("caption"):
            parts.append(n["caption"])
    parts = list(dict.fromkeys(parts))
    return CONTEXT_HEADER[kind] + ". ".join(parts) + ". " if parts else ""


def render(template: str, context: str, question: str | None = None) -> str:
    """The template with its placeholders filled; a user template with stray braces is a one-line error."""
    try:
        return template.format(context=context, question=question or "")
    except (KeyError, IndexError, ValueError) as err:
        raise UserError(f"prompt template has a placeholder other than {{context}} / {{question}} ({err}); "
                        f"write literal braces as {{{{ and }}}}") from None
