"""Random-weight BLIP and SmolVLM-style (Idefics3) checkpoints built offline from configs, for tests and benchmarks."""
from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipForQuestionAnswering,
    BlipImageProcessor,
    BlipProcessor,
    GPT2Tokenizer,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessor,
    Idefics3Processor,
)

# Captions, questions and common words, so ordinary English tokenises into word pieces, not unknown tokens.
_CORPUS = """\
a red circle. a green square. a blue triangle. a yellow star. a black rectangle on a white background.
a small red circle next to a large blue square. two green triangles and one yellow circle.
what color is the shape? what shape is in the image? is there a blue triangle? is there a red circle?
how many shapes are there? is the circle red? does the image contain a square? which shape is the largest?
yes. no. zero one two three four five six seven eight nine ten. 0 1 2 3 4 5 6 7 8 9 10 11 12 20 100.
a photo of a dog on the grass. a picture of a cat sitting on a chair. a man riding a bike down the street.
a woman holding an umbrella in the rain. a group of people standing in front of a building.
a plate of food with a fork and a knife. a car parked near a tree. a bird flying in the blue sky.
the quick brown fox jumps over the lazy dog. there is a train at the station. the boy is playing with a ball.
User: describe this image. Assistant: it shows a purple ellipse and an orange hexagon.
the answer is yes. the answer is no. the color is gray. the shape is round. it is not a circle.
the of and to in is it that this for on with as at by from or an be are was were has have had
not but all any can will would could should about into over under up down out left right top bottom
left side right side middle center corner edge background foreground object objects thing things
color colour colors red green blue yellow orange purple pink brown black white gray grey dark light bright
shape shapes circle square triangle rectangle star ellipse oval hexagon pentagon diamond line lines dot dots
big small large tiny little long short tall wide narrow round flat empty full same different other
image images picture pictures photo photos scene view frame question answer caption describe show shows
who what where when why how which whose many much more most less few some every each both either neither
person people man woman men women child children boy girl dog dogs cat cats horse bird car bus truck
tree trees grass sky water street road house building room table chair bed window door wall floor
there here then than very also only just still again once near far next between behind inside outside
one two three four five six seven eight nine ten first second third last number numbers count
do does did done is are was were be been being has have had get got make made see seen look looks
i you he she we they me him her us them my your his its our their
"""


def _corpus() -> list[str]:
    """The corpus lines as written and with a capital first letter (byte-level BPE is case-sensitive)."""
    lines = _CORPUS.splitlines()
    return lines + [line.capitalize() for line in lines]


def _pad_vocab(vocab: dict[str, int], size: int, filler: str) -> dict[str, int]:
    """Fill the vocab up to `size` with never-produced entries, as real checkpoints reserve ids ([unused0]...).

    Why: "bench" copies real vocab sizes so embedding and lm_head cost match real models, while a
    tiny corpus yields far fewer pieces; filler names contain brackets, so no merge or word-piece reaches them.
    """
    vocab = dict(vocab)
    for i in range(size - len(vocab)):
        vocab[filler.format(i)] = len(vocab)
    if len(vocab) != size:
        raise ValueError(f"the corpus gives {len(vocab)} pieces, more than the {size} asked for")
    return vocab


def _bert_tokenizer(vocab_size: int) -> BertTokenizer:
    """A lower-casing WordPiece tokenizer like BLIP's: BERT specials plus [DEC] (decoder bos) and [ENC].

    WordPieceTrainer breaks ties between equally frequent pairs in hash order, so its vocab changes from
    process to process; the vocab is built directly instead: every corpus word whole (split and lower-cased
    by BERT's own normalizer and pre-tokenizer), plus each character alone and as "##x", so any other
    word still splits into known pieces and never becomes [UNK].
    """
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]"]
    normalizer, splitter = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = {w for line in _corpus() for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(line))}
    alphanumerics = string.ascii_lowercase + string.digits
    pieces = words | set(alphanumerics + string.punctuation) | {"##" + c for c in alphanumerics}
    vocab = _pad_vocab({t: i for i, t in enumerate(specials + sorted(pieces))}, vocab_size, "[unused{}]")
    # transformers 5 builds the fast tokenizer itself from a vocab dict (no vocab.txt round trip).
    return BertTokenizer(vocab=vocab, bos_token="[DEC]", extra_special_tokens=["[ENC]"])


_VLM_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>", "<global-img>"
]


def _byte_bpe_tokenizer(vocab_size: int) -> GPT2Tokenizer:
    """A byte-level BPE tokenizer like SmolVLM's (GPT-2 style), trained on the corpus: any text round-trips.

    Unlike WordPiece training, this is the same from run to run: the fixed 256-byte alphabet orders the ids.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=_VLM_SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_corpus(), trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = _pad_vocab(model["vocab"], vocab_size, "<reserved_{}>")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return GPT2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        extra_special_tokens=_VLM_SPECIALS[3:],
    )


# Shapes per size, as data. "bench" copies real checkpoints: BLIP-base (the BlipConfig defaults, 384 px) and
# SmolVLM-256M (SigLIP-base/16 at 512 px, pixel shuffle 4, SmolLM2-135M text). Image splitting is always off.
_BLIP_SIZES = {
    "tiny": {
        "vocab": 1000,
        "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       image_size=64, patch_size=16),
        "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=128),
    },
    "bench": {"vocab": 30524, "vision": {}, "text": {}},
}
_VLM_SIZES = {
    "tiny": {
        "vocab": 1000,
        "scale_factor": 2,
        "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       image_size=64, patch_size=16),
        "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=512),
    },
    "bench": {
        "vocab": 49280,
        "scale_factor": 4,
        "vision": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       image_size=512, patch_size=16),
        "text": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                     num_key_value_heads=3, max_position_embeddings=8192),
    },
}


def _size(sizes: dict, size: str) -> dict:
    if size not in sizes:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(sizes)}")
    return sizes[size]


def make_blip(folder: Path, task: str, size: str = "tiny", seed: int = 0) -> Path:
    """Save a random BLIP captioner ("caption") or VQA model ("vqa") with its BlipProcessor into `folder`.

    Parameters (measured): tiny caption 106,280 and vqa 168,104 (< 1 MB saved); bench caption 223,971,644
    (BLIP-base) and vqa 361,230,140 (a second BERT-base, the question encoder), about 0.9 and 1.4 GB in fp32.

    Args:
        folder: where to save; created if missing.
        task: "caption" (BlipForConditionalGeneration) or "vqa" (BlipForQuestionAnswering).
        size: "tiny" (a few hundred KB, for tests) or "bench" (BLIP-base shapes, for throughput).
        seed: torch seed; the same arguments give the same weights.
    Returns:
        `folder`, loadable with BlipProcessor / BlipFor*.from_pretrained.
    Raises:
        ValueError: unknown task or size.
    """
    model_class = {"caption": BlipForConditionalGeneration, "vqa": BlipForQuestionAnswering}.get(task)
    if model_class is None:
        raise ValueError(f"unknown task {task!r}; expected 'caption' or 'vqa'")
    spec = _size(_BLIP_SIZES, size)
    tokenizer = _bert_tokenizer(spec["vocab"])
    ids = tokenizer.convert_tokens_to_ids
    # BLIP generate starts from bos ([DEC]) and stops at sep; its config ids must be this tokenizer's.
    text = dict(spec["text"], vocab_size=len(tokenizer), pad_token_id=ids("[PAD]"), bos_token_id=ids("[DEC]"),
                eos_token_id=ids("[SEP]"), sep_token_id=ids("[SEP]"))
    # BlipVisionConfig initialises with std 1e-10 (made for loading real weights): random image features would
    # then be ~0 whatever the image, so captions and answers could not depend on it.
    vision = dict(spec["vision"], initializer_range=0.02)
    config = BlipConfig(text_config=text, vision_config=vision)
    torch.manual_seed(seed)
    model = model_class(config)
    side = config.vision_config.image_size
    processor = BlipProcessor(BlipImageProcessor(size={"height": side, "width": side}), tokenizer)
    folder = Path(folder)
    model.save_pretrained(folder)  # safetensors by default; never pickle
    processor.save_pretrained(folder)
    return folder


# SmolVLM's template: "<|im_start|>User:<image>question<end_of_utterance>\nAssistant:". Bos comes from the
# template, not the tokenizer (GPT-2 style adds none), so prompts never carry two.
_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}"
    "{% else %}"
    "{{ ':' if message['content'][0]['type'] == 'image' else ': ' }}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% elif part['type'] == 'image' %}{{ '<image>' }}{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "<end_of_utterance>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def make_vlm(folder: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Save a random SmolVLM-style chat VLM (Idefics3 + Llama) with its processor and chat template into `folder`.

    Parameters (measured): tiny 128,960 (< 1 MB saved); bench 256,484,928, SmolVLM-256M's shapes, about 1 GB in fp32.

    Args:
        folder: where to save; created if missing.
        size: "tiny" (64 px, 4 tokens per image, for tests) or "bench" (512 px, 64 tokens per image).
        seed: torch seed; the same arguments give the same weights.
    Returns:
        `folder`, loadable with AutoProcessor / AutoModelForImageTextToText.from_pretrained. Set
        `processor.tokenizer.padding_side = "left"` before batched generation.
    Raises:
        ValueError: unknown size.
    """
    spec = _size(_VLM_SIZES, size)
    tokenizer = _byte_bpe_tokenizer(spec["vocab"])
    ids = tokenizer.convert_tokens_to_ids
    vision, scale = spec["vision"], spec["scale_factor"]
    # Pixel shuffle folds scale x scale patches into one token: (image/patch)^2 / scale^2 tokens per image.
    image_seq_len = (vision["image_size"] // vision["patch_size"]) ** 2 // scale**2
    special = dict(pad_token_id=ids("<|endoftext|>"), bos_token_id=ids("<|im_start|>"),
                   eos_token_id=ids("<end_of_utterance>"))
    config = Idefics3Config(
        vision_config=vision,
        text_config=dict(spec["text"], model_type="llama", vocab_size=len(tokenizer), **special),
        scale_factor=scale,
        image_token_id=ids("<image>"),
        pad_token_id=special["pad_token_id"],  # else Idefics3Config keeps Llama-3's 128002
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    model.generation_config.update(**special)
    # Splitting off: every image is squared to the vision tower's size, so it is always image_seq_len tokens.
    side = {"longest_edge": vision["image_size"]}
    image_processor = Idefics3ImageProcessor(size=side, max_image_size=side, do_image_splitting=False)
    processor = Idefics3Processor(image_processor, tokenizer, image_seq_len=image_seq_len, chat_template=_CHAT_TEMPLATE)
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
