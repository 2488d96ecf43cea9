/* dpo-bench: times the training step dpo-worker takes, on one process, without MPI or a dataset.
 *
 * The step is the worker's micro-step with batch_size = pairs and no accumulation: a noise vector and a
 * timestep per pair (shared by winner and loser), dpo_add_noise, the policy's and the frozen reference's
 * unet_forward_mse on [winners; losers], dpo_loss, unet_backward_mse, unet_adamw_step. Latents and prompt
 * embeddings are fixed random normals (what the UNet computes does not depend on where they came from).
 *
 *   dpo-bench [--shape tiny|bigger|all] [--threads 2] [--steps 20] [--warmup 3] [--precision fp32,bf16]
 *   dpo-bench --config PATH [--pairs 4] [--text-len 77] [--size S] ...
 *
 * Prints, per shape: ms/step (median and min over the timed steps), samples/s (2 x pairs images per
 * step, at the median), achieved GFLOP/s (unet_train_flops over the median step), the parameter count,
 * and the median time of each phase, and the process's peak resident memory (VmHWM: per rank, since a
 * rank is a process) next to its resident memory once the models are built; first, the machine's own
 * 1024^3 matmul rate in fp32 and bf16 through the same libtorch, the yardstick for the step's GFLOP/s.
 * --precision takes a comma list: each shape runs at each precision in turn (unet_set_precision on
 * policy and reference).
 *
 *   dpo-bench --gradient-checkpointing   the policy's blocks recomputed in backward
 *   dpo-bench --lora RANK                LoRA adapters (diffusers' default targets, alpha = rank) on the
 *                                        policy, the reference being the same UNet with them off
 *   dpo-bench --memory                   per shape, full fine-tuning and LoRA (--lora's rank, else 4),
 *                                        each without and with checkpointing, each in its own child
 *                                        process so each peak is its own; then a table of them all */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>

#include "blas_select.h"
#include "thread_wait.h"
#include "reexec.h"
#include "rng.h"
#include "schedule.h"
#include "loss.h"
#include "dpod_file.h"
#include "dpod_parse.h"
#include "unet_shim.h"

/* The "bigger" shape: three levels (64/128/256), two layers per block, SD-style 77-token text. */
static const char *const bigger_config_json =
    "{\"_class_name\": \"UNet2DConditionModel\", \"in_channels\": 4, \"out_channels\": 4, \"sample_size\": 16,"
    " \"block_out_channels\": [64, 128, 256],"
    " \"down_block_types\": [\"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", \"DownBlock2D\"],"
    " \"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\"],"
    " \"layers_per_block\": 2, \"cross_attention_dim\": 64, \"attention_head_dim\": 8,"
    " \"norm_num_groups\": 32}";

/* What the policy trains (--gradient-checkpointing, --lora): kept apart from run_shape's arguments. */
static struct {
  int ckpt;      /* unet_set_gradient_checkpointing on the policy */
  int lora_rank; /* 0: full fine-tuning with a frozen reference copy */
} g_train;

/* What one run_shape measured, for --memory's table. */
typedef struct {
  double ms, min_ms, samples_s, peak_mb, built_mb;
} bench_result;
static bench_result g_result;

/* A field of /proc/self/status in MB ("VmHWM": the peak resident set so far, "VmRSS": now); -1 if absent. */
static double proc_status_mb(const char *field) {
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  double mb = -1;
  size_t n = strlen(field);
  while (fgets(line, sizeof line, f))
    if (strncmp(line, field, n) == 0 && line[n] == ':') {
      mb = strtod(line + n + 1, NULL) / 1024.0; /* kB */
      break;
    }
  fclose(f);
  return mb;
}

typedef struct {
  const char *name;
  const char *config_json;  /* NULL: the built-in tiny config */
  int pairs, text_len, size; /* size 0: the config's sample_size */
} bench_shape;

enum { PH_DATA, PH_POLICY, PH_REF, PH_LOSS, PH_BACKWARD, PH_OPTIM, PH_COUNT };
static const char *const phase_names[PH_COUNT] = {"noise+zero_grad", "policy fwd", "ref fwd", "loss", "backward", "optimizer"};

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return 1e3 * (double)ts.tv_sec + 1e-6 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* --device: where the shim puts both UNets ("cpu", "cuda", "cuda:N"); the shim refuses what is not there. */
static const char *g_device = "cpu";

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) {
    fprintf(stderr, "dpo-bench: out of memory (%zu bytes)\n", n);
    exit(1);
  }
  return p;
}

static int run_shape(const bench_shape *sh, unet_precision prec, int threads, int steps, int warmup,
                     const char *profile) {
  char err[1024];
  unet_params up = unet_default_params();
  up.threads = threads;
  up.seed = 1;
  up.device = g_device;
  unet_t policy = NULL, ref = NULL;
  if (unet_create(sh->config_json, &up, &policy, err, sizeof err) != 0 ||
      (!g_train.lora_rank && unet_create(sh->config_json, &up, &ref, err, sizeof err) != 0)) {
    fprintf(stderr, "dpo-bench: %s: %s\n", sh->name, err);
    unet_free(policy);
    return 1;
  }
  if (unet_set_precision(policy, prec) != 0) {
    fprintf(stderr, "dpo-bench: %s\n", unet_last_error(policy));
    return 1;
  }
  if (ref && (unet_copy_weights(ref, policy) != 0 || unet_freeze(ref) != 0 || unet_set_precision(ref, prec) != 0)) {
    fprintf(stderr, "dpo-bench: %s\n", unet_last_error(ref));
    return 1;
  }
  if (g_train.lora_rank) {
    unet_lora_params lp = unet_lora_default_params();
    lp.rank = g_train.lora_rank;
    lp.seed = 1;
    if (unet_lora_enable(policy, &lp) != 0) goto torch_fail_p;
  }
  if (g_train.ckpt && unet_set_gradient_checkpointing(policy, 1) != 0) goto torch_fail_p;
  const double built_mb = proc_status_mb("VmRSS");
  unet_info info;
  unet_get_info(policy, &info);
  const int P = sh->pairs, n = 2 * P, L = sh->text_len;
  const int hw = sh->size > 0 ? sh->size : info.sample_size;
  const size_t img = (size_t)info.in_channels * hw * hw, emb = (size_t)L * info.cross_attention_dim;

  dpo_schedule sched;
  if (dpo_schedule_default(&sched) != 0) return 1;
  float *x0 = xmalloc(sizeof(float) * n * img), *noise = xmalloc(sizeof(float) * n * img);
  float *x_t = xmalloc(sizeof(float) * n * img), *target = xmalloc(sizeof(float) * n * img);
  float *ehs = xmalloc(sizeof(float) * n * emb), *tf = xmalloc(sizeof(float) * n);
  float *mse_p = xmalloc(sizeof(float) * n), *mse_r = xmalloc(sizeof(float) * n), *gmse = xmalloc(sizeof(float) * n);
  int64_t *ti = xmalloc(sizeof(int64_t) * n);
  dpo_rng rng;
  dpo_rng_seed(&rng, 42, 0);
  dpo_rng_fill_normal(&rng, x0, (size_t)n * img);
  dpo_rng_fill_normal(&rng, ehs, (size_t)P * emb);
  memcpy(ehs + (size_t)P * emb, ehs, sizeof(float) * P * emb); /* a pair shares its prompt */

  unet_adamw_params opt = unet_adamw_default_params();
  opt.lr = 1e-5;
  const int total = warmup + steps;
  double *step_ms = xmalloc(sizeof(double) * total), *ph = xmalloc(sizeof(double) * PH_COUNT * total);
  double loss_first = 0, loss_last = 0;
  for (int s = 0; s < total; s++) {
    if (profile && s == warmup && unet_profile_start(profile, err, sizeof err) != 0) {
      fprintf(stderr, "dpo-bench: %s\n", err);
      return 1;
    }
    double t[PH_COUNT + 1];
    t[0] = now_ms();
    /* As trainer_fill_batch: one stream per pair position. */
    for (int i = 0; i < P; i++) {
      dpo_rng r;
      dpo_rng_seed(&r, 7, (uint64_t)s * P + i);
      int64_t tt = dpo_rng_below(&r, (uint32_t)sched.num_train_timesteps);
      dpo_rng_fill_normal(&r, noise + (size_t)i * img, img);
      memcpy(noise + (size_t)(P + i) * img, noise + (size_t)i * img, sizeof(float) * img);
      ti[i] = ti[P + i] = tt;
    }
    for (int i = 0; i < n; i++) tf[i] = (float)ti[i];
    dpo_add_noise(&sched, n, img, x0, noise, ti, x_t, target);
    if (unet_zero_grad(policy) != 0) goto torch_fail_p;
    t[1] = now_ms();
    if (unet_forward_mse(policy, n, hw, hw, L, x_t, tf, ehs, target, mse_p, NULL) != 0) goto torch_fail_p;
    t[2] = now_ms();
    if (!ref && unet_lora_set_active(policy, 0) != 0) goto torch_fail_p;
    if (unet_forward_mse(ref ? ref : policy, n, hw, hw, L, x_t, tf, ehs, target, mse_r, NULL) != 0) goto torch_fail_r;
    if (!ref && unet_lora_set_active(policy, 1) != 0) goto torch_fail_p;
    t[3] = now_ms();
    dpo_loss_sums sums = {0};
    dpo_loss(P, mse_p, mse_r, 5000.0, 1.0 / P, &sums, NULL, gmse);
    t[4] = now_ms();
    if (unet_backward_mse(policy, gmse) != 0) goto torch_fail_p;
    t[5] = now_ms();
    /* A device model's all-reduce path without the MPI: gradient to the host staging buffer and back. */
    if (unet_host_copies(policy) && (!unet_grad_stage(policy, NULL) || unet_grad_unstage(policy) != 0)) goto torch_fail_p;
    if (unet_adamw_step(policy, &opt, NULL) != 0) goto torch_fail_p;
    t[6] = now_ms();
    step_ms[s] = t[6] - t[0];
    for (int k = 0; k < PH_COUNT; k++) ph[k * total + s] = t[k + 1] - t[k];
    if (s == 0) loss_first = sums.loss_sum / P;
    loss_last = sums.loss_sum / P;
  }
  if (profile) unet_profile_stop();

  {
    double *timed = step_ms + warmup;
    double mn = timed[0];
    for (int s = 1; s < steps; s++)
      if (timed[s] < mn) mn = timed[s];
    double med = median(timed, steps);
    double flops = unet_train_flops(policy, n, hw, hw, L);
    printf("%-8s %s %2d pairs (%d images) %dx%d, text %d, %zu params, %d threads, attention %s, BLAS %s\n", sh->name,
           unet_precision_name(prec), P, n, hw, hw, L, info.num_params, threads,
           prec == UNET_PRECISION_FP32 ? unet_attention_gemm() : "aten", blas_select_corename());
    const char *blas_timeout = getenv("OPENBLAS_THREAD_TIMEOUT");
    printf("  OpenMP   idle threads %s\n", thread_wait_describe());
    printf("  OpenBLAS idle threads poll 2^%s cycles\n", blas_timeout ? blas_timeout : "28 (its default)");
    printf("  device   %s%s\n", unet_device(policy), unet_host_copies(policy) ? " (host copies: the optimizer phase includes the gradient's round trip through the staging buffer)" : "");
    printf("  step     %9.2f ms median  %9.2f ms min  (%d steps after %d warmup)\n", med, mn, steps, warmup);
    printf("  samples/s %8.1f   GFLOP/s %7.2f   (FLOPs/step %.0f)\n", 1e3 * n / med, flops / (med * 1e6), flops);
    printf("  phases (median ms):");
    for (int k = 0; k < PH_COUNT; k++) {
      double m = median(ph + k * total + warmup, steps);
      printf(" %s %.2f%s", phase_names[k], m, k + 1 < PH_COUNT ? "," : "\n");
    }
    printf("  loss %.6f -> %.6f\n", loss_first, loss_last);
    double peak_mb = proc_status_mb("VmHWM");
    printf("  training %s%s; peak RSS %.1f MB (after building the models %.1f MB)\n",
           g_train.lora_rank ? "LoRA" : "every weight", g_train.ckpt ? ", gradient checkpointing" : "", peak_mb,
           built_mb);
    g_result = (bench_result){med, mn, 1e3 * n / med, peak_mb, built_mb};
  }
  free(step_ms);
  free(ph);
  free(x0);
  free(noise);
  free(x_t);
  free(target);
  free(ehs);
  free(tf);
  free(mse_p);
  free(mse_r);
  free(gmse);
  free(ti);
  dpo_schedule_free(&sched);
  unet_free(policy);
  unet_free(ref);
  return 0;

torch_fail_p:
  fprintf(stderr, "dpo-bench: %s: policy: %s\n", sh->name, unet_last_error(policy));
  return 1;
torch_fail_r:
  fprintf(stderr, "dpo-bench: %s: reference: %s\n", sh->name, unet_last_error(ref ? ref : policy));
  return 1;
}

/* --memory: each training setup of `sh` in a child process (its peak RSS is then its own), the results
 * coming back through a pipe; prints them side by side. Forked before this process touches libtorch. */
static int run_memory_table(const bench_shape *sh, unet_precision prec, int threads, int steps, int warmup,
                            int lora_rank) {
  static const struct {
    int lora, ckpt;
    const char *what;
  } setups[] = {{0, 0, "full fine-tuning"}, {0, 1, "full + checkpointing"}, {1, 0, "LoRA"}, {1, 1, "LoRA + checkpointing"}};
  enum { NSETUPS = sizeof setups / sizeof setups[0] };
  bench_result res[NSETUPS];
  int ok[NSETUPS], rc = 0;
  for (int i = 0; i < NSETUPS; i++) {
    int fd[2];
    ok[i] = 0;
    if (pipe(fd) != 0) {
      perror("dpo-bench: pipe");
      return 1;
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
      perror("dpo-bench: fork");
      return 1;
    }
    if (pid == 0) {
      close(fd[0]);
      g_train.lora_rank = setups[i].lora ? lora_rank : 0;
      g_train.ckpt = setups[i].ckpt;
      int crc = run_shape(sh, prec, threads, steps, warmup, NULL);
      fflush(stdout);
      if (crc == 0 && write(fd[1], &g_result, sizeof g_result) != (ssize_t)sizeof g_result) crc = 1;
      _exit(crc);
    }
    close(fd[1]);
    ssize_t got = read(fd[0], &res[i], sizeof res[i]);
    close(fd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    ok[i] = got == (ssize_t)sizeof res[i] && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (!ok[i]) rc = 1;
  }
  printf("%s, peak resident memory per process (LoRA rank %d):\n", sh->name, lora_rank);
  printf("  %-22s %10s %10s %10s %12s %16s\n", "setup", "ms/step", "min ms", "samples/s", "peak RSS MB",
         "built models MB");
  for (int i = 0; i < NSETUPS; i++) {
    if (!ok[i]) {
      printf("  %-22s failed\n", setups[i].what);
      continue;
    }
    printf("  %-22s %10.2f %10.2f %10.1f %12.1f %16.1f\n", setups[i].what, res[i].ms, res[i].min_ms, res[i].samples_s,
           res[i].peak_mb, res[i].built_mb);
  }
  return rc;
}

static void usage(FILE *out) {
  fprintf(out,
          "usage: dpo-bench [--shape tiny|bigger|all] [--threads N] [--steps N] [--warmup N] [--profile T.json]\n"
          "                 [--precision fp32|bf16|fp32,bf16]\n"
          "       dpo-bench --config CONFIG.json [--pairs P] [--text-len L] [--size S] [...]\n"
          "\n"
          "Times dpo-worker's training step (policy and reference forward, DPO loss, backward, AdamW).\n"
          "tiny: the built-in tiny-sd config, 8 pairs, 4 text tokens; bigger: 64/128/256 channels,\n"
          "2 layers per block, 16x16 latents, 77 text tokens, 4 pairs. Defaults: --shape all --threads 2\n"
          "--steps 20 --warmup 3. --profile writes every ATen op of the timed steps to a Chrome trace\n"
          "(one shape only; recording slows the step, so its timings are not the benchmark's).\n"
          "--device cpu|cuda|cuda:N puts both UNets there (default cpu; refused where libtorch sees no GPU).\n"
          "--gradient-checkpointing recomputes the policy's blocks in backward; --lora RANK trains adapters\n"
          "(diffusers' default targets, alpha = rank) instead of every weight; --memory runs full\n"
          "fine-tuning and LoRA (rank from --lora, else 4), each without and with checkpointing, in child\n"
          "processes and prints their ms/step and peak resident memory side by side.\n"
          "--precision: each listed precision in turn (default fp32), each in a process of its own whose\n"
          "OpenMP threads wait as a worker's would (bf16 spins GOMP_SPINCOUNT=" THREAD_WAIT_SPINCOUNT " when the threads fit\n"
          "the CPUs; a GOMP_SPINCOUNT or OMP_WAIT_POLICY=ACTIVE set by you wins; with 2 or more threads OpenBLAS's\n"
          "idle threads sleep at once, OPENBLAS_THREAD_TIMEOUT=" THREAD_WAIT_BLAS_TIMEOUT ", unless you set it); the machine's fp32 and bf16\n"
          "1024^3 matmul rates through the same libtorch, under that wait, are printed first.\n");
}

/* A whole number from 0 to 1000000, or -1 (refused by the checks after the options). */
static int int_arg(const char *text) {
  uint64_t v;
  return dpod_parse_u64(text, 1000000, &v) == 0 ? (int)v : -1;
}

/* Several precisions: each in a process of its own (this program again, with --precision naming one),
 * since each runs with the OpenMP wait a worker of that precision would (thread_wait.h), and libgomp
 * takes it from the environment only when it is loaded. Returns the worst exit status. */
static int run_each_precision(int argc, char **argv, const unet_precision *precs, int nprec) {
  char **args = calloc((size_t)argc + 3, sizeof *args);
  if (!args) {
    fprintf(stderr, "dpo-bench: out of memory\n");
    return 1;
  }
  memcpy(args, argv, (size_t)argc * sizeof *args);
  args[argc] = "--precision"; /* the last --precision given wins */
  int rc = 0;
  for (int k = 0; k < nprec; k++) {
    args[argc + 1] = (char *)unet_precision_name(precs[k]);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
      dpod_reexec_self(args);
      perror("dpo-bench: re-executing itself");
      _exit(127);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) rc = 1;
  }
  free(args);
  return rc;
}

int main(int argc, char **argv) {
  static const struct option opts[] = {{"shape", required_argument, 0, 's'},  {"threads", required_argument, 0, 't'},
                                       {"steps", required_argument, 0, 'n'},  {"warmup", required_argument, 0, 'w'},
                                       {"config", required_argument, 0, 'c'}, {"pairs", required_argument, 0, 'p'},
                                       {"text-len", required_argument, 0, 'l'}, {"size", required_argument, 0, 'z'},
                                       {"profile", required_argument, 0, 'P'},
                                       {"device", required_argument, 0, 'D'},
                                       {"gradient-checkpointing", no_argument, 0, 'G'},
                                       {"lora", required_argument, 0, 'R'},   {"memory", no_argument, 0, 'M'},
                                       {"precision", required_argument, 0, 'r'},
                                       {"help", no_argument, 0, 'h'},         {0, 0, 0, 0}};
  const char *shape = "all", *config = NULL, *profile = NULL, *precision = "fp32";
  int threads = 2, steps = 20, warmup = 3, pairs = 4, text_len = 77, size = 0, c;
  int memory = 0, lora_given = 0;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
      case 's': shape = optarg; break;
      case 't': threads = int_arg(optarg); break;
      case 'n': steps = int_arg(optarg); break;
      case 'w': warmup = int_arg(optarg); break;
      case 'c': config = optarg; break;
      case 'p': pairs = int_arg(optarg); break;
      case 'l': text_len = int_arg(optarg); break;
      case 'z': size = int_arg(optarg); break;
      case 'P': profile = optarg; break;
      case 'D': g_device = optarg; break;
      case 'G': g_train.ckpt = 1; break;
      case 'R': g_train.lora_rank = int_arg(optarg), lora_given = 1; break;
      case 'M': memory = 1; break;
      case 'r': precision = optarg; break;
      case 'h': usage(stdout); return 0;
      default: usage(stderr); return 2;
    }
  }
  if (optind != argc || steps < 1 || warmup < 0 || threads < 0 || pairs < 1 || text_len < 1 || size < 0) {
    usage(stderr);
    return 2;
  }
  if (lora_given && (g_train.lora_rank < 1 || g_train.lora_rank > UNET_LORA_MAX_RANK)) {
    fprintf(stderr, "dpo-bench: --lora: the rank must be a whole number from 1 to %d\n", UNET_LORA_MAX_RANK);
    return 2;
  }
  if (memory && (profile || g_train.ckpt)) {
    fprintf(stderr, "dpo-bench: --memory runs every setup itself; it takes neither --profile nor "
                    "--gradient-checkpointing\n");
    return 2;
  }
  const int memory_rank = lora_given ? g_train.lora_rank : 4;
  if (profile && !config && strcmp(shape, "all") == 0) {
    fprintf(stderr, "dpo-bench: --profile needs one shape (--shape tiny, --shape bigger or --config)\n");
    return 2;
  }
  unet_precision precs[4];
  int nprec = 0;
  {
    char list[64];
    snprintf(list, sizeof list, "%s", precision);
    for (char *save = NULL, *w = strtok_r(list, ",", &save); w; w = strtok_r(NULL, ",", &save)) {
      if (nprec == 4 || unet_precision_parse(w, &precs[nprec]) != 0) {
        fprintf(stderr, "dpo-bench: --precision: '%s' is not a list of fp32, bf16 (fp16 where the device has it)\n",
                precision);
        return 2;
      }
      nprec++;
    }
    if (!nprec) {
      fprintf(stderr, "dpo-bench: --precision: empty list\n");
      return 2;
    }
  }
  if (profile && nprec > 1) {
    fprintf(stderr, "dpo-bench: --profile needs one precision\n");
    return 2;
  }
  if (nprec > 1) return run_each_precision(argc, argv, precs, nprec);
  /* May re-execute, once, with faster sgemm kernels and the threads' wait a worker would have. */
  blas_select_kernels(argv, thread_wait_prepare(precs[0] != UNET_PRECISION_FP32, (unsigned)threads));
  /* Not before --memory's fork()s: a child of a process whose OpenMP pool has started hangs in its first
   * parallel region (libgomp does not survive fork). */
  if (!memory) {
    char err[512];
    double f32 = unet_matmul_gflops(1024, UNET_PRECISION_FP32, threads, 5, err, sizeof err);
    double b16 = unet_matmul_gflops(1024, UNET_PRECISION_BF16, threads, 5, err, sizeof err);
    printf("machine  matmul 1024^3 through libtorch, %d threads, OpenMP %s: fp32 %.1f GFLOP/s, bf16 %.1f GFLOP/s\n",
           threads, thread_wait_describe(), f32, b16);
  }
  if (config) {
    char *json = NULL, err[1024];
    if (dpod_read_file(config, 1 << 20, &json, NULL, err, sizeof err) != 0) {
      fprintf(stderr, "dpo-bench: %s\n", err);
      return 1;
    }
    bench_shape sh = {config, json, pairs, text_len, size};
    int rc = 0;
    for (int k = 0; k < nprec; k++)
      rc |= memory ? run_memory_table(&sh, precs[k], threads, steps, warmup, memory_rank)
                   : run_shape(&sh, precs[k], threads, steps, warmup, profile);
    free(json);
    return rc;
  }
  const bench_shape shapes[] = {{"tiny", NULL, 8, 4, 0}, {"bigger", bigger_config_json, 4, 77, 0}};
  int ran = 0, rc = 0;
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
    if (strcmp(shape, "all") != 0 && strcmp(shape, shapes[i].name) != 0) continue;
    for (int k = 0; k < nprec; k++)
      rc |= memory ? run_memory_table(&shapes[i], precs[k], threads, steps, warmup, memory_rank)
                   : run_shape(&shapes[i], precs[k], threads, steps, warmup, profile);
    ran++;
  }
  if (!ran) {
    fprintf(stderr, "dpo-bench: unknown shape '%s' (tiny, bigger or all)\n", shape);
    return 2;
  }
  return rc;
}
