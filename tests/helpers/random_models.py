"""Random-weight BLIP and chat VLM checkpoints (SmolVLM / Idefics3, LLaVA, Qwen2-VL) built offline from configs, for
tests and benchmarks."""
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
    CLIPImageProcessor,
    GPT2Tokenizer,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessor,
    Idefics3Processor,
    LlamaTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    Qwen2Tokenizer,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
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


def _train_bpe(vocab_size: int, specials: list[str], pre_tokenizer, alphabet: list[str]) -> tuple[dict, list]:
    """A BPE vocab (specials first, padded to `vocab_size`) and merges, trained on the corpus.

    Unlike WordPiece training, this is the same from run to run: the fixed alphabet orders the ids.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet)
    tok.train_from_iterator(_corpus(), trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = _pad_vocab(model["vocab"], vocab_size, "<reserved_{}>")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return vocab, merges


def _byte_level_bpe(vocab_size: int, specials: list[str]) -> tuple[dict, list]:
    """GPT-2 style byte-level BPE (SmolVLM, Qwen2): any text round-trips through the 256-byte alphabet."""
    pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return _train_bpe(vocab_size, specials, pre_tokenizer, pre_tokenizers.ByteLevel.alphabet())


def _byte_bpe_tokenizer(vocab_size: int) -> GPT2Tokenizer:
    """A byte-level BPE tokenizer like SmolVLM's (GPT-2 style), trained on the corpus: any text round-trips."""
    vocab, merges = _byte_level_bpe(vocab_size, _VLM_SPECIALS)
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


# LLaVA and Qwen2-VL come in "tiny" only, with make_vlm's tiny text model and vocab size.
_TINY_TEXT, _TINY_VOCAB = _VLM_SIZES["tiny"]["text"], _VLM_SIZES["tiny"]["vocab"]

# llava-hf/llava-1.5-7b-hf's template (without its {% generation %} markers): images first, then the text.
_LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}"
    "{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def _llama_tokenizer(vocab_size: int) -> LlamaTokenizer:
    """A SentencePiece-style BPE tokenizer like LLaVA-1.5's Llama one: "▁" marks spaces, unknown characters fall
    back to <0xNN> byte pieces, and the tokenizer (not the chat template) puts <s> first. <pad> and <image> are
    added specials, as llava-hf adds them."""
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"] + [f"<0x{b:02X}>" for b in range(256)]
    alphabet = sorted(set(string.ascii_letters + string.digits + string.punctuation) | {"▁"})
    splitter = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    vocab, merges = _train_bpe(vocab_size, specials, splitter, alphabet)
    return LlamaTokenizer(vocab=vocab, merges=merges, pad_token="<pad>", extra_special_tokens=["<image>"],
                          add_bos_token=True)


def make_llava(folder: Path, seed: int = 0) -> Path:
    """Save a tiny random LLaVA-1.5-style chat VLM (CLIP vision tower + Llama) with its processor into `folder`.

    64 px images in 16 px patches: 16 patch features plus CLS, and the "default" feature strategy drops CLS, so
    every image is 16 <image> tokens (the processor expands each <image> of the chat template to that).

    Args:
        folder: where to save; created if missing.
        seed: torch seed; the same arguments give the same weights.
    Returns:
        `folder`, loadable with AutoProcessor / AutoModelForImageTextToText.from_pretrained.
    """
    tokenizer = _llama_tokenizer(_TINY_VOCAB)
    ids = tokenizer.convert_tokens_to_ids
    side, patch = 64, 16
    special = dict(pad_token_id=ids("<pad>"), bos_token_id=ids("<s>"), eos_token_id=ids("</s>"))
    vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, image_size=side, patch_size=patch, projection_dim=32)
    config = LlavaConfig(
        vision_config=vision,
        text_config=dict(_TINY_TEXT, model_type="llama", vocab_size=len(tokenizer), **special),
        image_token_index=ids("<image>"),
        image_seq_length=(side // patch) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.update(**special)
    # CLIP preprocessing: shortest edge to 64, centre crop 64 x 64, so every image has the same token count.
    image_processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    processor = LlavaProcessor(image_processor, tokenizer, patch_size=patch, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=_LLAVA_CHAT_TEMPLATE)
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


_QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]

# Qwen/Qwen2-VL-2B-Instruct's template: a default system turn, and each image as
# <|vision_start|><|image_pad|><|vision_end|> where it stands among the texts.
_QWEN2VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_qwen2vl(folder: Path, seed: int = 0) -> Path:
    """Save a tiny random Qwen2-VL chat VLM (ViT with 2x2 patch merger + Qwen2 with M-RoPE) with its processor.

    Images are resized (aspect kept) to at most 32 x 32 px in multiples of 16 (8 px patches, merged 2 x 2): a
    square image is a 4 x 4 patch grid (`image_grid_thw` [1, 4, 4]) and 4 <|image_pad|> tokens.

    Args:
        folder: where to save; created if missing.
        seed: torch seed; the same arguments give the same weights.
    Returns:
        `folder`, loadable with AutoProcessor / AutoModelForImageTextToText.from_pretrained.
    """
    vocab, merges = _byte_level_bpe(_TINY_VOCAB, _QWEN_SPECIALS)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|im_end|>",
                               extra_special_tokens=_QWEN_SPECIALS[1:])
    ids = tokenizer.convert_tokens_to_ids
    patch, merge, temporal = 8, 2, 2
    special = dict(pad_token_id=ids("<|endoftext|>"), bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"))
    head_dim = _TINY_TEXT["hidden_size"] // _TINY_TEXT["num_attention_heads"]
    # M-RoPE splits a head's head_dim / 2 rotary frequencies into temporal, height and width sections ([2, 1, 1]).
    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [head_dim // 4, head_dim // 8, head_dim // 8]}
    vision = dict(depth=2, embed_dim=32, num_heads=4, mlp_ratio=2, hidden_size=_TINY_TEXT["hidden_size"],
                  patch_size=patch, spatial_merge_size=merge, temporal_patch_size=temporal)
    config = Qwen2VLConfig(
        text_config=dict(_TINY_TEXT, vocab_size=len(tokenizer), rope_parameters=rope, **special),
        vision_config=vision,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.update(**dict(special, eos_token_id=[ids("<|im_end|>"), ids("<|endoftext|>")]))
    pixels = dict(patch_size=patch, merge_size=merge, temporal_patch_size=temporal,
                  min_pixels=(patch * merge) ** 2, max_pixels=32 * 32)
    processor = Qwen2VLProcessor(Qwen2VLImageProcessor(**pixels), tokenizer, Qwen2VLVideoProcessor(**pixels),
                                 chat_template=_QWEN2VL_CHAT_TEMPLATE)
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def make_bert(folder: Path, hidden: int = 32, layers: int = 2) -> Path:
    """A tiny random BERT encoder saved as sentence-transformers ships all-MiniLM-L6-v2: BertModel weights
    (safetensors, no MLM head) and a WordPiece tokenizer; SmallCap warm-starts its decoder from such a folder."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    tokenizer = _bert_tokenizer(vocab_size=1024)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=hidden * 2, max_position_embeddings=256)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)
