"""Does a dpod checkpoint load straight into diffusers, and compute what dpod computes?

    PYTHONPATH=/opt/ref/diffusers/src:/opt/ref/huggingface_hub/src:deploy/bench/pyshim \
        /usr/bin/python3 deploy/bench/diffusers_roundtrip.py CHECKPOINT_DIR [--dpo-tool build/bin/dpo-tool] \
        [--export [--variant fp16]]

Loads CHECKPOINT_DIR (diffusion_pytorch_model.safetensors + config.json, as every dpod checkpoint holds)
with UNet2DConditionModel.from_pretrained, refusing missing or unexpected weights; runs it on random
inputs; runs `dpo-tool forward` on the same inputs and weights; and exits 1 unless the two outputs agree
within --atol (1e-5). An SDXL-shaped config (addition_embed_type "text_time") also gets random pooled
text embeddings and time ids.

With --export it then runs `dpo-tool export CHECKPOINT_DIR TMP --pipeline [--variant fp16]` and loads the
result as a pipeline would: UNet2DConditionModel.from_pretrained(TMP, subfolder="unet"[, variant="fp16"])
(no missing or unexpected weights; every parameter equal to the checkpoint's, or to its float16 rounding
for fp16) and DDPMScheduler.from_pretrained(TMP, subfolder="scheduler"), whose alphas_cumprod must equal
those of the checkpoint's own scheduler_config.json when it has one. Exit 1 unless all of that holds.
deploy/bench/README.md says how to get diffusers without pip.
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile

import torch
from diffusers import UNet2DConditionModel


def save_f32(path, tensors):
    """Writes F32 tensors in the safetensors format (the writer is not part of the pure-Python shim)."""
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        data = t.detach().to(torch.float32).contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--dpo-tool", default="build/bin/dpo-tool")
    ap.add_argument("--size", type=int, default=8, help="latent height and width")
    ap.add_argument("--atol", type=float, default=1e-5)
    ap.add_argument("--export", action="store_true", help="also check what `dpo-tool export` writes")
    ap.add_argument("--variant", default="", help="with --export: fp16")
    args = ap.parse_args()

    model, info = UNet2DConditionModel.from_pretrained(args.checkpoint, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        print(f"from_pretrained did not take the weights as they are: {bad}")
        return 1
    model.eval()
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    print(f"diffusers loaded {args.checkpoint}: {params} parameters, no missing or unexpected weights")

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, cfg.in_channels, args.size, args.size, generator=g)
    t = torch.tensor([10.0, 500.0])
    ehs = torch.randn(2, 7, cfg.cross_attention_dim, generator=g)
    tensors = {"sample": x, "timestep": t, "encoder_hidden_states": ehs}
    added = None
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        res = 8.0 * args.size
        added = {"text_embeds": torch.randn(2, pooled, generator=g),
                 "time_ids": torch.tensor([[res, res, 0.0, 0.0, res, res]] * 2)}
        tensors.update(added)
    with torch.no_grad():
        ref = model(x, t, ehs, added_cond_kwargs=added).sample

    with tempfile.TemporaryDirectory() as tmp:
        inputs, out = os.path.join(tmp, "inputs.safetensors"), os.path.join(tmp, "out.safetensors")
        save_f32(inputs, tensors)
        subprocess.run([args.dpo_tool, "forward", "--config", os.path.join(args.checkpoint, "config.json"),
                        "--weights", os.path.join(args.checkpoint, "diffusion_pytorch_model.safetensors"),
                        "--inputs", inputs, "--out", out], check=True)
        from safetensors.torch import load_file
        got = load_file(out)["sample"]
    diff = (got - ref).abs().max().item()
    ok = got.shape == ref.shape and diff <= args.atol
    print(f"dpo-tool forward vs diffusers: largest absolute difference {diff:.2e} "
          f"(atol {args.atol:g}): {'same' if ok else 'DIFFERENT'}")
    if not ok:
        return 1
    return check_export(args, model) if args.export else 0


def check_export(args, model):
    """dpo-tool export's folder, loaded the way a pipeline loads its unet/ and scheduler/."""
    from diffusers import DDPMScheduler
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [args.dpo_tool, "export", args.checkpoint, tmp, "--pipeline"]
        if args.variant:
            cmd += ["--variant", args.variant]
        subprocess.run(cmd, check=True)
        kw = {"variant": args.variant} if args.variant else {}
        exported, info = UNet2DConditionModel.from_pretrained(tmp, subfolder="unet", output_loading_info=True,
                                                              torch_dtype=torch.float32, **kw)
        bad = {k: v for k, v in info.items() if v}
        if bad:
            print(f"from_pretrained did not take the export as it is: {bad}")
            return 1
        want = model.state_dict()
        worst = 0.0
        for name, p in exported.state_dict().items():
            w = want[name].to(torch.float16).to(torch.float32) if args.variant else want[name]
            worst = max(worst, (p.to(torch.float32) - w).abs().max().item())
        print(f"export{' (' + args.variant + ')' if args.variant else ''}: {len(want)} tensors, largest "
              f"difference from the checkpoint{' rounded to float16' if args.variant else ''} {worst:.2e}")
        sched = DDPMScheduler.from_pretrained(tmp, subfolder="scheduler")
        own = os.path.join(args.checkpoint, "scheduler_config.json")
        if os.path.exists(own):
            mine = DDPMScheduler.from_config(DDPMScheduler.load_config(own))
            if not torch.equal(sched.alphas_cumprod, mine.alphas_cumprod):
                print("the exported scheduler's alphas_cumprod differ from the checkpoint's")
                return 1
        print(f"scheduler: {type(sched).__name__}, {sched.config.num_train_timesteps} steps, "
              f"{sched.config.beta_schedule}, {sched.config.prediction_type}")
        return 0 if worst == 0.0 else 1


if __name__ == "__main__":
    sys.exit(main())
