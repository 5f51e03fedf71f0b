"""A model's logits for a batch of images: the one forward pass that training, evaluation and export share.

Torch only, and no stage: ``metrics``, ``distill`` and ``export`` all import it.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import ConfigError


def logits_of(output) -> torch.Tensor:
    """Models may return logits or (logits, aux); the first tensor is the main head."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if isinstance(output, dict) and "out" in output:
        return output["out"]
    raise ConfigError(
        f"The model returned {type(output).__name__}; expected a logits tensor N x K x H x W, "
        "a (logits, ...) tuple, or a dict with 'out'. Wrap the model so forward() returns logits."
    )


def padded_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Logits for images of any size: pad bottom/right to the encoder's stride, then crop back.

    smp models reject sizes that are not multiples of their output stride (evaluation images
    are often full frames such as 360x480); zero padding is the mean colour after
    normalisation. The logits are cropped by the same fraction, so they align with the input.
    Models without ``encoder.output_stride`` run unpadded.
    """
    multiple = int(getattr(getattr(model, "encoder", None), "output_stride", 1) or 1)
    # Plain ints: under ONNX tracing, sizes can be traced tensors, and the pad is a constant of the graph.
    h, w = int(images.shape[-2]), int(images.shape[-1])
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return logits_of(model(images))
    logits = logits_of(model(nn.functional.pad(images, (0, pw, 0, ph))))
    lh, lw = int(logits.shape[-2]), int(logits.shape[-1])
    return logits[..., : round(lh * h / (h + ph)), : round(lw * w / (w + pw))]
