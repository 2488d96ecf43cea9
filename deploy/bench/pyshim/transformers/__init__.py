"""A stand-in for the few names peft 0.13 imports from transformers at import time, so that peft's LoRA
code can run on a diffusers UNet where transformers is not installed (Debian 12 does not package it).
It is not transformers: it has no text models, and anything that would need one fails by name.
Its dist-info says 4.34.0+pyshim, the least diffusers 0.31 accepts before it turns its peft backend on
(USE_PEFT_BACKEND). Nothing here takes part in a UNet's forward or in loading its LoRA weights: peft only
asks whether a module is a PreTrainedModel or a Conv1D, and a diffusers UNet holds neither.
Verification only (deploy/bench/lora_roundtrip.py)."""
import torch as _torch

__version__ = "4.34.0+pyshim"


class PreTrainedModel(_torch.nn.Module):
    """Only for isinstance checks: no diffusers model is one."""


class BloomPreTrainedModel(PreTrainedModel):
    pass


class _NoTextModels:
    """The Auto* classes peft names; there are no transformers models here to build."""

    @classmethod
    def from_pretrained(cls, *a, **k):
        raise RuntimeError(f"transformers.{cls.__name__}: the pyshim stand-in has no transformers models")

    from_config = from_pretrained


def _no_models(name):
    return type(name, (_NoTextModels,), {})


AutoModel = _no_models("AutoModel")
AutoModelForCausalLM = _no_models("AutoModelForCausalLM")
AutoModelForQuestionAnswering = _no_models("AutoModelForQuestionAnswering")
AutoModelForSeq2SeqLM = _no_models("AutoModelForSeq2SeqLM")
AutoModelForSequenceClassification = _no_models("AutoModelForSequenceClassification")
AutoModelForTokenClassification = _no_models("AutoModelForTokenClassification")
AutoTokenizer = _no_models("AutoTokenizer")
# diffusers.models.lora names these for isinstance checks on a pipeline's text encoder (none here).
CLIPTextModel = _no_models("CLIPTextModel")
CLIPTextModelWithProjection = _no_models("CLIPTextModelWithProjection")
# StableDiffusionPipeline's module and the loaders it mixes in (ip_adapter, textual_inversion) name these
# for type hints and isinstance checks; the check builds the pipeline with text_encoder=None.
CLIPImageProcessor = _no_models("CLIPImageProcessor")
CLIPTokenizer = _no_models("CLIPTokenizer")
CLIPVisionModelWithProjection = _no_models("CLIPVisionModelWithProjection")
PreTrainedTokenizer = _no_models("PreTrainedTokenizer")
# The safety checker's module subclasses PreTrainedModel with these (built only with a safety checker).
CLIPConfig = _no_models("CLIPConfig")
CLIPVisionModel = _no_models("CLIPVisionModel")
# diffusers.loaders.single_file_utils imports this when transformers is present (single-file loading only).
AutoImageProcessor = _no_models("AutoImageProcessor")

from . import integrations, modeling_outputs, pytorch_utils, utils  # noqa: E402,F401
