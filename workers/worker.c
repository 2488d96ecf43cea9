/* dpo-worker: one rank of a data-parallel Diffusion-DPO job.
 *
 * Launched by dpod as `mpirun -np N dpo-worker --spec spec.pb --run-dir DIR [--job-id ID --report-addr A]`
 * (or by hand, without the last two, to train standalone). Every rank holds the policy UNet and the frozen
 * reference UNet through the libtorch shim, reads its share of each global batch, computes the loss in C
 * (dpo_math.c) and lets the shim back-propagate it; gradients are summed over ranks with MPI_Allreduce on
 * one flat buffer, so every rank takes the same AdamW step and the replicas never drift apart. Rank 0
 * reports metrics and checkpoints to the daemon through a background thread and writes the weights.
 *
 * A step, for a global batch of G pairs (ranks x batch_size x grad_accum):
 *   for each micro-batch: noise and timestep per pair (shared by winner and loser, drawn from the seed and
 *   the pair's global position), x_t = sqrt(acp) x0 + sqrt(1 - acp) noise, policy and reference MSEs on
 *   [winners; losers], dpo_loss -> d loss / d mse, unet_backward_mse;
 *   then all-reduce the gradients and the metric sums (with rank 0's stop flag), clip, AdamW. */
#include <errno.h>
#include <inttypes.h>
#include <getopt.h>
#include <signal.h>
#include <math.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "blas_select.h"
#include "thread_wait.h"
#include "checkpoint.h"
#include "dataset.h"
#include "device_pick.h"
#include "rng.h"
#include "schedule.h"
#include "loss.h"
#include "model_dir.h"
#include "model_unet.h"
#include "posterior.h"
#include "lr_schedule.h"
#include "loss_scale.h"
#include "sampler.h"
#include "dpod_error.h"
#include "dpod_file.h"
#include "dpod_parse.h"
#include "dpod_log.h"
#include "dpod_paths.h"
#include "ddim.h"
#include "job_spec.h"
#include "report_journal.h"
#include "reporter.h"
#include "safetensors.h"
#include "synth.h"
#include "provenance.h"
#include "unet_shim.h"
#include "unet_version.h"

/* Bound on the spec file (the model's files are bounded in model_source.h). */
#define WORKER_SPEC_MAX ((size_t)1 << 20)

/* Parameters are broadcast and gradients all-reduced in calls of at most this many floats (64 MiB): few,
 * large calls, each well under MPI's int count (an SDXL-sized UNet has 2.6e9 parameters).
 * DPOD_MPI_CHUNK_FLOATS overrides it, so that tests can make every collective take many calls. */
#define MPI_CHUNK_DEFAULT ((size_t)16 << 20)

/* Salt of the adapters' initialisation stream (train.seed ^ this), apart from the base's. */
#define LORA_INIT_SALT 0x6c6f72612d696e69ull

static int g_rank = 0, g_world = 1;
static size_t g_mpi_chunk = MPI_CHUNK_DEFAULT;

/* SIGTERM or SIGUSR1 (Slurm preemption, a time limit, dpod) asks for a checkpoint at the next step
 * boundary and exit status WORKER_EXIT_PREEMPTED; a second SIGTERM exits at once. The handler only
 * counts: the training loop acts on the count, after the ranks have agreed on it in their all-reduce. */
static volatile sig_atomic_t g_stop_signals = 0;

static void on_stop_signal(int sig) {
  if (sig == SIGTERM && g_stop_signals > 0) _exit(WORKER_EXIT_PREEMPTED);
  g_stop_signals = g_stop_signals + 1;
}

static void install_signal_handlers(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGUSR1, &sa, NULL);
}

/* Fail fast, saying why and where. Every rank that hits a fatal error logs it; MPI_Abort takes the others
 * down with it so mpirun exits with our status. */
static void worker_die_(int status, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5), noreturn));
static void worker_die_(int status, const char *file, int line, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  dpod_log_write_(DPOD_LOG_ERROR, file, line, "rank %d: %s", g_rank, msg);
  fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, status);
  exit(status);
}
#define worker_die(...) worker_die_(WORKER_EXIT_FAILED, __FILE__, __LINE__, __VA_ARGS__)
/* The job's input is at fault (its spec, model or data): dpod does not retry such a job. */
#define worker_die_input(...) worker_die_(WORKER_EXIT_BAD_INPUT, __FILE__, __LINE__, __VA_ARGS__)

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct {
  const char *spec_path;
  const char *run_dir;
  const char *report_addr;
  uint64_t job_id;
} worker_args;

static void usage(FILE *out) {
  fprintf(out,
          "usage: dpo-worker --spec SPEC --run-dir DIR [--job-id ID --report-addr ADDR]\n"
          "\n"
          "One rank of a Diffusion-DPO job; start it under mpirun. SPEC is a packed dpod.v1.JobSpec (.pb)\n"
          "or a YAML job file (.yaml). A run directory holding checkpoints resumes from the newest.\n"
          "SIGTERM or SIGUSR1 checkpoints at the next step and exits 4; a second SIGTERM exits at once.\n"
          "With --report-addr, rank 0 reports to dpod at ADDR, authenticated by $%s.\n"
          "--version prints its version.\n"
          "Exit status: 0 done, 1 failed, 2 usage, 3 cancelled by dpod, 4 preempted.\n",
          DPOD_ENV_JOB_SECRET);
}

static int parse_args(int argc, char **argv, worker_args *a) {
  static const struct option opts[] = {{"spec", required_argument, 0, 's'},
                                       {"run-dir", required_argument, 0, 'r'},
                                       {"job-id", required_argument, 0, 'j'},
                                       {"report-addr", required_argument, 0, 'a'},
                                       {"help", no_argument, 0, 'h'},
                                       {"version", no_argument, 0, 'V'},
                                       {0, 0, 0, 0}};
  memset(a, 0, sizeof *a);
  int c;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
      case 's': a->spec_path = optarg; break;
      case 'r': a->run_dir = optarg; break;
      case 'j':
        if (dpod_parse_u64(optarg, UINT64_MAX, &a->job_id) != 0 || a->job_id == 0) {
          fprintf(stderr, "dpo-worker: --job-id wants a job number, got '%s'\n", optarg);
          return -1;
        }
        break;
      case 'a': a->report_addr = optarg; break;
      case 'h': usage(stdout); return 1;
      case 'V': printf("dpo-worker %s\n", DPOD_VERSION_STRING); return 1;
      default: usage(stderr); return -1;
    }
  }
  if (!a->spec_path || !a->run_dir || optind != argc) {
    usage(stderr);
    return -1;
  }
  return 0;
}

/* A packed dpod.v1.JobSpec (what dpod writes), or a YAML job file (.yaml/.yml) for standalone runs. */
/* The job spec at `path` (.yaml/.yml as a job file, else a packed dpod.v1.JobSpec), normalised and
 * validated; NULL with the reason in err, and *oom set when the reason is memory, not the file. */
static Dpod__V1__JobSpec *read_spec(const char *path, char *err, size_t errlen, int *oom) {
  size_t plen = strlen(path);
  Dpod__V1__JobSpec *spec = NULL;
  *oom = 0;
  if ((plen > 5 && strcmp(path + plen - 5, ".yaml") == 0) || (plen > 4 && strcmp(path + plen - 4, ".yml") == 0)) {
    spec = job_spec_new();
    if (!spec) {
      *oom = 1;
      snprintf(err, errlen, "out of memory");
      return NULL;
    }
    if (job_spec_load_yaml(spec, path, err, errlen) != 0) goto fail;
  } else {
    size_t len = 0;
    char *bytes = NULL, why[512];
    if (dpod_read_file(path, WORKER_SPEC_MAX, &bytes, &len, why, sizeof why) != 0) {
      snprintf(err, errlen, "job spec %s", why);
      return NULL;
    }
    spec = dpod__v1__job_spec__unpack(NULL, len, (const uint8_t *)bytes);
    free(bytes);
    if (!spec) {
      snprintf(err, errlen, "%s: not a valid dpod.v1.JobSpec", path);
      return NULL;
    }
  }
  if (job_spec_normalize(spec) != 0) {
    *oom = 1;
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  char why[512];
  if (job_spec_validate(spec, 0, why, sizeof why) != 0) {
    snprintf(err, errlen, "%s: %s", path, why);
    goto fail;
  }
  return spec;
fail:
  dpod__v1__job_spec__free_unpacked(spec, NULL);
  return NULL;
}

static Dpod__V1__JobSpec *load_spec(const char *path) {
  char err[1024];
  int oom;
  Dpod__V1__JobSpec *spec = read_spec(path, err, sizeof err, &oom);
  if (!spec && oom) worker_die("%s", err);
  if (!spec) worker_die_input("%s", err);
  return spec;
}

/* The trainer's state on one rank. */
typedef struct {
  const Dpod__V1__JobSpec *spec;
  const Dpod__V1__TrainSpec *train;
  unet_t policy, ref;        /* ref is NULL for the sft objective and with LoRA */
  int lora;                  /* train.lora.rank > 0: policy = base + adapters, reference = adapters off */
  unet_info info;
  dpo_schedule sched;
  dpo_dataset data;
  dpo_dataset val;           /* held-out split; num_pairs 0 when evaluation is off */
  synth_task task;           /* the synthetic task's ground truth; task.prompts 0 for other data */
  dpo_sampler sampler;
  int dpo;                   /* objective is dpo (else sft) */
  int draw_latents;          /* training latents drawn from the dataset's VAE posteriors (data.latents) */
  size_t img;                /* floats per latent image */
  size_t emb;                /* floats per prompt embedding */
  uint64_t global_batch;     /* pairs per optimizer step over all ranks */
  double peak_lr;
  uint32_t warmup_steps;
  dpo_loss_kind loss;        /* train.loss */
  dpo_lr_kind lr_kind;       /* train.lr_scheduler */
  unet_adafactor_t adafactor; /* train.optimizer adafactor; NULL: AdamW (its state is in the policy) */
  size_t *batch_pairs;       /* [B]: the pairs of the micro-batch being filled */
  uint64_t *batch_keys;      /* [B]: their RNG keys */
  /* Micro-batch buffers: up to 2B images (winners then losers). */
  float *x0, *noise, *x_t, *target, *ehs, *timesteps, *mse_policy, *mse_ref, *grad_mse;
  float *pred;               /* [2B, C, H, W]: predictions of an evaluation forward */
  /* SDXL's added conditioning (text_time), NULL for models without it: */
  float *pooled;             /* [2B, text_embeds_dim]: pooled prompt embeddings, winners then losers */
  float *time_ids;           /* [2B, 6] */
  unet_added_cond added;     /* points at the two above */
  int64_t *t_int;
  char *sched_json;          /* the scheduler config trained with, written into every checkpoint */
  reporter *rep;
  char dataset_hash[80];     /* rank 0: SHA-256 of the dataset's manifest ("" for the built-in set) */
  Dpod__V1__EvalMetrics last_eval;  /* rank 0: the newest evaluation, for the checkpoint of its step */
  int have_eval;
  const char *best_field;    /* train.keep_best's EvalMetrics field, NULL without one */
  int best_lower;            /* ... and whether lower is better */
  int scaling;               /* dynamic loss scaling (fp16, or DPOD_LOSS_SCALE=force): scaler is live */
  dpo_loss_scaler scaler;
  uint32_t poison_step;      /* DPOD_TEST_NONFINITE_STEP: the step whose gradient gets an inf (0: none) */
  int poison_rank;           /* ... on this rank (DPOD_TEST_NONFINITE_RANK, default 0) */
} trainer;

/* Rank 0's copy of n floats to every rank, in calls of at most g_mpi_chunk. */
static void bcast_floats(float *buf, size_t n, const char *what) {
  for (size_t off = 0; off < n; off += g_mpi_chunk) {
    size_t len = n - off < g_mpi_chunk ? n - off : g_mpi_chunk;
    if (MPI_Bcast(buf + off, (int)len, MPI_FLOAT, 0, MPI_COMM_WORLD) != MPI_SUCCESS)
      worker_die("MPI_Bcast of %s failed", what);
  }
}

/* count x size bytes, or the worker dies saying so: nothing here can go on without its buffers. */
static void *alloc_array(size_t count, size_t size) {
  if (size && count > SIZE_MAX / size) worker_die("a buffer of %zu x %zu bytes is too large", count, size);
  size_t bytes = count * size;
  void *p = malloc(bytes ? bytes : 1);
  if (!p) worker_die("out of memory (%zu bytes)", bytes);
  return p;
}

/* train.device for this rank (device_pick.c): "cpu" or "cuda:<local rank>", decided once. */
static const char *rank_device(const Dpod__V1__JobSpec *spec) {
  static char device[32];
  if (*device) return device;
  char err[512];
  int local_rank = -1;
  if (dpo_local_rank_from_env(&local_rank, err, sizeof err) != 0) worker_die("%s", err);
  uint32_t gpus = spec->resources ? spec->resources->gpus_per_rank : 0;
  int rc = dpo_device_pick(spec->train->device, gpus, unet_cuda_device_count(), local_rank, device, sizeof device, err,
                           sizeof err);
  if (rc) worker_die_input("%s", err);
  if (g_rank == 0) log_info("training on %s%s", device, g_world > 1 ? " (rank 0; each rank its local rank's)" : "");
  return device;
}

static unet_t build_unet(const char *config_text, const char *config_name, const Dpod__V1__JobSpec *spec,
                         const model_source *weights) {
  unet_params p = unet_default_params();
  p.device = rank_device(spec);
  p.threads = (int)spec->threads_per_rank;
  p.seed = spec->train->seed;
  unet_t m = NULL;
  char err[1024];
  int rc = unet_create(config_text, &p, &m, err, sizeof err);
  /* Out of memory or libtorch failing is this run's trouble; anything else is the model's. */
  int bad_input = rc != DPOD_ENOMEM && rc != DPOD_ETORCH;
  if (rc && bad_input) worker_die_input("model config %s: %s", config_name, err);
  if (rc) worker_die("model config %s: %s", config_name, err);
  if (weights) {
    rc = model_unet_load(m, weights, err, sizeof err);
    if (rc && rc != DPOD_ENOMEM && rc != DPOD_ETORCH) worker_die_input("%s", err);
    if (rc) worker_die("%s", err);
  }
  /* train.precision; a frozen reference at bf16 stores its weights in bf16 from unet_freeze on. */
  unet_precision prec = UNET_PRECISION_FP32;
  const char *pname = spec->train->precision ? spec->train->precision : "fp32";
  if (unet_precision_parse(pname, &prec) != 0) worker_die_input("train.precision: unknown precision '%.64s'", pname);
  rc = unet_set_precision(m, prec);
  if (rc == DPOD_EUNSUPPORTED || rc == DPOD_EINVAL) worker_die_input("train.precision: %s", unet_last_error(m));
  if (rc) worker_die("train.precision: %s", unet_last_error(m));
  return m;
}

/* train.lora: adapters on the policy (its base frozen), identical on every rank. Returns whether LoRA is on.
 * The reference is then this same UNet with its adapters off (reference_forward), never a second copy. */
static int lora_setup(unet_t policy, const Dpod__V1__JobSpec *spec) {
  const Dpod__V1__LoraSpec *l = spec->train->lora;
  if (!l || l->rank == 0) return 0;
  unet_lora_params lp = unet_lora_default_params();
  lp.rank = (int)l->rank;
  lp.alpha = l->alpha;
  lp.targets = (const char *const *)l->target_modules;
  lp.num_targets = l->n_target_modules;
  lp.init = l->init && strcmp(l->init, "kaiming") == 0 ? UNET_LORA_INIT_KAIMING : UNET_LORA_INIT_GAUSSIAN;
  lp.seed = spec->train->seed ^ LORA_INIT_SALT;
  int rc = unet_lora_enable(policy, &lp);
  if (rc == DPOD_EINVAL) worker_die_input("train.lora: %s", unet_last_error(policy));
  if (rc) worker_die("train.lora: %s", unet_last_error(policy));
  size_t n = 0;
  float *p = unet_lora_param_buffer(policy, &n);
  if (!p) worker_die("the adapters: %s", unet_last_error(policy));
  bcast_floats(p, n, "the initial adapters");
  return 1;
}

/* The reference's forward: the frozen reference UNet, or with LoRA the policy with its adapters off
 * (which records no graph and keeps the policy's for the backward). pred/out as unet_forward_mse and
 * unet_forward; exactly one of mse and out is used. */
static void reference_forward(trainer *tr, int n, int h, int w, int L, float *mse, float *out) {
  unet_t m = tr->lora ? tr->policy : tr->ref;
  if (tr->lora && unet_lora_set_active(m, 0) != 0) worker_die("adapters off: %s", unet_last_error(m));
  const unet_added_cond *added = tr->pooled ? &tr->added : NULL;
  int rc = mse ? unet_forward_mse_added(m, n, h, w, L, tr->x_t, tr->timesteps, tr->ehs, added, tr->target, mse, NULL)
               : unet_forward_added(m, n, h, w, L, tr->x_t, tr->timesteps, tr->ehs, added, out);
  if (rc != 0) worker_die("reference forward: %s", unet_last_error(m));
  if (tr->lora && unet_lora_set_active(m, 1) != 0) worker_die("adapters on: %s", unet_last_error(m));
}

/* Whether training draws its latents from the dataset's posteriors: data.latents and data.random_flip
 * against what the dataset stores (job_spec_validate has refused the combinations no dataset allows). */
static int worker_latent_source(const Dpod__V1__DataSpec *d, const dpo_dataset *ds) {
  const int want = d->latents;
  if (want == DPOD__V1__LATENT_SOURCE__LATENT_SOURCE_SAMPLE && !ds->posterior)
    worker_die_input("data.latents is sample but %s stores no VAE posteriors (dpo-tool import --posteriors)", d->dataset);
  if (d->random_flip && !ds->posterior_flipped)
    worker_die_input("data.random_flip needs the flipped images' posteriors and %s stores none (dpo-tool import "
                     "--flipped-posteriors)", d->dataset);
  int draw = ds->posterior && want != DPOD__V1__LATENT_SOURCE__LATENT_SOURCE_FROZEN;
  if (g_rank == 0 && ds->posterior)
    log_info("latents: %s%s", draw ? "drawn from the VAE posteriors every step" : "frozen (data.latents: frozen)",
             d->random_flip ? ", each image flipped with probability 1/2" : "");
  return draw;
}

/* Dynamic loss scaling (loss_scale.h): on for precision fp16, with train.loss_scale's settings. Test-only
 * switches, for a CPU, which has no fp16: DPOD_LOSS_SCALE=force turns it on at any precision
 * (force:INIT:INTERVAL also sets the initial scale and growth interval), and DPOD_TEST_NONFINITE_STEP=K puts
 * an inf into the gradient of step K on rank DPOD_TEST_NONFINITE_RANK (0) before the all-reduce. */
static void loss_scaling_setup(trainer *tr) {
  const char *prec = tr->train->precision ? tr->train->precision : "fp32", *force = getenv("DPOD_LOSS_SCALE");
  dpo_loss_scale_params p = dpo_loss_scale_default_params();
  if (tr->train->loss_scale) {
    p.init_scale = tr->train->loss_scale->init_scale;
    p.growth_interval = tr->train->loss_scale->growth_interval;
  }
  tr->scaling = strcmp(prec, "fp16") == 0;
  if (force && strncmp(force, "force", 5) == 0) {
    tr->scaling = 1;
    double init;
    unsigned interval;
    if (force[5] == ':' && sscanf(force + 6, "%lf:%u", &init, &interval) == 2) {
      p.init_scale = init;
      p.growth_interval = interval;
    } else if (force[5] != '\0') {
      worker_die_input("DPOD_LOSS_SCALE: expected force or force:INIT:INTERVAL");
    }
  }
  char err[256];
  if (tr->scaling && dpo_loss_scaler_init(&tr->scaler, &p, err, sizeof err) != 0)
    worker_die_input("train.loss_scale: %s", err);
  const char *k = getenv("DPOD_TEST_NONFINITE_STEP"), *r = getenv("DPOD_TEST_NONFINITE_RANK");
  uint64_t v;
  if (k && (dpod_parse_u64(k, UINT32_MAX, &v) != 0 || v == 0))
    worker_die_input("DPOD_TEST_NONFINITE_STEP: expected a step number from 1");
  tr->poison_step = k ? (uint32_t)v : 0;
  if (r && (dpod_parse_u64(r, 4096, &v) != 0)) worker_die_input("DPOD_TEST_NONFINITE_RANK: expected a rank number");
  tr->poison_rank = r ? (int)v : 0;
  if (g_rank == 0 && tr->scaling)
    log_info("loss scaling: initial scale %g, doubled after %u clean steps, halved on inf/nan gradients (the step "
             "skipped)%s",
             tr->scaler.scale, tr->scaler.p.growth_interval, strcmp(prec, "fp16") ? " (forced by DPOD_LOSS_SCALE)" : "");
  if (g_rank == 0 && tr->poison_step && tr->scaling)
    log_info("test: an inf goes into rank %d's gradient at step %u (DPOD_TEST_NONFINITE_STEP)", tr->poison_rank,
             tr->poison_step);
  else if (g_rank == 0 && tr->poison_step)
    log_warn("DPOD_TEST_NONFINITE_STEP is ignored: this run does not scale its loss");
}

static void trainer_init(trainer *tr, const Dpod__V1__JobSpec *spec) {
  memset(tr, 0, sizeof *tr);
  tr->spec = spec;
  tr->train = spec->train;
  tr->dpo = spec->train->objective == DPOD__V1__OBJECTIVE__OBJECTIVE_DPO;
  char err[1024];
  if (spec->train->keep_best && *spec->train->keep_best)
    tr->best_lower = job_spec_keep_best_lower(spec->train->keep_best, &tr->best_field);
  if (g_rank == 0 && provenance_dataset_hash(spec, tr->dataset_hash, sizeof tr->dataset_hash, err, sizeof err) != 0)
    worker_die_input("data.dataset: %s", err);

  /* Model and reference: files, sharded checkpoints or model folders (proto/spec/model_source.h), whose
   * configs must agree with model.config and with each other. */
  const Dpod__V1__ModelSpec *ms = spec->model;
  model_source *src = alloc_array(2, sizeof *src); /* policy, reference */
  const model_source *policy_src = NULL, *ref_src = NULL;
  if (*ms->weights) {
    if (model_source_resolve("model.weights", ms->weights, ms->variant, &src[0], err, sizeof err) != 0)
      worker_die_input("%s", err);
    policy_src = &src[0];
  }
  if (*ms->reference_weights) {
    if (model_source_resolve("model.reference_weights", ms->reference_weights, ms->variant, &src[1], err, sizeof err) != 0)
      worker_die_input("%s", err);
    ref_src = &src[1];
  }
  char *config_text = NULL;
  const char *config_name = "(built-in)";
  int crc = model_spec_config(ms, policy_src, ref_src, &config_text, &config_name, err, sizeof err);
  if (crc == DPOD_ENOMEM) worker_die("%s", err);
  if (crc != 0) worker_die_input("%s", err);
  tr->policy = build_unet(config_text, config_name, spec, policy_src);
  unet_get_info(tr->policy, &tr->info);
  if (g_rank == 0 && unet_host_copies(tr->policy))
    log_info("%s: gradients all-reduced through a host staging buffer", unet_device(tr->policy));
  /* SDXL's added conditioning takes pooled prompt embeddings (the dataset must store them) and six time
   * ids per image (the dataset's, else the reference script's default). */
  if (tr->info.text_embeds_dim > 0 && tr->info.num_time_ids != DATASET_NUM_TIME_IDS)
    worker_die_input("model config %s: the added conditioning takes %d time ids; the dataset format has %d",
                     config_name, tr->info.num_time_ids, DATASET_NUM_TIME_IDS);
  size_t nparam = 0;
  float *params = unet_param_buffer(tr->policy, &nparam);
  if (!params) worker_die("the policy's weights: %s", unet_last_error(tr->policy));
  /* Random initialisation is seeded identically on every rank, but broadcasting rank 0's weights makes
   * identical replicas a guarantee rather than an assumption about libtorch's RNG. */
  bcast_floats(params, nparam, "the initial weights");
  tr->lora = lora_setup(tr->policy, spec);
  if (spec->train->gradient_checkpointing && unet_set_gradient_checkpointing(tr->policy, 1) != 0)
    worker_die("train.gradient_checkpointing: %s", unet_last_error(tr->policy));
  if (tr->dpo && !tr->lora) {
    const char *ref_weights = ref_src ? ref_src->weights : NULL;
    tr->ref = build_unet(config_text, config_name, spec, ref_src);
    if (!ref_weights && unet_copy_weights(tr->ref, tr->policy) != 0) worker_die("%s", unet_last_error(tr->ref));
    if (ref_weights) {
      size_t n = 0;
      float *rp = unet_param_buffer(tr->ref, &n);
      if (!rp) worker_die("the reference's weights: %s", unet_last_error(tr->ref));
      bcast_floats(rp, n, "the reference weights");
    }
    if (unet_freeze(tr->ref) != 0) worker_die("freezing the reference: %s", unet_last_error(tr->ref));
  }
  free(config_text);

  /* Noise schedule: model.scheduler_config, else the policy folder's, else SD 1.5's. */
  const char *sched_path = NULL;
  if (model_scheduler_config(ms->scheduler_config, policy_src, &tr->sched_json, &sched_path, err, sizeof err) != 0)
    worker_die_input("model.scheduler_config %s", err);
  if (tr->sched_json) {
    if (dpo_schedule_from_json(&tr->sched, tr->sched_json, err, sizeof err) != 0)
      worker_die_input("%s: %s", sched_path, err);
    if (!*ms->scheduler_config && g_rank == 0) log_info("noise schedule from %s", sched_path);
  } else if (dpo_schedule_default(&tr->sched) != 0 || !(tr->sched_json = strdup(model_default_scheduler_json))) {
    worker_die("out of memory");
  }
  free(src);

  /* Data. */
  const Dpod__V1__DataSpec *d = spec->data;
  int evaluate = tr->train->eval_every > 0;
  if (strcmp(d->dataset, "builtin:synthetic") == 0) {
    dataset_builtin_params dp = {.pairs = d->pairs,
                                 .prompts = d->prompts,
                                 .text_len = d->text_len,
                                 .seed = d->seed,
                                 .channels = tr->info.in_channels,
                                 .height = tr->info.sample_size,
                                 .width = tr->info.sample_size,
                                 .embed_dim = tr->info.cross_attention_dim,
                                 .mode_noise = 0.3,
                                 .pooled_dim = tr->info.text_embeds_dim};
    if (dataset_builtin(&dp, &tr->data, err, sizeof err) != 0) worker_die("%s", err);
    /* Held-out pairs: the same prompts and modes, fresh samples around them. */
    dp.held_out = 1;
    if (evaluate && dataset_builtin(&dp, &tr->val, err, sizeof err) != 0) worker_die("%s", err);
  } else {
    /* A preference dataset directory (docs/dataset-format.md), checked against the model's shapes. */
    dataset_open_params op = dataset_open_default_params();
    op.split = d->split;
    op.channels = tr->info.in_channels;
    op.height = op.width = tr->info.sample_size;
    op.embed_dim = tr->info.cross_attention_dim;
    op.pooled_dim = tr->info.text_embeds_dim;
    if (dataset_open(d->dataset, &op, &tr->data, err, sizeof err) != 0) worker_die_input("data.dataset: %s", err);
    if (evaluate) {
      op.split = d->validation_split;
      if (dataset_open(d->dataset, &op, &tr->val, err, sizeof err) != 0) worker_die_input("data.validation_split: %s", err);
      /* The synthetic task knows its reward: evaluations then also sample and score latents. */
      char path[4200];
      snprintf(path, sizeof path, "%s/%s", d->dataset, SYNTH_FILE);
      if (access(path, R_OK) == 0 && synth_task_load(d->dataset, &tr->task, err, sizeof err) != 0)
        worker_die("%s", err);
    }
  }
  tr->draw_latents = worker_latent_source(d, &tr->data);
  if (d->caption_dropout > 0 && !tr->data.has_empty_prompt)
    worker_die_input("data.caption_dropout is %g but the dataset stores no empty-prompt embedding", d->caption_dropout);
  if (tr->info.text_embeds_dim > 0) {
    float *probe = alloc_array((size_t)tr->info.text_embeds_dim, sizeof(float));
    if (d->caption_dropout > 0 && dataset_copy_empty_pooled(&tr->data, probe) != 0)
      worker_die_input("data.caption_dropout is %g but the dataset stores no pooled embedding of the empty prompt",
                       d->caption_dropout);
    free(probe);
  }
  tr->img = dataset_image_size(&tr->data);
  tr->emb = (size_t)tr->data.text_len * tr->data.embed_dim;

  uint32_t b = tr->train->batch_size, a = tr->train->grad_accum;
  tr->global_batch = (uint64_t)b * a * (uint64_t)g_world; /* < 2^96: no overflow in 64 bits for these inputs */
  if (b == 0 || (uint64_t)b * a > UINT32_MAX / (uint64_t)g_world)
    worker_die_input("a global batch of ranks %d x batch_size %u x grad_accum %u pairs is too large", g_world, b, a);
  if (tr->data.num_pairs < tr->global_batch)
    worker_die_input("the dataset has %zu pairs, fewer than one global batch of %" PRIu64 " (ranks %d x batch_size %u x "
               "grad_accum %u)", tr->data.num_pairs, tr->global_batch, g_world, b, a);
  if (sampler_init(&tr->sampler, tr->data.num_pairs, tr->global_batch, tr->train->seed) != 0)
    worker_die("out of memory");

  /* Learning rate: the reference script's scaling rule and warmup as steps or as a fraction of the run. */
  tr->peak_lr = tr->train->learning_rate;
  if (tr->train->scale_lr) tr->peak_lr *= (double)b * a * g_world;
  tr->warmup_steps = tr->train->warmup_fraction > 0
                         ? (uint32_t)llround(tr->train->warmup_fraction * tr->train->steps)
                         : tr->train->warmup_steps;
  /* job_spec_validate has checked the names; their indexes are the enums' values (job_spec.h). */
  tr->loss = (dpo_loss_kind)job_spec_loss_index(tr->train->loss);
  tr->lr_kind = (dpo_lr_kind)job_spec_lr_scheduler_index(tr->train->lr_scheduler);
  /* Adafactor runs on host buffers only (workers/shim/adafactor.cpp): say so before the first step. */
  if (job_spec_optimizer_index(tr->train->optimizer) == 1 && strncmp(unet_device(tr->policy), "cpu", 3) != 0)
    worker_die_input("train.optimizer adafactor runs on the CPU only; this rank trains on %s (train.device)",
                     unet_device(tr->policy));
  if (job_spec_optimizer_index(tr->train->optimizer) == 1 &&
      unet_adafactor_new(tr->policy, &tr->adafactor, err, sizeof err) != 0)
    worker_die("train.optimizer adafactor: %s", err);
  loss_scaling_setup(tr);

  size_t n = 2 * (size_t)b;
  tr->x0 = alloc_array(n * tr->img, sizeof(float));
  tr->noise = alloc_array(n * tr->img, sizeof(float));
  tr->x_t = alloc_array(n * tr->img, sizeof(float));
  tr->target = alloc_array(n * tr->img, sizeof(float));
  tr->pred = alloc_array(n * tr->img, sizeof(float));
  tr->ehs = alloc_array(n * tr->emb, sizeof(float));
  tr->timesteps = alloc_array(n, sizeof(float));
  tr->t_int = alloc_array(n, sizeof(int64_t));
  tr->mse_policy = alloc_array(n, sizeof(float));
  tr->mse_ref = alloc_array(n, sizeof(float));
  tr->grad_mse = alloc_array(n, sizeof(float));
  if (tr->info.text_embeds_dim > 0) {
    tr->pooled = alloc_array(n * (size_t)tr->info.text_embeds_dim, sizeof(float));
    tr->time_ids = alloc_array(n * DATASET_NUM_TIME_IDS, sizeof(float));
    tr->added.text_embeds = tr->pooled;
    tr->added.time_ids = tr->time_ids;
  }
  tr->batch_pairs = alloc_array(b, sizeof(size_t));
  tr->batch_keys = alloc_array(b, sizeof(uint64_t));
}

/* Fills the micro-batch buffers with b pairs of `ds`: winners in rows 0..b-1, losers in rows b..2b-1.
 * Pair i's noise, timestep and caption dropout are drawn from an RNG stream keyed by (seed, keys[i]),
 * and the winner and loser share them. */
static void fill_pairs(trainer *tr, const dpo_dataset *ds, const size_t *pairs, const uint64_t *keys, uint64_t seed,
                       int b) {
  const int T = tr->sched.num_train_timesteps;
  const double dropout = ds == &tr->data ? tr->spec->data->caption_dropout : 0.0;
  const size_t P = (size_t)tr->info.text_embeds_dim;
  /* [winners; losers], the prompt (and its pooled embedding) repeated for both; copies, not views:
   * on-disk latents may be F16. */
  if (dataset_fill_batch(ds, pairs, b, tr->x0, tr->ehs, tr->pooled, tr->time_ids) != 0)
    worker_die("filling a batch: a pair out of range");
  /* Training latents drawn as the reference scripts draw them (posterior.h); evaluations keep the frozen
   * ones (the posterior's mean without frozen latents), so every evaluation sees the same inputs. */
  if (ds == &tr->data && tr->draw_latents &&
      posterior_fill_batch(ds, pairs, keys, b, seed, tr->spec->data->random_flip, tr->x0) != 0)
    worker_die("filling a batch: drawing latents from the posteriors failed");
  for (int i = 0; i < b; i++) {
    dpo_rng r;
    dpo_rng_seed(&r, seed, keys[i]);
    int64_t t = dpo_rng_below(&r, (uint32_t)T);
    float *e = tr->noise + (size_t)i * tr->img;
    dpo_rng_fill_normal(&r, e, tr->img);
    if (tr->train->offset_noise > 0) {
      /* Offset noise: one extra normal per channel, constant over the image. */
      size_t hw = (size_t)ds->height * ds->width;
      for (int c = 0; c < ds->channels; c++) {
        float off = (float)(tr->train->offset_noise * dpo_rng_normal(&r));
        for (size_t j = 0; j < hw; j++) e[(size_t)c * hw + j] += off;
      }
    }
    /* Drawn last, so enabling dropout leaves every other number of the stream as it was. */
    if (dropout > 0 && dpo_rng_uniform(&r) < dropout) {
      dataset_copy_empty_prompt(ds, tr->ehs + (size_t)i * tr->emb);
      memcpy(tr->ehs + (size_t)(b + i) * tr->emb, tr->ehs + (size_t)i * tr->emb, sizeof(float) * tr->emb);
      if (tr->pooled) {
        dataset_copy_empty_pooled(ds, tr->pooled + (size_t)i * P);
        memcpy(tr->pooled + (size_t)(b + i) * P, tr->pooled + (size_t)i * P, sizeof(float) * P);
      }
    }
    memcpy(tr->noise + (size_t)(b + i) * tr->img, e, sizeof(float) * tr->img);
    tr->t_int[i] = tr->t_int[b + i] = t;
  }
  for (int i = 0; i < 2 * b; i++) tr->timesteps[i] = (float)tr->t_int[i];
  dpo_add_noise(&tr->sched, 2 * b, tr->img, tr->x0, tr->noise, tr->t_int, tr->x_t, tr->target);
}

/* The training pairs at global positions g0 .. g0 + b - 1, keyed by their position, so the numbers do
 * not depend on how the global batch is split over ranks. */
static void trainer_fill_batch(trainer *tr, uint64_t g0, int b) {
  for (int i = 0; i < b; i++) {
    tr->batch_keys[i] = g0 + (uint64_t)i;
    tr->batch_pairs[i] = sampler_pair(&tr->sampler, tr->batch_keys[i]);
  }
  fill_pairs(tr, &tr->data, tr->batch_pairs, tr->batch_keys, tr->train->seed, b);
}

/* One micro-batch: forward both models, the loss in C, backward into the gradient buffer. */
static void trainer_micro_step(trainer *tr, uint64_t g0, dpo_loss_sums *sums) {
  const int b = (int)tr->train->batch_size;
  const int h = tr->data.height, w = tr->data.width, L = tr->data.text_len;
  trainer_fill_batch(tr, g0, b);
  const double scale = 1.0 / (double)tr->global_batch;
  /* sft trains on the winners only: rows 0..B-1. */
  int n = tr->dpo ? 2 * b : b;
  const unet_added_cond *added = tr->pooled ? &tr->added : NULL;
  if (unet_forward_mse_added(tr->policy, n, h, w, L, tr->x_t, tr->timesteps, tr->ehs, added, tr->target,
                             tr->mse_policy, NULL) != 0)
    worker_die("policy forward: %s", unet_last_error(tr->policy));
  if (tr->dpo) {
    reference_forward(tr, n, h, w, L, tr->mse_ref, NULL);
    dpo_pref_loss(tr->loss, b, tr->mse_policy, tr->mse_ref, tr->train->beta, scale, sums, NULL, tr->grad_mse);
  } else {
    sft_loss(b, tr->mse_policy, NULL, scale, sums, tr->grad_mse);
  }
  /* Loss scaling: the backward starts from the scaled loss; a power of two, so exactly. */
  if (tr->scaling)
    for (int i = 0; i < n; i++) tr->grad_mse[i] = (float)((double)tr->grad_mse[i] * tr->scaler.scale);
  if (unet_backward_mse(tr->policy, tr->grad_mse) != 0)
    worker_die("backward: %s", unet_last_error(tr->policy));
}

/* Sums the gradient buffer over ranks in a few large in-place calls, on the host: a device model's
 * gradient goes through the shim's (pinned) staging buffer and back; on the CPU the staging buffer is
 * the gradient buffer itself. With LoRA only the adapters have gradients, and only they are staged.
 * With loss scaling (also on one rank) the summed buffer is then unscaled, on every rank alike, and the
 * return value says whether it held an inf or a nan (1) or not (0); without, 0. */
static int allreduce_grads(trainer *tr, uint32_t step) {
  const int poison = tr->scaling && step == tr->poison_step && g_rank == tr->poison_rank;
  if (g_world == 1 && !tr->scaling) return 0;
  size_t n = 0;
  float *g = unet_grad_stage(tr->policy, &n);
  if (!g) worker_die("the gradient buffer: %s", unet_last_error(tr->policy));
  if (poison && n > 0) g[n / 2] = INFINITY;
  for (size_t off = 0; g_world > 1 && off < n; off += g_mpi_chunk) {
    size_t len = n - off < g_mpi_chunk ? n - off : g_mpi_chunk;
    if (MPI_Allreduce(MPI_IN_PLACE, g + off, (int)len, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD) != MPI_SUCCESS)
      worker_die("MPI_Allreduce of gradients failed");
  }
  int nonfinite = tr->scaling ? dpo_loss_scale_unscale(tr->scaler.scale, g, n) : 0;
  if (unet_grad_unstage(tr->policy) != 0) worker_die("the gradient buffer: %s", unet_last_error(tr->policy));
  return nonfinite;
}

static void report(trainer *tr, const Dpod__V1__WorkerEvent *ev) {
  if (tr->rep && reporter_push(tr->rep, ev) != 0) log_warn("cannot queue a report");
}

/* Progress that is not a step (an evaluation batch, a checkpoint file), so that dpod's watchdog can tell
 * a slow phase from a hang. Only the training loop calls this, never the reporter's own thread: a rank
 * stuck in a collective must look stuck. */
static void heartbeat(trainer *tr, uint32_t step, const char *phase) {
  if (g_rank != 0 || !tr->rep) return;
  Dpod__V1__WorkerHeartbeat hb = DPOD__V1__WORKER_HEARTBEAT__INIT;
  hb.has_step = 1;
  hb.step = step;
  hb.phase = (char *)phase;
  Dpod__V1__WorkerEvent ev = DPOD__V1__WORKER_EVENT__INIT;
  ev.event_case = DPOD__V1__WORKER_EVENT__EVENT_HEARTBEAT;
  ev.heartbeat = &hb;
  report(tr, &ev);
}

/* keep_last removed an older checkpoint: dpod stops listing it. */
static void report_pruned(uint32_t step, const char *dir, void *arg) {
  trainer *tr = arg;
  Dpod__V1__CheckpointRemoved rm = DPOD__V1__CHECKPOINT_REMOVED__INIT;
  rm.has_step = 1;
  rm.step = step;
  rm.path = (char *)dir;
  Dpod__V1__WorkerEvent ev = DPOD__V1__WORKER_EVENT__INIT;
  ev.event_case = DPOD__V1__WORKER_EVENT__EVENT_CHECKPOINT_REMOVED;
  ev.checkpoint_removed = &rm;
  report(tr, &ev);
}

/* The optimizer's state as ckpt_optimizer describes it: AdamW's moments over the flat parameter buffer,
 * or Adafactor's factored moments; the buffers are the optimizer's own. */
static void optimizer_state(trainer *tr, ckpt_optimizer *o) {
  memset(o, 0, sizeof *o);
  if (tr->adafactor) {
    o->format = "dpod-adafactor";
    o->num_tensors = 1;
    o->names[0] = "state";
    if (unet_adafactor_state(tr->adafactor, &o->data[0], &o->numel[0], &o->step) != 0)
      worker_die("%s", unet_adafactor_last_error(tr->adafactor));
    return;
  }
  o->format = "dpod-adamw";
  o->num_tensors = 2;
  o->names[0] = "exp_avg";
  o->names[1] = "exp_avg_sq";
  if (unet_adamw_state(tr->policy, &o->data[0], &o->data[1], &o->numel[0], &o->step) != 0)
    worker_die("%s", unet_last_error(tr->policy));
  o->numel[1] = o->numel[0];
}

/* Writes optimizer.safetensors: the optimizer's state and its step count. */
static void save_optimizer(trainer *tr, const char *dir) {
  ckpt_optimizer o;
  char err[4400];
  optimizer_state(tr, &o);
  if (ckpt_write_optimizer(dir, &o, err, sizeof err) != 0) worker_die("%s", err);
}

/* A LoRA checkpoint's weights: pytorch_lora_weights.safetensors as diffusers' save_lora_weights writes it
 * (alpha / rank folded into the up weights) and the adapters as trained, for an exact resume. */
static void save_lora(trainer *tr, const char *dir) {
  char path[4200];
  snprintf(path, sizeof path, "%s/%s", dir, CKPT_LORA_WEIGHTS);
  if (unet_lora_save(tr->policy, path, 1, NULL) != 0) worker_die("saving %s: %s", path, unet_last_error(tr->policy));
  snprintf(path, sizeof path, "%s/%s", dir, CKPT_LORA_STATE);
  if (unet_lora_save(tr->policy, path, 0, NULL) != 0) worker_die("saving %s: %s", path, unet_last_error(tr->policy));
}

/* The checkpoint protocol of checkpoint.h, collectively: every rank calls this at the same step. */
static void trainer_checkpoint(trainer *tr, uint32_t step, const char *run_dir, Dpod__V1__StepMetrics *m) {
  char partial[4096], final[4096], err[1024];
  ckpt_dir(run_dir, step, 1, partial, sizeof partial);
  ckpt_dir(run_dir, step, 0, final, sizeof final);
  double t0 = now_seconds();
  if (g_rank == 0 && ckpt_begin(run_dir, step, err, sizeof err) != 0) worker_die("%s", err);
  MPI_Barrier(MPI_COMM_WORLD);
  if (g_rank == 0) {
    if (tr->lora)
      save_lora(tr, partial);
    else if (unet_save(tr->policy, partial, NULL) != 0)
      worker_die("saving %s: %s", partial, unet_last_error(tr->policy));
    heartbeat(tr, step, "checkpoint");
    save_optimizer(tr, partial);
    if (tr->scaling && dpo_loss_scaler_save(&tr->scaler, partial, err, sizeof err) != 0) worker_die("%s", err);
    const Dpod__V1__EvalMetrics *eval = tr->have_eval && tr->last_eval.step == step ? &tr->last_eval : NULL;
    if (provenance_write(partial, step, tr->spec, tr->dataset_hash, unet_torch_version(), eval, err, sizeof err) != 0)
      worker_die("%s", err);
    /* The schedule too, so that the checkpoint names a complete model folder (model_source.h). */
    if (ckpt_write_text(partial, DIFFUSERS_SCHEDULER_CONFIG_NAME, tr->sched_json, err, sizeof err) != 0)
      worker_die("%s", err);
    heartbeat(tr, step, "checkpoint");
  }
  ckpt_rank_state st = {.world_size = (uint32_t)g_world,
                        .rank = (uint32_t)g_rank,
                        .step = step,
                        .data_position = (uint64_t)step * tr->global_batch,
                        .seed = tr->train->seed};
  if (ckpt_write_rank_state(partial, &st, err, sizeof err) != 0) worker_die("%s", err);
  MPI_Barrier(MPI_COMM_WORLD);
  if (g_rank != 0) return;
  uint64_t bytes = 0;
  if (ckpt_commit(run_dir, step, (uint32_t)g_world, &bytes, err, sizeof err) != 0) worker_die("%s", err);
  log_info("checkpoint %s: %.1f MB in %.2f s", final, (double)bytes / 1e6, now_seconds() - t0);
  Dpod__V1__CheckpointInfo ck = DPOD__V1__CHECKPOINT_INFO__INIT;
  ck.has_step = 1;
  ck.step = step;
  ck.path = final;
  ck.has_size_bytes = 1;
  ck.size_bytes = bytes;
  ck.metrics = m;
  Dpod__V1__WorkerEvent ev = DPOD__V1__WORKER_EVENT__INIT;
  ev.event_case = DPOD__V1__WORKER_EVENT__EVENT_CHECKPOINT;
  ev.checkpoint = &ck;
  report(tr, &ev);
  /* After the new one is reported, so that dpod never lists fewer than keep_last. */
  ckpt_prune_keep_best(run_dir, tr->train->keep_last, tr->best_field, tr->best_lower, report_pruned, tr);
}

/* Continues from the newest complete checkpoint in run_dir, if any: policy weights, optimizer state and
 * data position, checked against this run's world size and seed. Returns the steps already done. */
static uint32_t trainer_resume(trainer *tr, const char *run_dir) {
  char dir[4096] = "", err[1024];
  uint32_t step = 0;
  if (g_rank == 0 && !ckpt_find_latest(run_dir, &step, dir, sizeof dir)) step = 0;
  MPI_Bcast(&step, 1, MPI_UINT32_T, 0, MPI_COMM_WORLD);
  if (step == 0) return 0;
  MPI_Bcast(dir, sizeof dir, MPI_CHAR, 0, MPI_COMM_WORLD);

  ckpt_rank_state st;
  if (ckpt_read_rank_state(dir, (uint32_t)g_rank, &st, err, sizeof err) != 0) worker_die("resume: %s", err);
  if (st.world_size != (uint32_t)g_world)
    worker_die_input("resume: %s was written by %u ranks, this run has %d; resume with the same ranks", dir, st.world_size,
               g_world);
  if (st.seed != tr->train->seed || st.step != step || st.data_position != (uint64_t)step * tr->global_batch)
    worker_die("resume: %s does not belong to this job (seed, step or batch size differ)", dir);

  char path[4200];
  snprintf(path, sizeof path, "%s/%s", dir, tr->lora ? CKPT_LORA_STATE : CKPT_WEIGHTS);
  if (access(path, R_OK) != 0)
    worker_die_input("resume: %s has no %s: it was written %s LoRA, and this job trains %s", dir,
                     tr->lora ? CKPT_LORA_STATE : CKPT_WEIGHTS, tr->lora ? "without" : "with",
                     tr->lora ? "with it" : "without it");
  if ((tr->lora ? unet_lora_load(tr->policy, path) : unet_load_weights(tr->policy, path)) != 0)
    worker_die("resume: %s", unet_last_error(tr->policy));

  ckpt_optimizer o;
  optimizer_state(tr, &o);
  int rc = ckpt_read_optimizer(dir, &o, err, sizeof err);
  if (rc == DPOD_EFORMAT && strstr(err, "train.optimizer")) worker_die_input("resume: %s", err);
  if (rc != 0) worker_die("resume: %s", err);
  if (tr->adafactor ? unet_adafactor_set_step(tr->adafactor, o.step) != 0 : unet_adamw_set_step(tr->policy, o.step) != 0)
    worker_die("resume: the optimizer's step count %" PRIu64 " was refused", o.step);
  /* The loss scaler's state; a checkpoint written without scaling has none and starts it afresh. */
  if (tr->scaling) {
    rc = dpo_loss_scaler_load(&tr->scaler, dir, err, sizeof err);
    if (rc == DPOD_ENOENT && g_rank == 0)
      log_info("resume: %s holds no loss scale: starting at %g", dir, tr->scaler.scale);
    else if (rc != 0 && rc != DPOD_ENOENT)
      worker_die("resume: %s", err);
  }
  if (g_rank == 0) log_info("resumed from %s (step %u)", dir, step);
  return step;
}

/* ---- Evaluation ---------------------------------------------------------------------------------- */

/* Salts of the evaluation's RNG streams: the same held-out noise and the same starting latents at every
 * evaluation of a run, so successive numbers differ only because the model did. */
#define EVAL_PAIR_SALT 0x6576616c2d706169ull
#define EVAL_SAMPLE_SALT 0x6576616c2d736d70ull

/* Per-sample MSE of the last inference forward (tr->pred) against tr->target: mse [n]. */
static void pred_mse(const trainer *tr, int n, float *mse) {
  for (int i = 0; i < n; i++) {
    const float *p = tr->pred + (size_t)i * tr->img, *q = tr->target + (size_t)i * tr->img;
    double acc = 0;
    for (size_t j = 0; j < tr->img; j++) acc += (double)(p[j] - q[j]) * (p[j] - q[j]);
    mse[i] = (float)(acc / (double)tr->img);
  }
}

/* Scores k held-out pairs with both models, no gradients. */
static void eval_pairs_chunk(trainer *tr, const size_t *pairs, const uint64_t *keys, int k, dpo_loss_sums *sums) {
  const int h = tr->val.height, w = tr->val.width, L = tr->val.text_len;
  fill_pairs(tr, &tr->val, pairs, keys, tr->train->seed ^ EVAL_PAIR_SALT, k);
  const unet_added_cond *added = tr->pooled ? &tr->added : NULL;
  if (unet_forward_added(tr->policy, 2 * k, h, w, L, tr->x_t, tr->timesteps, tr->ehs, added, tr->pred) != 0)
    worker_die("evaluation forward: %s", unet_last_error(tr->policy));
  pred_mse(tr, 2 * k, tr->mse_policy);
  reference_forward(tr, 2 * k, h, w, L, NULL, tr->pred);
  pred_mse(tr, 2 * k, tr->mse_ref);
  dpo_pref_loss(tr->loss, k, tr->mse_policy, tr->mse_ref, tr->train->beta, 0.0, sums, NULL, NULL);
}

static int eval_model(void *ctx, int n, const float *x_t, const float *t, const float *ehs, const float *text_embeds,
                      const float *time_ids, float *out) {
  trainer *tr = ctx;
  unet_added_cond added = {.text_embeds = text_embeds, .time_ids = time_ids};
  return unet_forward_added(tr->policy, n, tr->data.height, tr->data.width, tr->data.text_len, x_t, t, ehs,
                            text_embeds ? &added : NULL, out);
}

/* Samples this rank's share of eval_samples latents with DDIM and scores them against the synthetic
 * task's known modes. Sample k uses prompt k mod P and starts from noise keyed by k. */
static void eval_samples(trainer *tr, double *preferred, double *distance, double *count) {
  const uint32_t total = tr->train->eval_samples;
  uint32_t mine = 0;
  for (uint32_t k = (uint32_t)g_rank; k < total; k += (uint32_t)g_world) mine++;
  if (mine == 0) return;
  float *x = malloc(sizeof(float) * mine * tr->img), *ehs = malloc(sizeof(float) * mine * tr->emb);
  float *uncond = malloc(sizeof(float) * tr->emb);
  uint32_t *prompts = malloc(sizeof(uint32_t) * mine);
  if (!x || !ehs || !uncond || !prompts) worker_die("out of memory");
  uint32_t i = 0;
  for (uint32_t k = (uint32_t)g_rank; k < total; k += (uint32_t)g_world, i++) {
    prompts[i] = k % tr->task.prompts;
    dataset_copy_prompt_row(&tr->val, prompts[i], ehs + (size_t)i * tr->emb);
    dpo_rng r;
    dpo_rng_seed(&r, tr->train->seed ^ EVAL_SAMPLE_SALT, k);
    dpo_rng_fill_normal(&r, x + (size_t)i * tr->img, tr->img);
  }
  ddim_params dp = ddim_default_params();
  dp.steps = (int)tr->train->eval_sample_steps;
  dp.guidance = tr->train->eval_guidance;
  int guided = dp.guidance > 1 && dataset_copy_empty_prompt(&tr->val, uncond) == 0;
  /* SDXL: the prompts' pooled embeddings (the empty prompt's for guidance's unconditional rows) and the
   * reference script's default time ids [res, res, 0, 0, res, res], res = 8 x the latent size. */
  const size_t P = (size_t)tr->info.text_embeds_dim;
  ddim_added added = {.pooled = P};
  float *pooled = NULL, *uncond_pooled = NULL, *time_ids = NULL;
  if (P > 0) {
    pooled = alloc_array(mine * P, sizeof(float));
    uncond_pooled = alloc_array(P, sizeof(float));
    time_ids = alloc_array((size_t)mine * DATASET_NUM_TIME_IDS, sizeof(float));
    const float rh = 8.0f * (float)tr->val.height, rw = 8.0f * (float)tr->val.width;
    const float def[DATASET_NUM_TIME_IDS] = {rh, rw, 0, 0, rh, rw};
    for (i = 0; i < mine; i++) {
      if (dataset_copy_pooled_row(&tr->val, prompts[i], pooled + (size_t)i * P) != 0)
        worker_die("evaluation sampling: the dataset has no pooled embedding of prompt %u", prompts[i]);
      memcpy(time_ids + (size_t)i * DATASET_NUM_TIME_IDS, def, sizeof def);
    }
    if (guided && dataset_copy_empty_pooled(&tr->val, uncond_pooled) != 0) {
      log_warn("evaluation sampling without guidance: the dataset has no pooled embedding of the empty prompt");
      guided = 0;
    }
    added.text_embeds = pooled;
    added.uncond_text_embeds = uncond_pooled;
    added.time_ids = time_ids;
  }
  char err[512];
  if (ddim_sample_added(&tr->sched, &dp, eval_model, tr, (int)mine, tr->img, tr->emb, ehs, guided ? uncond : NULL,
                        P > 0 ? &added : NULL, x, err, sizeof err) != 0)
    worker_die("evaluation sampling: %s", err);
  free(pooled);
  free(uncond_pooled);
  free(time_ids);
  synth_eval ev;
  if (synth_evaluate(&tr->task, mine, x, prompts, &ev) != 0) worker_die("evaluation: prompt out of range");
  *preferred += ev.preferred_rate * (double)ev.samples;
  *distance += ev.mean_distance * (double)ev.samples;
  *count += (double)ev.samples;
  free(x);
  free(ehs);
  free(uncond);
  free(prompts);
}

/* An evaluation, collectively over all ranks: held-out implicit accuracy and loss (dpo), and on the
 * synthetic task the preferred-mode rate and distance to the modes of sampled latents. */
static void trainer_eval(trainer *tr, uint32_t step) {
  double t0 = now_seconds();
  /* loss, acc, margin, pairs, preferred, distance, samples */
  double red[7] = {0};
  if (tr->dpo && tr->val.num_pairs > 0) {
    size_t n_eval = tr->val.num_pairs;
    if (tr->train->eval_pairs > 0 && tr->train->eval_pairs < n_eval) n_eval = tr->train->eval_pairs;
    const int b = (int)tr->train->batch_size;
    size_t *pairs = tr->batch_pairs;
    uint64_t *keys = tr->batch_keys;
    int k = 0;
    dpo_loss_sums sums = {0};
    for (size_t i = (size_t)g_rank; i < n_eval; i += (size_t)g_world) {
      pairs[k] = i;
      keys[k] = i;
      if (++k == b) {
        eval_pairs_chunk(tr, pairs, keys, k, &sums);
        heartbeat(tr, step, "eval");
        k = 0;
      }
    }
    if (k > 0) eval_pairs_chunk(tr, pairs, keys, k, &sums);
    heartbeat(tr, step, "eval");
    red[0] = sums.loss_sum;
    red[1] = sums.acc_sum;
    red[2] = sums.margin_sum;
    red[3] = sums.pairs;
  }
  if (tr->task.prompts > 0 && tr->train->eval_samples > 0) eval_samples(tr, &red[4], &red[5], &red[6]);
  if (g_world > 1 && MPI_Allreduce(MPI_IN_PLACE, red, 7, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD) != MPI_SUCCESS)
    worker_die("MPI_Allreduce of evaluation sums failed");
  if (g_rank != 0) return;

  Dpod__V1__EvalMetrics e = DPOD__V1__EVAL_METRICS__INIT;
  e.has_step = 1;
  e.step = step;
  char line[512];
  int n = snprintf(line, sizeof line, "eval step %u:", step);
  if (red[3] > 0) {
    e.has_pairs = e.has_loss = e.has_implicit_acc = e.has_reward_margin = 1;
    e.pairs = (uint32_t)red[3];
    e.loss = red[0] / red[3];
    e.implicit_acc = red[1] / red[3];
    e.reward_margin = red[2] / red[3];
    n += snprintf(line + n, sizeof line - (size_t)n, " held-out acc %.3f loss %.4f (%u pairs)", e.implicit_acc, e.loss,
                  e.pairs);
  }
  if (red[6] > 0) {
    e.has_samples = e.has_preferred_mode_rate = e.has_mode_distance = 1;
    e.samples = (uint32_t)red[6];
    e.preferred_mode_rate = red[4] / red[6];
    e.mode_distance = red[5] / red[6];
    n += snprintf(line + n, sizeof line - (size_t)n, "; samples: preferred mode %.1f%%, distance to modes %.3f (%u)",
                  100.0 * e.preferred_mode_rate, e.mode_distance, e.samples);
  }
  log_info("%s in %.2f s", line, now_seconds() - t0);
  tr->last_eval = e; /* scalars only: safe to keep */
  tr->have_eval = 1;
  Dpod__V1__WorkerEvent ev = DPOD__V1__WORKER_EVENT__INIT;
  ev.event_case = DPOD__V1__WORKER_EVENT__EVENT_EVAL;
  ev.eval = &e;
  report(tr, &ev);
}

/* Wall time split into compute and communication, for the scaling benchmark. */
typedef struct {
  double step, allreduce;   /* seconds summed over timed steps; allreduce includes wait */
  double wait;              /* of which: waiting at the barrier for the slowest rank */
  uint32_t steps;
  double samples;
} trainer_timing;

/* What the optimizer trains: the adapters with LoRA, else every parameter. */
static size_t trainable_params(trainer *tr) {
  if (!tr->lora) return tr->info.num_params;
  unet_lora_info li;
  unet_lora_get_info(tr->policy, &li);
  return li.num_params;
}

static int trainer_run(trainer *tr, const char *run_dir, uint32_t start_step) {
  const uint32_t steps = tr->train->steps, b = tr->train->batch_size, accum = tr->train->grad_accum;
  unet_adamw_params opt = unet_adamw_default_params();
  opt.beta1 = tr->train->adam_beta1;
  opt.beta2 = tr->train->adam_beta2;
  opt.eps = tr->train->adam_eps;
  opt.weight_decay = tr->train->weight_decay;
  opt.max_grad_norm = tr->train->max_grad_norm;
  unet_adafactor_params af = unet_adafactor_default_params(); /* the reference script's SDXL settings */
  af.weight_decay = tr->train->weight_decay;
  af.max_grad_norm = tr->train->max_grad_norm;

  if (g_rank == 0) {
    Dpod__V1__WorkerStarted st = DPOD__V1__WORKER_STARTED__INIT;
    st.has_world_size = st.has_total_steps = st.has_parameters = st.has_start_step = 1;
    st.world_size = (uint32_t)g_world;
    st.total_steps = steps;
    st.parameters = trainable_params(tr);
    st.start_step = start_step;
    Dpod__V1__WorkerEvent ev = DPOD__V1__WORKER_EVENT__INIT;
    ev.event_case = DPOD__V1__WORKER_EVENT__EVENT_STARTED;
    ev.started = &st;
    report(tr, &ev);
    log_info("training %s: steps %u..%u, %d ranks x %u pairs x %u accumulation = %" PRIu64 " pairs per step, "
             "%zu parameters, %s loss, beta %g, %s lr %g (warmup %u steps), %s, BLAS kernels %s (thread timeout %s), OpenMP wait %s",
             tr->dpo ? "dpo" : "sft", start_step + 1, steps, g_world, b, accum, tr->global_batch, tr->info.num_params,
             tr->dpo ? dpo_loss_kind_name(tr->loss) : "sft", tr->train->beta, dpo_lr_kind_name(tr->lr_kind),
             tr->peak_lr, tr->warmup_steps, tr->adafactor ? "adafactor" : "adamw", blas_select_corename(),
             getenv("OPENBLAS_THREAD_TIMEOUT") ? getenv("OPENBLAS_THREAD_TIMEOUT") : "OpenBLAS's default",
             thread_wait_describe());
    if (tr->lora) {
      unet_lora_info li;
      unet_lora_get_info(tr->policy, &li);
      log_info("LoRA rank %d, alpha %g: %zu adapted layers, %zu trainable parameters (the base's %zu frozen); the "
               "reference is the base with its adapters off",
               li.rank, li.alpha, li.num_modules, li.num_params, tr->info.num_params);
    }
    if (tr->train->gradient_checkpointing)
      log_info("gradient checkpointing: on (the policy's resnets and transformers are recomputed in backward)");
  }

  const uint32_t eval_every = tr->train->eval_every;
  if (eval_every > 0 && start_step == 0) trainer_eval(tr, 0); /* the reference's numbers */

  trainer_timing timing = {0};
  Dpod__V1__StepMetrics last = DPOD__V1__STEP_METRICS__INIT;
  for (uint32_t step = start_step + 1; step <= steps; step++) {
    double t0 = now_seconds();
    if (unet_zero_grad(tr->policy) != 0) worker_die("zeroing the gradients: %s", unet_last_error(tr->policy));
    dpo_loss_sums sums = {0};
    for (uint32_t a = 0; a < accum; a++) {
      /* This rank's slice of the global batch: micro-batch a, rank r. */
      uint64_t g0 = (uint64_t)(step - 1) * tr->global_batch + (uint64_t)a * g_world * b + (uint64_t)g_rank * b;
      trainer_micro_step(tr, g0, &sums);
    }
    double t_reduce = now_seconds();
    /* A barrier first, so that the timing can tell waiting for a slower rank from moving gradients;
     * with the ranks already in step it costs one round trip of a few microseconds. */
    if (g_world > 1) MPI_Barrier(MPI_COMM_WORLD);
    double t_wait = now_seconds() - t_reduce;
    const double used_scale = tr->scaling ? tr->scaler.scale : 0.0;
    int nonfinite = allreduce_grads(tr, step);

    /* Metric sums and the stop requests travel in one small all-reduce, so every rank acts on the same
     * step: [7] counts ranks told to cancel, [8] ranks that received a preemption signal, [9] counts the
     * pairs whose sigmoid is saturated, [10] ranks whose unscaled gradient held an inf or nan (all or none
     * of them, as they unscale the same sum; reduced anyway, so that the skip is one decision). */
    double red[11] = {sums.loss_sum, sums.acc_sum, sums.margin_sum, sums.policy_mse_sum, sums.ref_mse_sum,
                      sums.pairs,    sums.samples, 0.0,             g_stop_signals > 0 ? 1.0 : 0.0,
                      sums.saturated_sum, nonfinite ? 1.0 : 0.0};
    if (g_rank == 0 && tr->rep && reporter_directive(tr->rep) == DPOD__V1__DIRECTIVE__DIRECTIVE_CANCEL)
      red[7] = 1.0;
    if (g_world > 1 && MPI_Allreduce(MPI_IN_PLACE, red, 11, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD) != MPI_SUCCESS)
      worker_die("MPI_Allreduce of metrics failed");
    double t_allreduce = now_seconds() - t_reduce;
    if (red[7] > 0) {
      if (g_rank == 0) log_info("cancelled by dpod at step %u", step);
      return WORKER_EXIT_CANCELLED;
    }
    if (!isfinite(red[0])) worker_die("step %u: the loss is not finite (%g)", step, red[0]);

    /* A skipped step (loss scaling) steps neither the optimizer nor the lr schedule, as accelerate does:
     * the schedule counts the optimizer steps taken. */
    const int skip = red[10] > 0;
    const uint32_t lr_step = tr->scaling ? step - (uint32_t)tr->scaler.skipped : step;
    opt.lr = dpo_lr_schedule_at(tr->lr_kind, tr->peak_lr, tr->warmup_steps, steps, lr_step);
    double gnorm = 0;
    if (tr->scaling && dpo_loss_scaler_update(&tr->scaler, skip) == DPO_LOSS_SCALE_BACKOFF && g_rank == 0)
      log_info("step %u: the gradients hold inf or nan at loss scale %g: step skipped, loss scale now %g", step,
               used_scale, tr->scaler.scale);
    if (skip) {
      /* No update: the weights, the optimizer's moments and its step count stay as they were. */
    } else if (tr->adafactor) {
      af.lr = opt.lr;
      if (unet_adafactor_step(tr->policy, tr->adafactor, &af, &gnorm) != 0)
        worker_die("optimizer: %s", unet_adafactor_last_error(tr->adafactor));
    } else if (unet_adamw_step(tr->policy, &opt, &gnorm) != 0)
      worker_die("optimizer: %s", unet_last_error(tr->policy));
    double dt = now_seconds() - t0;
    if (step > start_step + 1) { /* the first step warms caches and allocators up */
      timing.step += dt;
      timing.allreduce += t_allreduce;
      timing.wait += t_wait;
      timing.steps++;
      timing.samples += red[6];
    }

    if (g_rank == 0) {
      Dpod__V1__StepMetrics m = DPOD__V1__STEP_METRICS__INIT;
      m.has_step = m.has_total_steps = m.has_loss = m.has_policy_mse = m.has_grad_norm = 1;
      m.has_learning_rate = m.has_samples_per_sec = m.has_step_seconds = 1;
      m.step = step;
      m.total_steps = steps;
      m.loss = red[0] / red[5];
      m.policy_mse = red[3] / red[6];
      m.grad_norm = gnorm;
      m.has_grad_norm = !skip;
      m.learning_rate = opt.lr;
      if (tr->scaling) {
        m.has_loss_scale = m.has_skipped = 1;
        m.loss_scale = used_scale;
        m.skipped = skip;
      }
      m.samples_per_sec = red[6] / dt;
      m.step_seconds = dt;
      char scaled[64] = "";
      if (tr->scaling) snprintf(scaled, sizeof scaled, " scale %g%s", used_scale, skip ? " skipped" : "");
      if (tr->dpo) {
        m.has_implicit_acc = m.has_ref_mse = m.has_reward_margin = 1;
        m.implicit_acc = red[1] / red[5];
        m.ref_mse = red[4] / red[6];
        m.reward_margin = red[2] / red[5];
        m.has_saturated_share = m.has_drift = 1;
        m.saturated_share = red[9] / red[5];
        m.drift = m.policy_mse - m.ref_mse;
        printf("step %u/%u loss %.6f acc %.3f mse %.6f/%.6f margin %.4g gnorm %.4g lr %.3g %.1f samples/s%s\n", step,
               steps, m.loss, m.implicit_acc, m.policy_mse, m.ref_mse, m.reward_margin, m.grad_norm, m.learning_rate,
               m.samples_per_sec, scaled);
      } else {
        printf("step %u/%u loss %.6f gnorm %.4g lr %.3g %.1f samples/s%s\n", step, steps, m.loss, m.grad_norm,
               m.learning_rate, m.samples_per_sec, scaled);
      }
      fflush(stdout);
      Dpod__V1__WorkerEvent ev = DPOD__V1__WORKER_EVENT__INIT;
      ev.event_case = DPOD__V1__WORKER_EVENT__EVENT_METRICS;
      ev.metrics = &m;
      report(tr, &ev);
      last = m;
    }
    if (eval_every > 0 && (step % eval_every == 0 || step == steps)) trainer_eval(tr, step);
    uint32_t every = tr->train->checkpoint_every;
    int preempt = red[8] > 0;
    if (step == steps || (every > 0 && step % every == 0) || preempt) trainer_checkpoint(tr, step, run_dir, &last);
    if (preempt && step < steps) {
      if (g_rank == 0) log_info("preempted: stopped after step %u with a complete checkpoint", step);
      return WORKER_EXIT_PREEMPTED;
    }
  }
  if (g_rank == 0 && timing.steps > 0)
    log_info("timing: %u steps after the first, %.2f ms/step, all-reduce and wait %.2f ms/step (%.1f%%; "
             "waiting for the slowest rank %.2f, all-reduce %.2f), %.1f samples/s",
             timing.steps, 1e3 * timing.step / timing.steps, 1e3 * timing.allreduce / timing.steps,
             100.0 * timing.allreduce / timing.step, 1e3 * timing.wait / timing.steps,
             1e3 * (timing.allreduce - timing.wait) / timing.steps, timing.samples / timing.step);
  if (g_rank == 0 && tr->train->gradient_checkpointing) {
    uint64_t fw = 0, re = 0;
    unet_checkpoint_counts(tr->policy, &fw, &re);
    log_info("gradient checkpointing: %" PRIu64 " blocks ran without their activations, %" PRIu64 " recomputed", fw, re);
  }
  return WORKER_EXIT_OK;
}

static void trainer_free(trainer *tr) {
  unet_adafactor_free(tr->adafactor);
  unet_free(tr->policy);
  unet_free(tr->ref);
  dpo_schedule_free(&tr->sched);
  dataset_free(&tr->data);
  sampler_free(&tr->sampler);
  free(tr->x0);
  free(tr->noise);
  free(tr->x_t);
  free(tr->target);
  free(tr->ehs);
  free(tr->timesteps);
  free(tr->t_int);
  free(tr->mse_policy);
  free(tr->mse_ref);
  free(tr->grad_mse);
  free(tr->pred);
  free(tr->batch_pairs);
  free(tr->batch_keys);
  free(tr->sched_json);
  free(tr->pooled);
  free(tr->time_ids);
  dataset_free(&tr->val);
  synth_task_free(&tr->task);
}

/* Before MPI_Init: how this rank's idle threads should wait depends on the job's precision and threads
 * (thread_wait.h). Returns 1 when it changed the environment, which takes a re-exec. A spec that does
 * not load is left for load_spec() to report once MPI is up. */
static int prepare_thread_wait(const char *spec_path) {
  char err[1024];
  int oom;
  Dpod__V1__JobSpec *spec = read_spec(spec_path, err, sizeof err, &oom);
  if (!spec) return 0;
  const char *prec = spec->train && spec->train->precision ? spec->train->precision : "fp32";
  int low_precision = strcmp(prec, "fp32") != 0;
  unsigned threads = spec->threads_per_rank;
  dpod__v1__job_spec__free_unpacked(spec, NULL);
  return thread_wait_prepare(low_precision, threads);
}

int main(int argc, char **argv) {
  worker_args args;
  int pa = parse_args(argc, argv, &args);
  if (pa != 0) return pa > 0 ? 0 : WORKER_EXIT_BAD_INPUT;
  /* May re-execute this program, once, with faster sgemm kernels and the threads' wait settings. */
  blas_select_kernels(argv, prepare_thread_wait(args.spec_path));

  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_world);
  /* Every rank says once where it runs (what `dpoctl logs --rank R` shows first); after that, info lines
   * from rank 0 only; warnings and errors from every rank, which says which it is. */
  dpod_log_init("dpo-worker", DPOD_LOG_INFO);
  char host[256] = "?";
  if (gethostname(host, sizeof host - 1) != 0) snprintf(host, sizeof host, "?");
  log_info("rank %d of %d on %s, pid %d", g_rank, g_world, host, (int)getpid());
  dpod_log_init("dpo-worker", g_rank == 0 ? DPOD_LOG_INFO : DPOD_LOG_WARN);
  install_signal_handlers();
  const char *chunk = getenv("DPOD_MPI_CHUNK_FLOATS");
  uint64_t chunk_v;
  if (chunk && *chunk) {
    if (dpod_parse_u64(chunk, INT32_MAX, &chunk_v) != 0 || chunk_v == 0)
      worker_die("DPOD_MPI_CHUNK_FLOATS wants a count from 1 to %d, got '%s'", INT32_MAX, chunk);
    g_mpi_chunk = (size_t)chunk_v;
    log_info("broadcasts and all-reduces in calls of at most %zu floats", g_mpi_chunk);
  }

  Dpod__V1__JobSpec *spec = load_spec(args.spec_path);
  if (spec->ranks != (uint32_t)g_world)
    worker_die_input("the job asks for %u ranks but mpirun started %d", spec->ranks, g_world);

  trainer tr;
  trainer_init(&tr, spec);
  if (g_rank == 0 && args.report_addr) {
    const char *secret = getenv(DPOD_ENV_JOB_SECRET), *attempt_text = getenv(DPOD_ENV_ATTEMPT);
    if (!secret || !*secret) worker_die_input("--report-addr given but $%s is not set", DPOD_ENV_JOB_SECRET);
    uint64_t attempt = 1;
    if (attempt_text && (dpod_parse_u64(attempt_text, UINT32_MAX, &attempt) != 0 || attempt == 0))
      worker_die_input("$%s wants an attempt number, got '%s'", DPOD_ENV_ATTEMPT, attempt_text);
    char err[512], journal[4200];
    report_journal_path(args.run_dir, (uint32_t)attempt, journal, sizeof journal);
    reporter_params rp = {.addr = args.report_addr,
                          .job_id = args.job_id,
                          .attempt = (uint32_t)attempt,
                          .secret = secret,
                          .tls_ca = getenv(DPOD_ENV_TLS_CA),
                          .journal_path = journal};
    const char *queue_max = getenv("DPOD_REPORT_QUEUE_MAX"); /* tests make the journal take over early */
    uint64_t qm;
    if (queue_max && dpod_parse_u64(queue_max, 1u << 24, &qm) == 0) rp.queue_max = (size_t)qm;
    if (reporter_start(&rp, &tr.rep, err, sizeof err) != 0) worker_die("cannot report to %s: %s", args.report_addr, err);
  }

  uint32_t start_step = trainer_resume(&tr, args.run_dir);
  int status = trainer_run(&tr, args.run_dir, start_step);

  if (tr.rep) {
    /* The daemon learns of the last step and the final (or preemption) checkpoint before we exit; a
     * preempted job has less time, since whoever preempted it will SIGKILL before long. */
    int flush_ms = status == WORKER_EXIT_OK ? 10000 : status == WORKER_EXIT_PREEMPTED ? 5000 : 2000;
    if (reporter_flush(tr.rep, flush_ms) != 0)
      log_warn("could not deliver every report to dpod before exiting; the rest stays in the journal");
    reporter_stop(tr.rep);
  }
  trainer_free(&tr);
  dpod__v1__job_spec__free_unpacked(spec, NULL);
  MPI_Finalize();
  return status;
}
