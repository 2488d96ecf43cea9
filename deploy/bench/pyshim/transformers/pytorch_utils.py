"""transformers.pytorch_utils, as far as peft imports it."""
import torch as _torch


class Conv1D(_torch.nn.Module):
    """GPT-2's transposed Linear. peft only checks isinstance; a diffusers UNet has none, and building
    one here is refused rather than imitated."""

    def __init__(self, *a, **k):
        raise RuntimeError("transformers.pytorch_utils.Conv1D: not provided by the pyshim stand-in")


ALL_LAYERNORM_LAYERS = [_torch.nn.LayerNorm]
