#include "checkpoint.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "dpod_error.h"
#include "dpod_file.h"
#include "dpod_parse.h"
#include "json_num.h"
#include "dpod_log.h"

#define RANK_STATE_MAGIC "dpod-rank-state"
#define MARKER_MAGIC "dpod-checkpoint"
#define CKPT_VERSION 1

void ckpt_dir(const char *run_dir, uint32_t step, int partial, char *buf, size_t len) {
  snprintf(buf, len, "%s/checkpoints/step-%06u%s", run_dir, step, partial ? ".partial" : "");
}

/* Every file of a checkpoint is written whole or not at all; the directory is fsynced once, when the
 * checkpoint is committed. */
static int write_atomic(const char *path, const void *data, size_t len, char *err, size_t errlen) {
  return dpod_write_file_atomic(path, data, len, DPOD_WRITE_NO_DIR_SYNC, err, errlen);
}

int ckpt_write_text(const char *partial_dir, const char *name, const char *text, char *err, size_t errlen) {
  if (!name || !*name || strchr(name, '/')) return dpod_errf(err, errlen, DPOD_EINVAL, "checkpoint file: not a plain name");
  char path[4200];
  snprintf(path, sizeof path, "%s/%s", partial_dir, name);
  return write_atomic(path, text, strlen(text), err, errlen);
}

static void remove_tree(const char *path) {
  DIR *d = opendir(path);
  if (d) {
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
      if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
      char child[PATH_MAX];
      /* A truncated name is some other file: leave the entry (and so the directory) rather than unlink it. */
      if (snprintf(child, sizeof child, "%s/%s", path, e->d_name) >= (int)sizeof child) continue;
      struct stat st;
      if (lstat(child, &st) == 0 && S_ISDIR(st.st_mode))
        remove_tree(child);
      else
        unlink(child);
    }
    closedir(d);
  }
  rmdir(path);
}

int ckpt_begin(const char *run_dir, uint32_t step, char *err, size_t errlen) {
  char dir[4096];
  ckpt_dir(run_dir, step, 1, dir, sizeof dir);
  remove_tree(dir);
  return dpod_mkdirs(dir, 0700, 0, err, errlen);
}

int ckpt_write_rank_state(const char *partial_dir, const ckpt_rank_state *st, char *err, size_t errlen) {
  char path[4200], text[512];
  snprintf(path, sizeof path, "%s/rank-%05u.json", partial_dir, st->rank);
  int n = snprintf(text, sizeof text,
                   "{\"magic\": \"%s\", \"version\": %d, \"world_size\": %u, \"rank\": %u, \"step\": %u, "
                   "\"data_position\": %" PRIu64 ", \"seed\": \"%" PRIu64 "\"}\n",
                   RANK_STATE_MAGIC, CKPT_VERSION, st->world_size, st->rank, st->step, st->data_position, st->seed);
  return write_atomic(path, text, (size_t)n, err, errlen);
}

/* Size and CRC-32 of a file, streamed. */
static int file_crc(const char *path, uint64_t *size, uint32_t *crc) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  static __thread unsigned char buf[1 << 16];
  uLong c = crc32(0L, Z_NULL, 0);
  uint64_t total = 0;
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      close(fd);
      return -1;
    }
    if (n == 0) break;
    c = crc32(c, buf, (uInt)n);
    total += (uint64_t)n;
  }
  close(fd);
  *size = total;
  *crc = (uint32_t)c;
  return 0;
}

static int name_cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* The regular files of `dir` other than the marker and temporaries, sorted; caller frees each and the
 * array. */
static int list_files(const char *dir, char ***out, size_t *count) {
  DIR *d = opendir(dir);
  if (!d) return -1;
  char **names = NULL;
  size_t n = 0, cap = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.' || strcmp(e->d_name, CKPT_MARKER) == 0) continue;
    size_t l = strlen(e->d_name);
    if (l > 4 && strcmp(e->d_name + l - 4, ".tmp") == 0) continue;
    if (n == cap) {
      cap = cap ? cap * 2 : 16;
      char **nn = realloc(names, cap * sizeof *nn);
      if (!nn) break;
      names = nn;
    }
    names[n++] = strdup(e->d_name);
  }
  closedir(d);
  if (n) qsort(names, n, sizeof *names, name_cmp);
  *out = names;
  *count = n;
  return 0;
}

static void free_names(char **names, size_t n) {
  for (size_t i = 0; i < n; i++) free(names[i]);
  free(names);
}

int ckpt_commit(const char *run_dir, uint32_t step, uint32_t world_size, uint64_t *bytes_out, char *err,
                size_t errlen) {
  char partial[4096], final[4096], path[4200];
  ckpt_dir(run_dir, step, 1, partial, sizeof partial);
  ckpt_dir(run_dir, step, 0, final, sizeof final);
  for (uint32_t r = 0; r < world_size; r++) {
    snprintf(path, sizeof path, "%s/rank-%05u.json", partial, r);
    if (access(path, R_OK) != 0) {
      snprintf(err, errlen, "%s: rank %u wrote no state", partial, r);
      return DPOD_ESTATE;
    }
  }
  char **names = NULL;
  size_t n = 0;
  if (list_files(partial, &names, &n) != 0) {
    snprintf(err, errlen, "%s: %s", partial, strerror(errno));
    return DPOD_EIO;
  }
  int rc = DPOD_ENOMEM;
  cJSON *root = cJSON_CreateObject(), *files = cJSON_CreateObject();
  char *text = NULL;
  if (!root || !files) goto done;
  cJSON_AddStringToObject(root, "magic", MARKER_MAGIC);
  cJSON_AddNumberToObject(root, "version", CKPT_VERSION);
  cJSON_AddNumberToObject(root, "step", step);
  cJSON_AddNumberToObject(root, "world_size", world_size);
  uint64_t total = 0;
  for (size_t i = 0; i < n; i++) {
    uint64_t size;
    uint32_t crc;
    snprintf(path, sizeof path, "%s/%s", partial, names[i]);
    if (file_crc(path, &size, &crc) != 0) {
      snprintf(err, errlen, "%s: %s", path, strerror(errno));
      rc = DPOD_EIO;
      goto done;
    }
    char crc_hex[9];
    snprintf(crc_hex, sizeof crc_hex, "%08x", crc);
    cJSON *f = cJSON_CreateObject();
    cJSON_AddNumberToObject(f, "size", (double)size);
    cJSON_AddStringToObject(f, "crc32", crc_hex);
    cJSON_AddItemToObject(files, names[i], f);
    total += size;
  }
  cJSON_AddItemToObject(root, "files", files);
  files = NULL;
  text = cJSON_Print(root);
  if (!text) goto done;
  snprintf(path, sizeof path, "%s/%s", partial, CKPT_MARKER);
  if ((rc = write_atomic(path, text, strlen(text), err, errlen)) != 0) goto done;
  if ((rc = dpod_fsync_dir(partial, err, errlen)) != 0) goto done;
  remove_tree(final); /* a complete checkpoint of the same step from an earlier attempt */
  if (rename(partial, final) != 0) {
    snprintf(err, errlen, "rename %s: %s", partial, strerror(errno));
    rc = DPOD_EIO;
    goto done;
  }
  snprintf(path, sizeof path, "%s/checkpoints", run_dir);
  if ((rc = dpod_fsync_dir(path, err, errlen)) != 0) goto done;
  if (bytes_out) *bytes_out = total;
  rc = 0;
done:
  free(text);
  cJSON_Delete(files);
  cJSON_Delete(root);
  free_names(names, n);
  return rc;
}

/* A checkpoint's small JSON file (its marker or a rank record), or NULL (errno set). */
static char *slurp(const char *path) {
  char *text = NULL;
  int rc = dpod_read_file(path, 1 << 20, &text, NULL, NULL, 0);
  if (rc != 0) errno = rc == DPOD_ENOENT ? ENOENT : EIO;
  return text;
}

int ckpt_verify(const char *dir, uint32_t *step_out, char *err, size_t errlen) {
  char path[4200];
  snprintf(path, sizeof path, "%s/%s", dir, CKPT_MARKER);
  char *text = slurp(path);
  if (!text) {
    snprintf(err, errlen, "%s: no %s marker (incomplete checkpoint)", dir, CKPT_MARKER);
    return DPOD_ENOENT;
  }
  int rc = DPOD_EFORMAT;
  cJSON *root = cJSON_Parse(text);
  const cJSON *magic = cJSON_GetObjectItemCaseSensitive(root, "magic");
  const cJSON *step = cJSON_GetObjectItemCaseSensitive(root, "step");
  const cJSON *files = cJSON_GetObjectItemCaseSensitive(root, "files");
  uint64_t marker_step;
  if (!root || !cJSON_IsString(magic) || strcmp(magic->valuestring, MARKER_MAGIC) != 0 ||
      dpo_json_uint(step, UINT32_MAX, &marker_step) != 0 || !cJSON_IsObject(files)) {
    snprintf(err, errlen, "%s: malformed marker", path);
    goto done;
  }
  int have_weights = 0;
  const cJSON *f;
  cJSON_ArrayForEach(f, files) {
    const cJSON *size = cJSON_GetObjectItemCaseSensitive(f, "size");
    const cJSON *crc = cJSON_GetObjectItemCaseSensitive(f, "crc32");
    uint64_t want_size;
    if (dpo_json_uint(size, UINT64_MAX, &want_size) != 0 || !cJSON_IsString(crc) || strchr(f->string, '/') ||
        strcmp(f->string, "..") == 0) {
      snprintf(err, errlen, "%s: malformed entry for '%s'", path, f->string);
      goto done;
    }
    char fpath[4200];
    snprintf(fpath, sizeof fpath, "%s/%s", dir, f->string);
    uint64_t got_size;
    uint32_t got_crc;
    if (file_crc(fpath, &got_size, &got_crc) != 0) {
      snprintf(err, errlen, "%s: %s", fpath, strerror(errno));
      rc = DPOD_ENOENT;
      goto done;
    }
    char hex[9];
    snprintf(hex, sizeof hex, "%08x", got_crc);
    if (got_size != want_size || strcmp(hex, crc->valuestring) != 0) {
      snprintf(err, errlen,
               "%s: size or checksum differs from the marker (%" PRIu64 " bytes, crc32 %s; recorded %" PRIu64 ", %.8s)",
               fpath, got_size, hex, want_size, crc->valuestring);
      goto done;
    }
    if (strcmp(f->string, CKPT_WEIGHTS) == 0 || strcmp(f->string, CKPT_LORA_WEIGHTS) == 0) have_weights = 1;
  }
  if (!have_weights) {
    snprintf(err, errlen, "%s: the marker lists no %s (nor %s)", path, CKPT_WEIGHTS, CKPT_LORA_WEIGHTS);
    goto done;
  }
  if (step_out) *step_out = (uint32_t)marker_step;
  rc = 0;
done:
  cJSON_Delete(root);
  free(text);
  return rc;
}

/* Steps of the directories named step-NNNNNN (partial = 0) or step-NNNNNN.partial (1), ascending. */
static size_t list_steps(const char *run_dir, int partial, uint32_t **out) {
  char dir[4096];
  snprintf(dir, sizeof dir, "%s/checkpoints", run_dir);
  *out = NULL;
  DIR *d = opendir(dir);
  if (!d) return 0;
  size_t n = 0, cap = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    unsigned step;
    char rest[16] = "";
    if (sscanf(e->d_name, "step-%u%15s", &step, rest) < 1) continue;
    if (partial ? strcmp(rest, ".partial") != 0 : rest[0] != '\0') continue;
    if (n == cap) {
      cap = cap ? cap * 2 : 16;
      uint32_t *nn = realloc(*out, cap * sizeof *nn);
      if (!nn) break;
      *out = nn;
    }
    (*out)[n++] = step;
  }
  closedir(d);
  for (size_t i = 1; i < n; i++) /* insertion sort: a handful of entries */
    for (size_t j = i; j > 0 && (*out)[j - 1] > (*out)[j]; j--) {
      uint32_t t = (*out)[j];
      (*out)[j] = (*out)[j - 1];
      (*out)[j - 1] = t;
    }
  return n;
}

int ckpt_find_latest(const char *run_dir, uint32_t *step_out, char *path, size_t len) {
  uint32_t *steps;
  size_t n = list_steps(run_dir, 0, &steps);
  int found = 0;
  for (size_t i = n; i-- > 0 && !found;) {
    char dir[4096], err[512];
    ckpt_dir(run_dir, steps[i], 0, dir, sizeof dir);
    uint32_t step;
    if (ckpt_verify(dir, &step, err, sizeof err) != 0) {
      log_warn("skipping checkpoint: %s", err);
      continue;
    }
    if (step != steps[i]) {
      log_warn("skipping checkpoint %s: its marker says step %u", dir, step);
      continue;
    }
    *step_out = step;
    snprintf(path, len, "%s", dir);
    found = 1;
  }
  free(steps);
  return found;
}

int ckpt_read_rank_state(const char *dir, uint32_t rank, ckpt_rank_state *st, char *err, size_t errlen) {
  char path[4200];
  snprintf(path, sizeof path, "%s/rank-%05u.json", dir, rank);
  char *text = slurp(path);
  if (!text) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    return DPOD_ENOENT;
  }
  int rc = DPOD_EFORMAT;
  cJSON *root = cJSON_Parse(text);
  const cJSON *magic = cJSON_GetObjectItemCaseSensitive(root, "magic");
  const cJSON *world = cJSON_GetObjectItemCaseSensitive(root, "world_size");
  const cJSON *r = cJSON_GetObjectItemCaseSensitive(root, "rank");
  const cJSON *step = cJSON_GetObjectItemCaseSensitive(root, "step");
  const cJSON *pos = cJSON_GetObjectItemCaseSensitive(root, "data_position");
  const cJSON *seed = cJSON_GetObjectItemCaseSensitive(root, "seed");
  uint64_t world_v, rank_v, step_v, pos_v, seed_v;
  if (!root || !cJSON_IsString(magic) || strcmp(magic->valuestring, RANK_STATE_MAGIC) != 0 ||
      dpo_json_uint(world, UINT32_MAX, &world_v) != 0 || dpo_json_uint(r, UINT32_MAX, &rank_v) != 0 ||
      dpo_json_uint(step, UINT32_MAX, &step_v) != 0 || dpo_json_uint(pos, UINT64_MAX, &pos_v) != 0 ||
      !cJSON_IsString(seed) || dpod_parse_u64(seed->valuestring, UINT64_MAX, &seed_v) != 0) {
    snprintf(err, errlen, "%s: malformed rank state", path);
    goto done;
  }
  st->world_size = (uint32_t)world_v;
  st->rank = (uint32_t)rank_v;
  st->step = (uint32_t)step_v;
  st->data_position = pos_v;
  st->seed = seed_v;
  if (st->rank != rank) {
    snprintf(err, errlen, "%s: records rank %u", path, st->rank);
    goto done;
  }
  rc = 0;
done:
  cJSON_Delete(root);
  free(text);
  return rc;
}

int ckpt_eval_metric(const char *dir, const char *field, double *value) {
  char path[4200];
  snprintf(path, sizeof path, "%s/%s", dir, CKPT_PROVENANCE);
  char *text = slurp(path);
  if (!text) return DPOD_ENOENT;
  cJSON *root = cJSON_Parse(text);
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "eval"), field);
  int rc = cJSON_IsNumber(v) ? 0 : DPOD_ENOENT;
  if (rc == 0) *value = v->valuedouble;
  cJSON_Delete(root);
  free(text);
  return rc;
}

int ckpt_prune(const char *run_dir, uint32_t keep_last, void (*removed_cb)(uint32_t step, const char *dir, void *arg),
               void *arg) {
  return ckpt_prune_keep_best(run_dir, keep_last, NULL, 0, removed_cb, arg);
}

int ckpt_prune_keep_best(const char *run_dir, uint32_t keep_last, const char *best_field, int lower_is_better,
                         void (*removed_cb)(uint32_t step, const char *dir, void *arg), void *arg) {
  uint32_t *steps;
  size_t n = list_steps(run_dir, 0, &steps);
  int removed = 0;
  char dir[4096];
  /* The best complete checkpoint by its evaluation, oldest first so that equals keep the oldest. */
  uint32_t best_step = 0;
  int have_best = 0;
  double best = 0;
  for (size_t i = 0; best_field && *best_field && i < n; i++) {
    char marker[4200];
    double v;
    ckpt_dir(run_dir, steps[i], 0, dir, sizeof dir);
    snprintf(marker, sizeof marker, "%s/%s", dir, CKPT_MARKER);
    if (access(marker, F_OK) != 0 || ckpt_eval_metric(dir, best_field, &v) != 0 || !isfinite(v)) continue;
    if (!have_best || (lower_is_better ? v < best : v > best)) {
      best = v;
      best_step = steps[i];
      have_best = 1;
    }
  }
  /* Count complete checkpoints from the newest; invalid directories do not use up a place. */
  uint32_t kept = 0, newest = 0;
  for (size_t i = n; i-- > 0;) {
    ckpt_dir(run_dir, steps[i], 0, dir, sizeof dir);
    /* Only the marker's presence is checked: checksumming every kept checkpoint on each save would
     * read gigabytes for a large model. */
    char marker[4200];
    snprintf(marker, sizeof marker, "%s/%s", dir, CKPT_MARKER);
    if (access(marker, F_OK) != 0) continue;
    if (kept == 0) newest = steps[i];
    if (kept < keep_last) {
      kept++;
      continue;
    }
    if (have_best && steps[i] == best_step) continue; /* kept besides the newest */
    remove_tree(dir);
    removed++;
    if (removed_cb) removed_cb(steps[i], dir, arg);
  }
  free(steps);
  n = list_steps(run_dir, 1, &steps);
  for (size_t i = 0; i < n; i++)
    if (steps[i] < newest) {
      ckpt_dir(run_dir, steps[i], 1, dir, sizeof dir);
      remove_tree(dir);
      removed++;
    }
  free(steps);
  return removed;
}
