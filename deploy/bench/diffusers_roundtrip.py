"""Does a dpod checkpoint load straight into diffusers, and compute what dpod computes?

    PYTHONPATH=/opt/ref/diffusers/src:/opt/ref/huggingface_hub/src:deploy/bench/pyshim \
        /usr/bin/python3 deploy/bench/diffusers_roundtrip.py CHECKPOINT_DIR [--dpo-tool build/bin/dpo-tool]

Loads CHECKPOINT_DIR (diffusion_pytorch_model.safetensors + config.json, as every dpod checkpoint holds)
with UNet2DConditionModel.from_pretrained, refusing missing or unexpected weights; runs it on random
inputs; runs `dpo-tool forward` on the same inputs and weights; and exits 1 unless the two outputs agree
within --atol (1e-5). deploy/bench/README.md says how to get diffusers without pip.
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
    with torch.no_grad():
        ref = model(x, t, ehs).sample

    with tempfile.TemporaryDirectory() as tmp:
        inputs, out = os.path.join(tmp, "inputs.safetensors"), os.path.join(tmp, "out.safetensors")
        save_f32(inputs, {"sample": x, "timestep": t, "encoder_hidden_states": ehs})
        subprocess.run([args.dpo_tool, "forward", "--config", os.path.join(args.checkpoint, "config.json"),
                        "--weights", os.path.join(args.checkpoint, "diffusion_pytorch_model.safetensors"),
                        "--inputs", inputs, "--out", out], check=True)
        from safetensors.torch import load_file
        got = load_file(out)["sample"]
    diff = (got - ref).abs().max().item()
    ok = got.shape == ref.shape and diff <= args.atol
    print(f"dpo-tool forward vs diffusers: largest absolute difference {diff:.2e} "
          f"(atol {args.atol:g}): {'same' if ok else 'DIFFERENT'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
