"""Does a dpod LoRA checkpoint load the way a diffusers pipeline loads LoRA weights, and compute what dpod computes?

    PYTHONPATH=/opt/ref/diffusers/src:/opt/ref/huggingface_hub/src:/opt/ref/peft/src:/opt/ref/accelerate/src:deploy/bench/pyshim \
        /usr/bin/python3 deploy/bench/lora_roundtrip.py LORA --config CONFIG --weights BASE \
        [--dpo-tool build/bin/dpo-tool] [--size 8] [--atol 1e-5] [--expect INPUTS OUTPUTS]

LORA is a checkpoint directory holding pytorch_lora_weights.safetensors (what a LoRA job writes) or that
file itself; CONFIG and BASE are the base UNet's config.json and weights (the job's model.config and
model.weights: a LoRA checkpoint does not copy the base).

It builds the base UNet with diffusers (UNet2DConditionModel.from_config, then the base weights, refusing
any missing or unexpected one), puts it
in a StableDiffusionPipeline, or a StableDiffusionXLPipeline for an SDXL-shaped config (a tiny random VAE,
no text encoders, tokenizers or safety checker: the file holds UNet adapters only) and calls the
pipeline's own load_lora_weights(dir, weight_name=..., adapter_name="dpod") -- the pipeline's LoRA loader
mixin -> lora_state_dict -> load_lora_into_unet -> UNet2DConditionModel.load_attn_procs -> peft's
inject_adapter_in_model and set_peft_model_state_dict. It then refuses, by name:
  - any warning diffusers logs while loading (it logs peft's missing and unexpected LoRA keys);
  - any file tensor that did not become a peft lora_A / lora_B weight equal to it, and any peft LoRA
    weight the file did not fill;
  - any adapter scale other than 1 (diffusers reads a file without alphas at alpha = rank).
It runs the adapted UNet on random inputs, runs `dpo-tool forward --lora` on the same inputs, and exits 1
unless the two outputs agree within --atol, the adapters change the output by more than --atol (else the
comparison shows nothing), and disabling them (pipe.disable_lora()) gives the base's output back. With
--expect it also requires the adapted UNet to give OUTPUTS on INPUTS (the fixtures' numbers from real
diffusers + peft), which checks the stand-in setup itself.
peft needs transformers at import; deploy/bench/README.md says how this is set up without either.
"""
import argparse
import logging
import os
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from diffusers_roundtrip import save_f32  # noqa: E402

from diffusers import (AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline,  # noqa: E402
                       UNet2DConditionModel)
from diffusers.utils import USE_PEFT_BACKEND  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

LORA_FILE = "pytorch_lora_weights.safetensors"
ADAPTER = "dpod"


class _Warnings(logging.Handler):
    """Collects what diffusers logs at WARNING or above while the adapters load."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def base_unet(config, weights):
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config))
    bad = unet.load_state_dict(load_file(weights), strict=False)
    if bad.missing_keys or bad.unexpected_keys:
        raise SystemExit(f"the base weights do not fit the config: missing {bad.missing_keys[:5]}, "
                         f"unexpected {bad.unexpected_keys[:5]}")
    return unet.eval()


def pipeline_for(unet):
    """The pipeline a user of this UNet loads LoRA into: StableDiffusionXLPipeline for an SDXL-shaped one
    (text_time added conditioning), else StableDiffusionPipeline. The VAE is a tiny random one (never run):
    the pipeline only needs one to exist. There are no text encoders, so the text-encoder half of
    load_lora_weights finds no text-encoder keys and does nothing, as for any UNet-only LoRA file."""
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=unet.config.in_channels)
    common = dict(vae=vae, unet=unet, tokenizer=None, text_encoder=None, image_encoder=None,
                  feature_extractor=None, scheduler=DDPMScheduler(steps_offset=1, clip_sample=False))
    if unet.config.addition_embed_type == "text_time":
        return StableDiffusionXLPipeline(text_encoder_2=None, tokenizer_2=None, add_watermarker=False, **common)
    return StableDiffusionPipeline(safety_checker=None, requires_safety_checker=False, **common)


def check_adapters(unet, lora):
    """The file's tensors against the peft weights load_lora_weights made; returns (problems, layers, ranks)."""
    from peft.tuners.lora import LoraLayer
    want = {}
    for name, t in lora.items():
        if not name.startswith("unet.") or not name.endswith((".lora.down.weight", ".lora.up.weight")):
            return [f"{name}: not a diffusers UNet LoRA tensor"], 0, set()
        module, kind = name[len("unet."):].rsplit(".lora.", 1)
        peft_kind = "lora_A" if kind == "down.weight" else "lora_B"
        want[f"{module}.{peft_kind}.{ADAPTER}.weight"] = (name, t)
    have = {n: p for n, p in unet.named_parameters() if ".lora_" in n}
    problems = [f"{src} was not loaded into the UNet (no {n})" for n, (src, _) in want.items() if n not in have]
    problems += [f"{n}: a peft LoRA weight the file did not fill" for n in have if n not in want]
    for n, (src, t) in want.items():
        if n in have and not torch.equal(have[n].detach(), t):
            problems.append(f"{src}: loaded as {n} with different values or shape")
    layers, ranks = 0, set()
    for name, m in unet.named_modules():
        if isinstance(m, LoraLayer) and ADAPTER in m.scaling:
            layers += 1
            ranks.add(m.r[ADAPTER])
            if m.scaling[ADAPTER] != 1.0:
                problems.append(f"{name}: adapter scale {m.scaling[ADAPTER]}, not 1 (alpha = rank)")
    return problems, layers, ranks


def random_inputs(cfg, size):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, cfg.in_channels, size, size, generator=g)
    t = torch.tensor([10.0, 500.0])
    ehs = torch.randn(2, 7, cfg.cross_attention_dim, generator=g)
    added = None
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        res = 8.0 * size
        added = {"text_embeds": torch.randn(2, pooled, generator=g),
                 "time_ids": torch.tensor([[res, res, 0.0, 0.0, res, res]] * 2)}
    return x, t, ehs, added


def matches_expected(unet, files, atol):
    """The adapted UNet against outputs someone else computed (diffusers + peft, for the fixtures)."""
    inputs, outputs = (load_file(f) for f in files)
    t = inputs.get("timestep_f32", inputs.get("timestep"))
    with torch.no_grad():
        added = {k: inputs[k] for k in ("text_embeds", "time_ids") if k in inputs} or None
        got = unet(inputs["sample"], t, inputs["encoder_hidden_states"], added_cond_kwargs=added).sample
    want = outputs["sample"]
    diff = (got - want).abs().max().item() if got.shape == want.shape else float("inf")
    print(f"diffusers + peft vs {files[1]}: largest absolute difference {diff:.2e} (atol {atol:g})")
    return diff <= atol


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("lora", help=f"a LoRA checkpoint directory, or its {LORA_FILE}")
    ap.add_argument("--config", required=True, help="the base UNet's config.json")
    ap.add_argument("--weights", required=True, help="the base UNet's weights (safetensors)")
    ap.add_argument("--dpo-tool", default="build/bin/dpo-tool")
    ap.add_argument("--size", type=int, default=8, help="latent height and width")
    ap.add_argument("--atol", type=float, default=1e-5)
    ap.add_argument("--expect", nargs=2, metavar=("INPUTS", "OUTPUTS"),
                    help="also require the diffusers + peft UNet to give OUTPUTS' sample on INPUTS' sample, "
                         "timestep(_f32), encoder_hidden_states (and SDXL's text_embeds, time_ids), e.g. the "
                         "tiny-sd fixture's, with its LoRA")
    args = ap.parse_args()

    if not USE_PEFT_BACKEND:
        print("diffusers has no peft backend here (peft and transformers >= 4.34 must both be importable, "
              "with their metadata): see deploy/bench/README.md")
        return 1
    path = os.path.join(args.lora, LORA_FILE) if os.path.isdir(args.lora) else args.lora
    lora_dir, weight_name = os.path.split(os.path.abspath(path))
    lora = load_file(path)

    unet = base_unet(args.config, args.weights)
    x, t, ehs, added = random_inputs(unet.config, args.size)
    with torch.no_grad():
        base = unet(x, t, ehs, added_cond_kwargs=added).sample

    pipe = pipeline_for(unet)
    warnings = _Warnings()
    logging.getLogger("diffusers").addHandler(warnings)
    pipe.load_lora_weights(lora_dir, weight_name=weight_name, adapter_name=ADAPTER)
    logging.getLogger("diffusers").removeHandler(warnings)
    problems = [f"diffusers warned: {m}" for m in warnings.messages]
    more, layers, ranks = check_adapters(pipe.unet, lora)
    problems += more
    if problems:
        print(f"{type(pipe).__name__}.load_lora_weights did not take {path} as it is:")
        for p in problems[:20]:
            print(f"  {p}")
        return 1
    print(f"{type(pipe).__name__}.load_lora_weights (peft backend) loaded {path}: {len(lora)} tensors into "
          f"{layers} LoRA layers, rank {sorted(ranks)}, scale 1; no missing or unexpected keys")

    with torch.no_grad():
        ref = pipe.unet(x, t, ehs, added_cond_kwargs=added).sample
        pipe.disable_lora()
        off = pipe.unet(x, t, ehs, added_cond_kwargs=added).sample
        pipe.enable_lora()

    with tempfile.TemporaryDirectory() as tmp:
        inputs, out = os.path.join(tmp, "inputs.safetensors"), os.path.join(tmp, "out.safetensors")
        tensors = {"sample": x, "timestep": t, "encoder_hidden_states": ehs}
        tensors.update(added or {})
        save_f32(inputs, tensors)
        subprocess.run([args.dpo_tool, "forward", "--config", args.config, "--weights", args.weights,
                        "--lora", path, "--inputs", inputs, "--out", out], check=True)
        got = load_file(out)["sample"]
    if args.expect and not matches_expected(pipe.unet, args.expect, args.atol):
        return 1
    effect = (ref - base).abs().max().item()
    off_diff = (off - base).abs().max().item()
    diff = (got - ref).abs().max().item() if got.shape == ref.shape else float("inf")
    print(f"the adapters change diffusers' output by up to {effect:.2e}; with them disabled it is the "
          f"base's to {off_diff:.2e}")
    print(f"dpo-tool forward --lora vs diffusers + peft: largest absolute difference {diff:.2e} "
          f"(atol {args.atol:g}): {'same' if diff <= args.atol else 'DIFFERENT'}")
    if effect <= args.atol:
        print("the adapters do not change the output beyond atol (zero up weights?): the comparison shows nothing")
        return 1
    return 0 if diff <= args.atol and off_diff <= args.atol else 1


if __name__ == "__main__":
    sys.exit(main())
