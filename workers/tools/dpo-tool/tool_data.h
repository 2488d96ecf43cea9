/* The data subcommands of dpo-tool: each takes the subcommand's argv (argv[0] is the subcommand's name),
 * parses its own options, prints its own usage and errors (prefixed "dpo-tool NAME: ") and returns a
 * process exit status: 0 success, 1 failure, 2 usage error.
 *
 *   import   preference dataset from per-image latents, per-caption embeddings and Pick-a-Pic JSONL
 *   synth    the verifiable synthetic preference task
 *   sample   DDIM samples of a checkpoint on a dataset's prompts (needs the shim: tool_sample.c)
 *   export   a checkpoint as a diffusers UNet folder (tool_export.c)
 *
 * tool_data.c (import, synth) needs no torch and lives in the dpo_data_tool library; tool_sample.c is in
 * dpo_sample_tool, built only with the shim. */
#ifndef DPOD_TOOL_DATA_H
#define DPOD_TOOL_DATA_H

#include <stdint.h>

int tool_import_main(int argc, char **argv);
int tool_synth_main(int argc, char **argv);
int tool_sample_main(int argc, char **argv);
int tool_export_main(int argc, char **argv); /* tool_export.c, torch-free too */

/* One-line argument synopses and summaries, for dpo-tool's command table. */
#define TOOL_IMPORT_ARGS                                                                                   \
  "--latents F.safetensors... --embeddings F.safetensors... --pairs train.jsonl [--validation val.jsonl] " \
  "--out DIR [--pooled F.safetensors...] [--time-ids F.safetensors...] [--dtype f16|f32] [--shard-pairs N] "     \
  "[--skip-missing] [--posteriors F.safetensors... --scaling-factor S [--flipped-posteriors F.safetensors...]]"
#define TOOL_IMPORT_SUMMARY "build a preference dataset from Pick-a-Pic-style pairs and precomputed latents/embeddings"
#define TOOL_SYNTH_ARGS                                                                                 \
  "--out DIR [--config config.json] [--prompts P] [--base-per-prompt K] [--train-pairs N] "            \
  "[--validation-pairs N] [--latent-shape CxHxW] [--text-len L] [--embed-dim D] [--mode-noise S] "     \
  "[--reward-scale S] [--seed S] [--dtype f32|f16] [--posterior-logvar L]"
#define TOOL_SYNTH_SUMMARY "write the synthetic two-mode preference task (base samples, train, validation)"
#define TOOL_SAMPLE_ARGS                                                                                \
  "--checkpoint DIR --dataset DIR --out latents.safetensors [--split validation] [--prompts N] "        \
  "[--per-prompt K] [--steps 20] [--guidance 3] [--seed S] [--scheduler-config F] [--lora L] [--batch B] "    \
  "[--threads N]"
#define TOOL_SAMPLE_SUMMARY "DDIM-sample a checkpoint on a dataset's prompts; score them if the dataset is synth"

#define TOOL_EXPORT_ARGS "CHECKPOINT OUT [--variant fp16] [--pipeline]"
#define TOOL_EXPORT_SUMMARY                                                                             \
  "write a checkpoint as a diffusers UNet folder (config.json, weights F32 or fp16); --pipeline: OUT/unet/ " \
  "and OUT/scheduler/"

/* Parses the value `s` of option `opt` of subcommand `cmd` as an integer in [lo, hi], saying what is wrong
 * on stderr if it is not. Returns 0 or -1. */
int tool_parse_u64(const char *cmd, const char *opt, const char *s, uint64_t lo, uint64_t hi, uint64_t *out);

#endif
