/* dpo-tool sample: DDIM samples of a checkpoint on a dataset's prompts, through the shim's UNet.
 *
 * The prompts are the split's distinct prompts in order of first appearance (the first --prompts of
 * them), each sampled --per-prompt times. Sample j starts from x_T drawn from the RNG stream (seed, j),
 * so a sample does not depend on the batch it was computed in. If the dataset is the synthetic task,
 * the samples are scored (preferred-mode rate, mean distance to the nearest mode). */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dataset.h"
#include "ddim.h"
#include "rng.h"
#include "schedule.h"
#include "diffusers_names.h"
#include "dpod_error.h"
#include "dpod_file.h"
#include "safetensors.h"
#include "synth.h"
#include "tool_data.h"
#include "tool_lora.h"
#include "unet_shim.h"

/* The text of a config file, or NULL after saying why. */
static char *sample_read_text(const char *path) {
  char *text = NULL, err[1024];
  if (dpod_read_file(path, 1 << 20, &text, NULL, err, sizeof err) != 0) {
    fprintf(stderr, "dpo-tool sample: %s\n", err);
    return NULL;
  }
  return text;
}

typedef struct {
  unet_t m;
  int h, w, L;
} sample_ctx;

/* The UNet as the sampler's model; SDXL-shaped configs get the added conditioning the sampler passes. */
static int sample_unet_eps(void *ctx, int n, const float *x_t, const float *t, const float *ehs,
                           const float *text_embeds, const float *time_ids, float *out) {
  sample_ctx *c = ctx;
  unet_added_cond added = {.text_embeds = text_embeds, .time_ids = time_ids};
  return unet_forward_added(c->m, n, c->h, c->w, c->L, x_t, t, ehs, text_embeds ? &added : NULL, out);
}

int tool_sample_main(int argc, char **argv) {
  enum { O_CKPT = 1, O_DATA, O_OUT, O_SPLIT, O_PROMPTS, O_PER, O_STEPS, O_GUID, O_SEED, O_SCHED, O_BATCH, O_THREADS,
         O_LORA };
  static const struct option opts[] = {
      {"checkpoint", required_argument, NULL, O_CKPT}, {"dataset", required_argument, NULL, O_DATA},
      {"out", required_argument, NULL, O_OUT},         {"split", required_argument, NULL, O_SPLIT},
      {"prompts", required_argument, NULL, O_PROMPTS}, {"per-prompt", required_argument, NULL, O_PER},
      {"steps", required_argument, NULL, O_STEPS},     {"guidance", required_argument, NULL, O_GUID},
      {"seed", required_argument, NULL, O_SEED},       {"scheduler-config", required_argument, NULL, O_SCHED},
      {"batch", required_argument, NULL, O_BATCH},     {"threads", required_argument, NULL, O_THREADS},
      {"lora", required_argument, NULL, O_LORA},       {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *ckpt = NULL, *data = NULL, *outp = NULL, *split = "validation", *sched_path = NULL, *lora = NULL;
  uint64_t nprompts = 16, per = 1, seed = 0, batch = 8, threads = 0, v;
  ddim_params dp = ddim_default_params();
  optind = 0; /* 0, not 1: a full reset of GNU getopt, as these may run more than once per process */
  int c;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
      case O_CKPT: ckpt = optarg; break;
      case O_DATA: data = optarg; break;
      case O_OUT: outp = optarg; break;
      case O_SPLIT: split = optarg; break;
      case O_SCHED: sched_path = optarg; break;
      case O_LORA: lora = optarg; break;
      case O_PROMPTS:
        if (tool_parse_u64("sample", "--prompts", optarg, 1, 1u << 24, &nprompts)) return 2;
        break;
      case O_PER:
        if (tool_parse_u64("sample", "--per-prompt", optarg, 1, 1u << 16, &per)) return 2;
        break;
      case O_STEPS:
        if (tool_parse_u64("sample", "--steps", optarg, 1, 1000, &v)) return 2;
        dp.steps = (int)v;
        break;
      case O_GUID: {
        char *end;
        dp.guidance = strtod(optarg, &end);
        if (end == optarg || *end || !isfinite(dp.guidance) || dp.guidance < 0) {
          fprintf(stderr, "dpo-tool sample: --guidance wants a number >= 0, got '%s'\n", optarg);
          return 2;
        }
        break;
      }
      case O_SEED:
        if (tool_parse_u64("sample", "--seed", optarg, 0, UINT64_MAX, &seed)) return 2;
        break;
      case O_BATCH:
        if (tool_parse_u64("sample", "--batch", optarg, 1, 4096, &batch)) return 2;
        break;
      case O_THREADS:
        if (tool_parse_u64("sample", "--threads", optarg, 0, 1024, &threads)) return 2;
        break;
      case 'h': printf("usage: dpo-tool sample %s\n  %s\n", TOOL_SAMPLE_ARGS, TOOL_SAMPLE_SUMMARY); return 0;
      default: fprintf(stderr, "usage: dpo-tool sample %s\n", TOOL_SAMPLE_ARGS); return 2;
    }
  }
  if (optind != argc || !ckpt || !data || !outp) {
    if (optind != argc) fprintf(stderr, "dpo-tool sample: unexpected argument '%s'\n", argv[optind]);
    else fprintf(stderr, "dpo-tool sample: --checkpoint, --dataset and --out are required\n");
    fprintf(stderr, "usage: dpo-tool sample %s\n", TOOL_SAMPLE_ARGS);
    return 2;
  }

  int status = 1, rc;
  char err[1024], path[4096];
  char *cfg = NULL, *sj = NULL;
  unet_t m = NULL;
  dpo_dataset ds;
  memset(&ds, 0, sizeof ds);
  dpo_schedule sched;
  memset(&sched, 0, sizeof sched);
  synth_task task;
  memset(&task, 0, sizeof task);
  int have_task = 0;
  uint32_t *prompt_of = NULL;
  unsigned char *seen = NULL;
  float *x = NULL, *ehs = NULL, *uncond = NULL, *pooled = NULL, *uncond_pooled = NULL, *time_ids = NULL;
  st_writer *w = NULL;

  /* The model. */
  snprintf(path, sizeof path, "%s/%s", ckpt, DIFFUSERS_CONFIG_NAME);
  if (!(cfg = sample_read_text(path))) goto fail;
  unet_params up = unet_default_params();
  up.threads = (int)threads;
  if ((rc = unet_create(cfg, &up, &m, err, sizeof err)) != 0) {
    fprintf(stderr, "dpo-tool sample: %s: %s (%s)\n", path, err, dpod_err_name(rc));
    goto fail;
  }
  snprintf(path, sizeof path, "%s/%s", ckpt, DIFFUSERS_WEIGHTS_NAME);
  if ((rc = unet_load_weights(m, path)) != 0) {
    fprintf(stderr, "dpo-tool sample: %s (%s)\n", unet_last_error(m), dpod_err_name(rc));
    goto fail;
  }
  /* The adapters as `dpo-tool forward --lora` applies them, then frozen with the rest. */
  if (lora && tool_lora_attach(m, lora, "dpo-tool sample") != 0) goto fail;
  if ((rc = unet_freeze(m)) != 0) {
    fprintf(stderr, "dpo-tool sample: %s (%s)\n", unet_last_error(m), dpod_err_name(rc));
    goto fail;
  }
  unet_info info;
  unet_get_info(m, &info);

  /* The schedule: --scheduler-config, else CKPT/scheduler_config.json if present, else SD 1.5's. */
  if (!sched_path) {
    snprintf(path, sizeof path, "%s/%s", ckpt, DIFFUSERS_SCHEDULER_CONFIG_NAME);
    if (access(path, R_OK) == 0) sched_path = path;
  }
  if (sched_path) {
    if (!(sj = sample_read_text(sched_path))) goto fail;
    if ((rc = dpo_schedule_from_json(&sched, sj, err, sizeof err)) != 0) {
      fprintf(stderr, "dpo-tool sample: %s: %s (%s)\n", sched_path, err, dpod_err_name(rc));
      goto fail;
    }
  } else if (dpo_schedule_default(&sched) != 0) {
    fprintf(stderr, "dpo-tool sample: out of memory\n");
    goto fail;
  }

  /* The dataset and its prompts. */
  dataset_open_params op = dataset_open_default_params();
  op.split = split;
  op.channels = info.in_channels;
  op.height = op.width = info.sample_size;
  op.embed_dim = info.cross_attention_dim;
  op.pooled_dim = info.text_embeds_dim; /* an SDXL-shaped model needs pooled embeddings: refused without */
  op.check_values = 0; /* only the prompts are read: they are checked at open regardless */
  if ((rc = dataset_open(data, &op, &ds, err, sizeof err)) != 0) {
    fprintf(stderr, "dpo-tool sample: %s (%s)\n", err, dpod_err_name(rc));
    goto fail;
  }
  if (info.out_channels != ds.channels) {
    fprintf(stderr, "dpo-tool sample: the model predicts %d channels for %d-channel latents\n", info.out_channels,
            ds.channels);
    goto fail;
  }
  prompt_of = malloc(sizeof(uint32_t) * nprompts * per);
  seen = calloc(ds.num_prompts ? ds.num_prompts : 1, 1);
  if (!prompt_of || !seen) goto oom;
  size_t np = 0;
  for (size_t i = 0; i < ds.num_pairs && np < nprompts; i++) {
    uint32_t p = dataset_prompt_index(&ds, i);
    if (!seen[p]) {
      seen[p] = 1;
      prompt_of[np++] = p;
    }
  }
  if (np == 0) {
    fprintf(stderr, "dpo-tool sample: split '%s' of %s has no pairs\n", split, data);
    goto fail;
  }
  size_t n = np * per;
  for (size_t j = np; j < n; j++) prompt_of[j] = prompt_of[j % np];
  size_t img = dataset_image_size(&ds), emb = dataset_prompt_size(&ds);
  x = malloc(sizeof(float) * n * img);
  ehs = malloc(sizeof(float) * n * emb);
  if (!x || !ehs) goto oom;
  for (size_t j = 0; j < n; j++) {
    dataset_copy_prompt_row(&ds, prompt_of[j], ehs + j * emb);
    dpo_rng r;
    dpo_rng_seed(&r, seed, j);
    dpo_rng_fill_normal(&r, x + j * img, img);
  }
  if (ds.has_empty_prompt) {
    if (!(uncond = malloc(sizeof(float) * emb))) goto oom;
    dataset_copy_empty_prompt(&ds, uncond);
  } else if (dp.guidance > 1) {
    fprintf(stderr, "dpo-tool sample: %s has no empty-prompt embedding: sampling without guidance\n", data);
  }
  /* SDXL's added conditioning: each prompt's pooled embedding (the empty prompt's for the unconditional
   * rows) and the default time ids [res, res, 0, 0, res, res], res = 8 x the latent size, or the
   * dataset's own: those of the first pair of the prompt in the split, its winner's. */
  ddim_added added = {0};
  const size_t P = (size_t)info.text_embeds_dim;
  if (P > 0) {
    pooled = malloc(sizeof(float) * n * P);
    time_ids = malloc(sizeof(float) * n * DATASET_NUM_TIME_IDS);
    if (!pooled || !time_ids) goto oom;
    size_t *first = malloc(sizeof(size_t) * np);
    if (!first) goto oom;
    size_t found = 0;
    for (size_t i = 0; i < ds.num_pairs && found < np; i++) {
      uint32_t p = dataset_prompt_index(&ds, i);
      if (seen[p] == 1) {
        for (size_t k = 0; k < np; k++)
          if (prompt_of[k] == p) first[k] = i;
        seen[p] = 2;
        found++;
      }
    }
    for (size_t j = 0; j < n; j++) {
      dataset_copy_pooled_row(&ds, prompt_of[j], pooled + j * P);
      dataset_copy_time_ids(&ds, first[j % np], time_ids + j * DATASET_NUM_TIME_IDS, NULL);
    }
    free(first);
    if (uncond) {
      if (!(uncond_pooled = malloc(sizeof(float) * P))) goto oom;
      if (dataset_copy_empty_pooled(&ds, uncond_pooled) != 0) {
        fprintf(stderr, "dpo-tool sample: %s has an empty-prompt embedding but no pooled one: sampling without "
                "guidance\n", data);
        free(uncond);
        uncond = NULL;
      }
    }
    added = (ddim_added){.pooled = P, .text_embeds = pooled, .uncond_text_embeds = uncond_pooled, .time_ids = time_ids};
  }

  sample_ctx ctx = {.m = m, .h = ds.height, .w = ds.width, .L = ds.text_len};
  for (size_t j0 = 0; j0 < n; j0 += batch) {
    int b = (int)(n - j0 < batch ? n - j0 : batch);
    ddim_added part = added;
    if (P > 0) {
      part.text_embeds = pooled + j0 * P;
      part.time_ids = time_ids + j0 * DATASET_NUM_TIME_IDS;
    }
    if ((rc = ddim_sample_added(&sched, &dp, sample_unet_eps, &ctx, b, img, emb, ehs + j0 * emb, uncond,
                                P > 0 ? &part : NULL, x + j0 * img, err, sizeof err)) != 0) {
      fprintf(stderr, "dpo-tool sample: %s: %s (%s)\n", err, unet_last_error(m), dpod_err_name(rc));
      goto fail;
    }
  }

  /* Score on the synthetic task when the dataset is one. */
  snprintf(path, sizeof path, "%s/%s", data, SYNTH_FILE);
  synth_eval ev = {0};
  if (access(path, R_OK) == 0) {
    if ((rc = synth_task_load(data, &task, err, sizeof err)) != 0) {
      fprintf(stderr, "dpo-tool sample: %s (%s)\n", err, dpod_err_name(rc));
      goto fail;
    }
    have_task = 1;
    if (synth_evaluate(&task, n, x, prompt_of, &ev) != 0) {
      fprintf(stderr, "dpo-tool sample: %s does not match the dataset's prompts\n", path);
      goto fail;
    }
  }

  int64_t xs[4] = {(int64_t)n, ds.channels, ds.height, ds.width}, ps[1] = {(int64_t)n};
  char num[64];
  if (!(w = st_writer_new()) || st_writer_add(w, "latents", ST_F32, 4, xs, x) != 0 ||
      st_writer_add(w, "prompt", ST_I32, 1, ps, prompt_of) != 0)
    goto oom;
  st_writer_set_metadata(w, "dataset", data);
  st_writer_set_metadata(w, "split", split);
  st_writer_set_metadata(w, "checkpoint", ckpt);
  if (lora) st_writer_set_metadata(w, "lora", lora);
  snprintf(num, sizeof num, "%d", dp.steps);
  st_writer_set_metadata(w, "steps", num);
  snprintf(num, sizeof num, "%g", uncond ? dp.guidance : 1.0);
  st_writer_set_metadata(w, "guidance", num);
  snprintf(num, sizeof num, "%llu", (unsigned long long)seed);
  st_writer_set_metadata(w, "seed", num);
  if (have_task) {
    snprintf(num, sizeof num, "%.6f", ev.preferred_rate);
    st_writer_set_metadata(w, "preferred_rate", num);
    snprintf(num, sizeof num, "%.6f", ev.mean_distance);
    st_writer_set_metadata(w, "mean_distance", num);
  }
  if ((rc = st_writer_write(w, outp, NULL, err, sizeof err)) != 0) {
    fprintf(stderr, "dpo-tool sample: %s (%s)\n", err, dpod_err_name(rc));
    goto fail;
  }
  printf("%zu samples (%zu prompts x %llu) of split '%s', %d DDIM steps, guidance %g -> %s\n", n, np,
         (unsigned long long)per, split, dp.steps, uncond ? dp.guidance : 1.0, outp);
  if (have_task)
    printf("synth: preferred-mode rate %.4f, mean distance to the nearest mode %.4f (mode noise %.4f)\n",
           ev.preferred_rate, ev.mean_distance, task.mode_noise);
  status = 0;
  goto fail;
oom:
  fprintf(stderr, "dpo-tool sample: out of memory\n");
fail:
  st_writer_free(w);
  free(x);
  free(ehs);
  free(uncond);
  free(pooled);
  free(uncond_pooled);
  free(time_ids);
  free(prompt_of);
  free(seen);
  synth_task_free(&task);
  dataset_free(&ds);
  dpo_schedule_free(&sched);
  unet_free(m);
  free(cfg);
  free(sj);
  return status;
}
