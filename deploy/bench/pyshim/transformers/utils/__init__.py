"""transformers.utils, as far as peft imports it."""


class PushToHubMixin:
    """peft's configs and models inherit it; pushing to a hub is not something this check does."""

    def push_to_hub(self, *a, **k):
        raise RuntimeError("push_to_hub: not provided by the pyshim stand-in")


def cached_file(*a, **k):
    raise RuntimeError("transformers.utils.cached_file: not provided by the pyshim stand-in")


# File names diffusers' pipeline loader compares against (transformers' own, as it defines them).
FLAX_WEIGHTS_NAME = "flax_model.msgpack"
SAFE_WEIGHTS_NAME = "model.safetensors"
WEIGHTS_NAME = "pytorch_model.bin"
