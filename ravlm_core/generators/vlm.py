"""Chat vision-language models (SmolVLM / Idefics3, Qwen2-VL, LLaVA ...) as retrieval-augmented generators.

Anything that loads with `AutoModelForImageTextToText` + `AutoProcessor` and has a chat template: the query
image comes first, then (with `context_images`) the neighbours' thumbnails, then the prompt with the retrieved
captions and answers, all through the processor's own chat template. Batches are left-padded, as decoder-only
generation needs; the prompt text stored per prediction is the chat-templated text the model received.
"""
from __future__ import annotations

import torch

from ravlm_core.errors import UserError
from ravlm_core.generators import Generation, GeneratorSpec, Request, generator_tag, model_folder, torch_dtype
from ravlm_core.generators.prompts import context_block, load_template, render


class ChatVLMGenerator:
    """A chat VLM and its processor; prompts through the processor's own chat template, left-padded batches."""

    def __init__(self, spec: GeneratorSpec, device: str = "cpu"):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        folder = model_folder(spec)
        self.processor = AutoProcessor.from_pretrained(folder)  # trust_remote_code stays off
        if not getattr(self.processor, "chat_template", None):
            raise UserError(f"{spec.model} has no chat template: a chat VLM's processor needs one "
                            f"(chat_template.jinja or chat_template.json beside the processor files)")
        self.processor.tokenizer.padding_side = "left"
        self.dtype = torch_dtype(spec, device)
        try:
            self.model = AutoModelForImageTextToText.from_pretrained(folder, dtype=self.dtype, use_safetensors=True)
        except ValueError as err:  # an architecture AutoModelForImageTextToText does not map
            raise UserError(f"{spec.model} does not load as an image-text-to-text model: {str(err).splitlines()[0]}")
        self.model.eval().requires_grad_(False).to(device)
        self.spec, self.device = spec, device
        self.templates = {task: load_template("vlm", spec.prompt, task) for task in ("vqa", "caption")}
        self.tag = generator_tag(spec)

    def prompt(self, request: Request, task: str) -> tuple[str, list]:
        """The chat-templated prompt text and its images (the query's first) for one request."""
        shown = [n["image"] for n in request.context[: self.spec.context_images] if n.get("image") is not None]
        text = render(self.templates[task], context_block("vlm", request.context, task), request.question)
        if shown:
            text = f"The other {len(shown)} image(s) are the most similar ones from the knowledge base.\n{text}"
        content = [{"type": "image"} for _ in range(1 + len(shown))] + [{"type": "text", "text": text}]
        messages = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True), [request.image, *shown]

    def generate(self, requests: list[Request], task: str) -> list[Generation]:
        prompts, images = zip(*(self.prompt(r, task) for r in requests))
        inputs = self.processor(text=list(prompts), images=[list(i) for i in images], return_tensors="pt",
                                padding=True).to(self.device, dtype=self.dtype)
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=self.spec.max_new_tokens,
                                         num_beams=self.spec.num_beams, do_sample=False)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]  # left padding: every prompt ends at the same column
        texts = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        return [Generation(_first_line(t), p) for t, p in zip(texts, prompts)]


def _first_line(text: str) -> str:
    """A chat model's answer, without the chatter that may follow it on later lines."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""
