/* dpo-tool's LoRA: attaching a LoRA file to a UNet, and merge-lora. */
#include "tool_lora.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dpod_error.h"
#include "dpod_file.h"
#include "dpod_parse.h"
#include "safetensors.h"

#define DOWN_SUFFIX ".lora.down.weight"
#define UP_SUFFIX ".lora.up.weight"

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && strcmp(s + n - k, suffix) == 0;
}

int tool_lora_attach(unet_t m, const char *path, const char *who) {
  char err[1024];
  st_file *f = NULL;
  int rc = st_open(path, &f, err, sizeof err);
  if (rc != 0) {
    fprintf(stderr, "%s: %s (%s)\n", who, err, dpod_err_name(rc));
    return 1;
  }
  int status = 1;
  size_t n = st_count(f), nmod = 0;
  char **modules = calloc(n ? n : 1, sizeof *modules);
  if (!modules) {
    fprintf(stderr, "%s: out of memory\n", who);
    goto done;
  }
  int64_t rank = 0;
  for (size_t i = 0; i < n; i++) {
    const st_tensor *t = st_at(f, i);
    int down = ends_with(t->name, DOWN_SUFFIX), up = ends_with(t->name, UP_SUFFIX);
    if (strncmp(t->name, "unet.", 5) != 0 || !(down || up)) {
      fprintf(stderr,
              "%s: %s: tensor '%s' is not a UNet adapter (diffusers' names: unet.<module>%s and unet.<module>%s; "
              "text-encoder LoRA is not supported)\n",
              who, path, t->name, DOWN_SUFFIX, UP_SUFFIX);
      goto done;
    }
    if (!down) continue;
    if (t->ndim != 2) {
      fprintf(stderr, "%s: %s: '%s' is not a matrix\n", who, path, t->name);
      goto done;
    }
    if (rank && t->shape[0] != rank) {
      fprintf(stderr, "%s: %s: '%s' has rank %lld, the others %lld (one rank per file)\n", who, path, t->name,
              (long long)t->shape[0], (long long)rank);
      goto done;
    }
    rank = t->shape[0];
    size_t len = strlen(t->name) - 5 - strlen(DOWN_SUFFIX);
    if (!(modules[nmod] = strndup(t->name + 5, len))) {
      fprintf(stderr, "%s: out of memory\n", who);
      goto done;
    }
    nmod++;
  }
  if (nmod == 0) {
    fprintf(stderr, "%s: %s holds no adapter (no tensor named unet.<module>%s)\n", who, path, DOWN_SUFFIX);
    goto done;
  }
  if (rank < 1 || rank > UNET_LORA_MAX_RANK) {
    fprintf(stderr, "%s: %s: rank %lld is outside 1..%d\n", who, path, (long long)rank, UNET_LORA_MAX_RANK);
    goto done;
  }
  unet_lora_params lp = unet_lora_default_params();
  lp.rank = (int)rank;
  lp.targets = (const char *const *)modules;
  lp.num_targets = nmod;
  /* Full module names as targets: each adapts exactly the layer it names. */
  const char *alpha = st_metadata(f, "lora_alpha");
  if (alpha) {
    char *end;
    lp.alpha = strtod(alpha, &end);
    if (*end || !(lp.alpha > 0) || lp.alpha > 1e6) {
      fprintf(stderr, "%s: %s: metadata lora_alpha '%.32s' is not a number > 0\n", who, path, alpha);
      goto done;
    }
  }
  if ((rc = unet_lora_enable(m, &lp)) != 0 || (rc = unet_lora_load(m, path)) != 0) {
    fprintf(stderr, "%s: %s: %s (%s)\n", who, path, unet_last_error(m), dpod_err_name(rc));
    goto done;
  }
  status = 0;
done:
  for (size_t i = 0; i < nmod; i++) free(modules[i]);
  free(modules);
  st_close(f);
  return status;
}

/* Writes the model's full weights to `path` under diffusers' names (F32). */
static int write_weights(unet_t m, const char *path, const char *who) {
  unet_info info;
  unet_get_info(m, &info);
  const float *base = unet_param_buffer(m, NULL);
  st_writer *w = st_writer_new();
  char err[1024];
  int status = 1;
  if (!base || !w) {
    fprintf(stderr, "%s: %s\n", who, base ? "out of memory" : unet_last_error(m));
    goto done;
  }
  for (size_t i = 0; i < info.num_tensors; i++) {
    const char *name;
    size_t off;
    int ndim;
    int64_t shape[8];
    if (unet_param_at(m, i, &name, &off, &ndim, shape) != 0 ||
        st_writer_add(w, name, ST_F32, ndim, shape, base + off) != 0) {
      fprintf(stderr, "%s: out of memory\n", who);
      goto done;
    }
  }
  st_writer_set_metadata(w, "format", "pt");
  int rc = st_writer_write(w, path, NULL, err, sizeof err);
  if (rc != 0) {
    fprintf(stderr, "%s: %s (%s)\n", who, err, dpod_err_name(rc));
    goto done;
  }
  status = 0;
done:
  st_writer_free(w);
  return status;
}

int tool_merge_lora_main(int argc, char **argv) {
  const char *who = "dpo-tool merge-lora";
  const char *pos[3] = {NULL, NULL, NULL}, *config = NULL;
  int npos = 0;
  uint64_t threads = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      printf("usage: dpo-tool merge-lora %s\n  %s\n  --config: the UNet's config.json (default: the built-in tiny "
             "config)\n",
             TOOL_MERGE_LORA_ARGS, TOOL_MERGE_LORA_SUMMARY);
      return 0;
    } else if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
      config = argv[++i];
    } else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
      if (dpod_parse_u64(argv[++i], 1024, &threads) != 0) {
        fprintf(stderr, "%s: --threads wants a count from 0 to 1024, got '%s'\n", who, argv[i]);
        return 2;
      }
    } else if (argv[i][0] == '-' || npos == 3) {
      fprintf(stderr, "%s: unexpected argument '%s'\nusage: dpo-tool merge-lora %s\n", who, argv[i],
              TOOL_MERGE_LORA_ARGS);
      return 2;
    } else {
      pos[npos++] = argv[i];
    }
  }
  if (npos != 3) {
    fprintf(stderr, "usage: dpo-tool merge-lora %s\n", TOOL_MERGE_LORA_ARGS);
    return 2;
  }
  char *cfg = NULL, err[1024];
  if (config && dpod_read_file(config, 1 << 20, &cfg, NULL, err, sizeof err) != 0) {
    fprintf(stderr, "%s: config %s\n", who, err);
    return 1;
  }
  unet_params p = unet_default_params();
  p.threads = (int)threads;
  unet_t m = NULL;
  int status = 1;
  int rc = unet_create(cfg, &p, &m, err, sizeof err);
  if (rc != 0) {
    fprintf(stderr, "%s: %s: %s (%s)\n", who, config ? config : "(built-in config)", err, dpod_err_name(rc));
    goto done;
  }
  if ((rc = unet_load_weights(m, pos[0])) != 0) {
    fprintf(stderr, "%s: %s (%s)\n", who, unet_last_error(m), dpod_err_name(rc));
    goto done;
  }
  if (tool_lora_attach(m, pos[1], who) != 0) goto done;
  unet_lora_info li;
  unet_lora_get_info(m, &li);
  if ((rc = unet_lora_merge(m)) != 0) {
    fprintf(stderr, "%s: %s (%s)\n", who, unet_last_error(m), dpod_err_name(rc));
    goto done;
  }
  if (write_weights(m, pos[2], who) != 0) goto done;
  printf("merged %zu adapters of rank %d (alpha %g) into %s\n", li.num_modules, li.rank, li.alpha, pos[2]);
  status = 0;
done:
  unet_free(m);
  free(cfg);
  return status;
}
