#!/usr/bin/env python3
"""Python reference for dpod's step benchmark: one Diffusion-DPO training step with
diffusers' UNet2DConditionModel + AdamW on the CPU. It follows SalesforceAIResearch/DiffusionDPO
train.py (SD1.5 branch), but the VAE and text encoder are left out: latents and text embeddings
are random tensors built before timing.

Setup (diffusers comes from /opt/ref, never pip): see deploy/bench/README.md.

FLOP convention (the C benchmark must count the same way). F = the analytic forward FLOPs of
one UNet pass over the whole cat batch (2 x pairs images), summed over:
  Conv2d     2 * Cin * Cout * k_h * k_w * H_out * W_out / groups   per image
  Linear     2 * in_features * out_features                        per input row
  attention  2 * 2 * heads * Lq * Lk * head_dim (QK^T and AV)       per image
Elementwise ops, norms, softmax, bias adds, the loss and the optimizer are left out.
  FLOPs/step = 3 F (policy forward + backward, taken as 2 x forward) + 1 F (reference forward)
  GFLOP/s    = FLOPs/step / (seconds/step) / 1e9
"""
import argparse
import contextlib
import copy
import json
import os
import time

# The fixtures sit beside the checkout (../shared/fixtures), or where DPOD_FIXTURES says.
FIXTURES = os.environ.get("DPOD_FIXTURES") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "fixtures")

SHAPES = {
    # ../shared/fixtures/tiny-sd/config.json: 8x8 latents, 4 channels, cross_attention_dim 32
    "tiny": dict(config=os.path.join(FIXTURES, "tiny-sd", "config.json"), pairs=8, text_len=4),
    "bigger": dict(config=dict(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=[64, 128, 256],
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=32), pairs=4, text_len=77),
}

ap = argparse.ArgumentParser()
ap.add_argument("--shape", choices=SHAPES, default="tiny")
ap.add_argument("--steps", type=int, default=20)  # >= 1
ap.add_argument("--warmup", type=int, default=3)  # at least one is run
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--beta", type=float, default=5000.0)  # train.py --beta_dpo default
ap.add_argument("--gradient-checkpointing", action="store_true",
                help="unet.enable_gradient_checkpointing(), as train.py --gradient_checkpointing does")
# The same step elsewhere, beside dpo-bench's: --device cuda, --config a diffusers config.json (e.g.
# ../shared/fixtures/configs/sd15-unet/config.json) with --pairs and --text-len.
ap.add_argument("--device", default="cpu")
ap.add_argument("--config")
ap.add_argument("--pairs", type=int)
ap.add_argument("--text-len", type=int)
# train.py's --mixed_precision as accelerate runs it: the policy's forward under autocast (its weights,
# gradients and AdamW state fp32), the frozen reference cast to the half type, fp16 with a GradScaler.
ap.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
args = ap.parse_args()
# Debian's torch does its GEMMs in OpenBLAS (pthread build), whose pool torch.set_num_threads
# does not govern: pin it too, before torch loads it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads))

import resource  # noqa: E402
import sys  # noqa: E402

try:
    import torch  # noqa: E402
    import torch.nn.functional as F  # noqa: E402
    from diffusers import DDPMScheduler, UNet2DConditionModel  # noqa: E402
    from diffusers.models.attention_processor import Attention  # noqa: E402
except ImportError as e:
    # A benchmark, not a test: where torch or diffusers is missing there is nothing to set beside dpod.
    print(f"shape={args.shape} not measured ({e.name or e} is not importable; see deploy/bench/README.md)")
    sys.exit(0)

torch.set_num_threads(args.threads)
torch.set_flush_denormal(True)


def count_forward_flops(unet, *inputs):
    """Analytic forward FLOPs of one pass over `inputs` (see the module docstring)."""
    total = [0]
    q_len = {}

    def conv(m, i, o):
        k = m.kernel_size[0] * m.kernel_size[1]
        total[0] += 2 * m.in_channels * m.out_channels * k * o[0, 0].numel() // m.groups * o.shape[0]

    def linear(m, i, o):
        total[0] += 2 * m.in_features * m.out_features * (i[0].numel() // m.in_features)

    def attn_q(attn):  # to_q output: (B, Lq, heads * head_dim)
        return lambda m, i, o: q_len.__setitem__(attn, o.shape[1])

    def attn_k(attn):  # to_k output: (B, Lk, heads * head_dim); 2 matmuls of 2*Lq*Lk*inner
        return lambda m, i, o: total.__setitem__(0, total[0] + 2 * 2 * o.shape[0] * q_len[attn] * o.shape[1] * o.shape[2])

    hooks = []
    for m in unet.modules():
        if isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(conv))
        elif isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(linear))
        if isinstance(m, Attention):
            hooks.append(m.to_q.register_forward_hook(attn_q(m)))
            hooks.append(m.to_k.register_forward_hook(attn_k(m)))
    with torch.no_grad():
        unet(*inputs)
    for h in hooks:
        h.remove()
    return total[0]


shape = dict(SHAPES[args.shape])
for key, value in (("config", args.config), ("pairs", args.pairs), ("text_len", args.text_len)):
    if value is not None:
        shape[key] = value
dev = torch.device(args.device)
cfg = shape["config"]
if isinstance(cfg, str):
    with open(cfg) as f:
        cfg = json.load(f)
torch.manual_seed(0)
unet = UNet2DConditionModel.from_config(cfg).train().to(dev)
ref_unet = copy.deepcopy(unet).requires_grad_(False).eval()
half = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
if half is not None:
    ref_unet.to(half)
scaler = torch.cuda.amp.GradScaler() if args.precision == "fp16" else None


def autocast():
    return torch.autocast(dev.type, dtype=half) if half is not None else contextlib.nullcontext()


if args.gradient_checkpointing:
    unet.enable_gradient_checkpointing()
optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-5, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
# SD1.5 noise schedule
scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")

# The "data": winner and loser latents (cat along the batch, winners first) and one prompt per pair.
P, C, S = shape["pairs"], unet.config.in_channels, unet.config.sample_size
latents = torch.cat([torch.randn(P, C, S, S), torch.randn(P, C, S, S)]).to(dev)
text = torch.randn(P, shape["text_len"], unet.config.cross_attention_dim).to(dev)


def dpo_step():
    noise = torch.randn_like(latents)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (2 * P,), device=dev).long()
    timesteps = timesteps.chunk(2)[0].repeat(2)  # same noise and timestep for both halves of a pair
    noise = noise.chunk(2)[0].repeat(2, 1, 1, 1)
    noisy_latents = scheduler.add_noise(latents, noise, timesteps)
    encoder_hidden_states = text.repeat(2, 1, 1)
    target = noise

    with autocast():
        model_pred = unet(noisy_latents, timesteps, encoder_hidden_states).sample
    model_losses = (model_pred.float() - target).pow(2).mean(dim=[1, 2, 3])
    model_losses_w, model_losses_l = model_losses.chunk(2)
    model_diff = model_losses_w - model_losses_l
    with torch.no_grad(), autocast():
        ref_pred = ref_unet(noisy_latents, timesteps, encoder_hidden_states).sample.detach()
    with torch.no_grad():
        ref_losses = (ref_pred.float() - target).pow(2).mean(dim=[1, 2, 3])
        ref_losses_w, ref_losses_l = ref_losses.chunk(2)
        ref_diff = ref_losses_w - ref_losses_l
    inside_term = -0.5 * args.beta * (model_diff - ref_diff)
    loss = -1 * F.logsigmoid(inside_term).mean()

    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
    optimizer.zero_grad()  # train.py's default (torch 1.13: set_to_none=False)
    return loss.item()


fwd_flops = count_forward_flops(unet, latents, torch.zeros(2 * P, dtype=torch.long, device=dev), text.repeat(2, 1, 1))
step_flops = 4 * fwd_flops
params = sum(p.numel() for p in unet.parameters())

try:
    dpo_step()  # the first warmup step: where a precision the build cannot run fails
except RuntimeError as e:
    if half is None or dev.type != "cpu":
        raise
    # Debian's torch 1.13 refuses bf16 autocast's mixed dtypes in group_norm on the CPU.
    print(f"shape={args.shape} precision={args.precision} not measured (torch {torch.__version__} on the CPU: "
          f"{str(e).splitlines()[0][:160]})")
    sys.exit(0)
for _ in range(args.warmup - 1):
    dpo_step()
times = []
for _ in range(args.steps):
    t0 = time.perf_counter()
    loss = dpo_step()
    times.append(time.perf_counter() - t0)
dt = sum(times) / len(times)  # ms/step is the mean; min/median help on a busy machine

print(f"shape={args.shape} ms/step={dt * 1e3:.2f} samples/s={2 * P / dt:.2f} "
      f"(samples = images = 2 x {P} pairs) params={params} "
      f"GFLOP/s={step_flops / dt / 1e9:.2f} FLOPs/step={step_flops} (fwd={fwd_flops} x4) "
      f"min_ms={min(times) * 1e3:.2f} median_ms={sorted(times)[len(times) // 2] * 1e3:.2f} "
      f"threads={torch.get_num_threads()} steps={args.steps} warmup={args.warmup} "
      f"loss={loss:.4f} torch={torch.__version__} device={dev} "
      f"gradient_checkpointing={int(args.gradient_checkpointing)} precision={args.precision} "
      # ru_maxrss is in KiB on Linux: the process's peak resident memory, the interpreter included.
      f"peak_rss_mb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}"
      + (f" gpu_peak_mb={torch.cuda.max_memory_allocated(dev) / 2**20:.0f}" if dev.type == "cuda" else ""))
