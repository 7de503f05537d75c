"""BLIP (Li et al. 2022) as a retrieval-augmented generator: captioning or VQA, from a local folder or a hub id.

Retrieved text goes in the only way BLIP accepts text: the captioner continues a text prefix (conditional
captioning), so the neighbours' captions open the prefix it continues; the VQA model reads one text, so they
precede the question. BLIP was not trained on such prompts: the reports measure whether they help.
"""
from __future__ import annotations

from itertools import groupby

import torch

from ravlm_core.errors import UserError
from ravlm_core.generators import (
    Generation,
    GeneratorSpec,
    Request,
    blip_task,
    generator_tag,
    model_folder,
    torch_dtype,
)
from ravlm_core.generators.prompts import context_block, load_template, render

# BLIP's text side is BERT: 512 positions; the image takes none of them.
MAX_PROMPT_TOKENS = 512


class BlipGenerator:
    """`BlipForConditionalGeneration` (captions) or `BlipForQuestionAnswering` (VQA): one folder holds one."""

    def __init__(self, spec: GeneratorSpec, device: str = "cpu"):
        from transformers import AutoConfig, BlipForConditionalGeneration, BlipForQuestionAnswering, BlipProcessor

        folder = model_folder(spec)
        config = AutoConfig.from_pretrained(folder)
        if config.model_type != "blip":
            raise UserError(f"{spec.model} is a {config.model_type!r} model, not BLIP: use --generator vlm:... for "
                            f"chat VLMs")
        self.task = blip_task(str(folder))
        model_class = BlipForQuestionAnswering if self.task == "vqa" else BlipForConditionalGeneration
        self.model = model_class.from_pretrained(folder, dtype=torch_dtype(spec, device), use_safetensors=True)
        self.model.eval().requires_grad_(False).to(device)
        self.processor = BlipProcessor.from_pretrained(folder)
        self.processor.tokenizer.padding_side = "right"  # BLIP's text positions are absolute
        self.spec, self.device = spec, device
        self.dtype = torch_dtype(spec, device)
        self.template = load_template("blip", spec.prompt, self.task)
        self.tag = generator_tag(spec)

    def generate(self, requests: list[Request], task: str) -> list[Generation]:
        """Captions (or answers) for a batch; prompts of one token length run together.

        BLIP pads on the right and its generate() drops each prompt's last token as if it were [SEP], and its VQA
        decoder attends to padded question positions, so mixed lengths in one batch would change the outputs:
        grouping by length keeps batched output identical to one-at-a-time.
        """
        if task != self.task:
            raise UserError(f"{self.spec.model} is a BLIP {self.task} model; for {task} use a "
                            f"{'BlipForQuestionAnswering' if task == 'vqa' else 'BlipForConditionalGeneration'} folder")
        prompts = [render(self.template, context_block("blip", r.context, task), r.question) for r in requests]
        ids = [self.processor.tokenizer(p, truncation=True, max_length=MAX_PROMPT_TOKENS)["input_ids"] for p in prompts]
        out: list[Generation | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: len(ids[i]))
        for _, group in groupby(order, key=lambda i: len(ids[i])):
            group = list(group)
            texts = self._generate([requests[i].image for i in group], [prompts[i] for i in group])
            for i, text in zip(group, texts):
                out[i] = Generation(text, prompts[i])
        return out

    def _generate(self, images: list, prompts: list[str]) -> list[str]:
        inputs = self.processor(images=images, text=prompts, return_tensors="pt", padding=True, truncation=True,
                                max_length=MAX_PROMPT_TOKENS).to(self.device, dtype=self.dtype)
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=self.spec.max_new_tokens,
                                         num_beams=self.spec.num_beams, do_sample=False)
        if self.task == "caption":
            # The captioner's output repeats the prefix (all but its [SEP]); keep what it added.
            output = output[:, inputs["input_ids"].shape[1] - 1:]
        return [text.strip() for text in self.processor.batch_decode(output, skip_special_tokens=True)]
