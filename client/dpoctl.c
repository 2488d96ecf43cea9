/* dpoctl: the command-line client of dpod.
 *
 * `dpoctl [--addr ADDR] COMMAND [ARGS]`, one function per command, each with its own --help. Job files
 * are checked here with the daemon's own code (proto/job_spec.c), so a misspelled key is refused before
 * any connection is made. Exit statuses are part of the interface, for scripts:
 *   0 success (for watch: the job SUCCEEDED), 1 failure (the job ended otherwise, or dpod refused),
 *   2 usage error or invalid job spec, 3 dpod cannot be reached.
 * Human output goes to stdout; errors go to stderr as one line starting "dpoctl: "; -o json (--json),
 * -o yaml, --events-jsonl and metrics --format jsonl are the machine-readable forms, all protobuf's JSON
 * mapping (proto/spec/pb_json.h). Wherever a job id is taken, a job name that exactly one job has
 * will do. */
#include <errno.h>
#include <fnmatch.h>
#include <getopt.h>
#include <grpc/status.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "dpod_error.h"
#include "dpod_file.h"
#include "dpod_paths.h"
#include "dpod_parse.h"
#include "diagnose.h"
#include "format.h"
#include "health.pb-c.h"
#include "job_spec.h"
#include "pb_json.h"
#include "rpc_addr.h"
#include "rpc_client.h"
#include "rpc_methods.h"

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2, EXIT_CONN = 3 };

#define RPC_TIMEOUT_MS 10000
#define WATCH_RETRIES 10
#define M_COORD(name) rpc_method_path(&dpod__v1__coordinator__descriptor, name)
#define M_SUBMIT M_COORD("SubmitJob")
#define M_GET M_COORD("GetJob")
#define M_LIST M_COORD("ListJobs")
#define M_CANCEL M_COORD("CancelJob")
#define M_RESTART M_COORD("RestartJob")
#define M_WATCH M_COORD("WatchJob")
#define M_DELETE M_COORD("DeleteJob")
#define LIST_DEFAULT_LIMIT 100 /* what `list` shows without --limit, as dpod does */
#define NAME_LOOKUP_LIMIT 1000 /* ListJobs' most: names are looked up among the newest 1000 jobs */
#define M_HEALTH rpc_method_path(&grpc__health__v1__health__descriptor, "Check")

typedef struct {
  char addr[1024];
  const char *token_file, *tls_ca; /* --token-file, --tls-ca; NULL: from the environment or defaults */
  rpc_client *client;
} ctl;

/* -o table|json|yaml */
typedef enum { OUT_TABLE, OUT_JSON, OUT_YAML } out_format;

typedef struct {
  int jsonl;        /* --events-jsonl */
  int progress;     /* one progress line redrawn in place (stdout is a terminal); else a line per event */
  int retries;      /* reconnect attempts after the stream breaks */
} watch_opts;

/* ----------------------------------------------------------------------------------------------- */
/* Usage. */

static const char *const usage_main =
    "usage: dpoctl [--addr ADDR] [--token-file FILE] [--tls-ca FILE] COMMAND [ARGS]\n"
    "\n"
    "Commands:\n"
    "  submit JOB.yaml   validate a job file and submit it\n"
    "  list              list jobs, newest first\n"
    "  get ID            describe one job\n"
    "  checkpoints ID    the job's checkpoints on disk: step, path, size, metrics\n"
    "  watch ID          follow a job's events until it ends\n"
    "  logs ID           a job's worker output (-f: follow it)\n"
    "  metrics ID        the job's step metrics so far, as CSV or JSON lines\n"
    "  cancel ID         cancel a job (--wait: until it has ended)\n"
    "  delete ID         forget a finished job (--run-dir: and remove its run directory)\n"
    "  restart ID        queue a failed, cancelled or preempted job again; it resumes from its checkpoint\n"
    "  health            ask dpod whether it is serving\n"
    "  drain             running jobs checkpoint and stop (PREEMPTED); new ones are refused until undrain\n"
    "  undrain           take jobs again after a drain\n"
    "  status            dpod's slots, queue, watchers and event-loop stalls\n"
    "\n"
    "Options:\n"
    "  --addr ADDR       dpod's address (unix:/path or host:port); default $DPOD_ADDR, else\n"
    "                    unix:$XDG_RUNTIME_DIR/dpod/dpod.sock\n"
    "  --token-file FILE over TCP: the file holding dpod's token; default $DPOD_TOKEN_FILE, else\n"
    "                    $XDG_STATE_HOME/dpod/token ($DPOD_TOKEN, if set, is the token itself)\n"
    "  --tls-ca FILE     over TCP: talk TLS, trusting this CA (PEM); default $DPOD_TLS_CA, else plain\n"
    "  -h, --help        this help; `dpoctl COMMAND --help` for a command's\n"
    "  --version         print dpoctl's version\n"
    "\n"
    "Wherever a command takes a job ID, the job's name will do if exactly one job has it.\n"
    "-o json (or --json) is protobuf's JSON mapping: the .proto's field names, enum values by name\n"
    "(\"JOB_STATE_SUCCEEDED\"), 64-bit integers as strings; -o yaml the same tree as YAML.\n"
    "\n"
    "Exit status: 0 ok, 1 failed (watch: the job did not succeed), 2 usage or invalid spec,\n"
    "3 dpod unreachable.\n";

static const char *const usage_submit =
    "usage: dpoctl submit JOB.yaml [--set KEY=VALUE]... [--name NAME] [--dry-run] [--watch] [-q]\n"
    "\n"
    "Reads a YAML job file (\"-\" for stdin), applies the overrides in order, checks every value and\n"
    "submits the job. Keys are dotted field names of the spec: name, ranks, threads_per_rank,\n"
    "model.*, data.*, train.* (see deploy/examples/tiny-dpo.yaml).\n"
    "\n"
    "  --set KEY=VALUE   override one key, e.g. --set train.beta=2000 (repeatable)\n"
    "  --name NAME       the job's name (same as --set name=NAME)\n"
    "  --dry-run         print the complete spec, defaults included, and submit nothing\n"
    "  --watch           then follow the job like `dpoctl watch` (and exit like it)\n"
    "  -q, --quiet       print only the new job's id\n"
    "  --events-jsonl    with --watch: events as JSON lines\n"
    "  --no-progress     with --watch: a line per event even on a terminal\n";

static const char *const usage_list =
    "usage: dpoctl list [--state STATE]... [--name PATTERN] [--limit N] [-q] [-o table|json|yaml]\n"
    "\n"
    "  --state STATE     only jobs in this state (queued, starting, running, succeeded, failed,\n"
    "                    cancelled, preempted); repeatable or comma-separated\n"
    "  --name PATTERN    only jobs whose name matches: a glob (dpo-*), else a substring\n"
    "                    (among the newest 1000 jobs)\n"
    "  --limit N         at most N jobs (default 100)\n"
    "  -q, --quiet       only the ids, one a line\n"
    "  -o FORMAT         table (the default), json (an array of jobs, protobuf's JSON mapping) or yaml\n"
    "  --json            the same as -o json\n";

static const char *const usage_get =
    "usage: dpoctl get ID [-o table|json|yaml]\n"
    "\n"
    "Describes a job: state, reason, times, run directory, its complete spec, the last metrics and the\n"
    "last checkpoint, and warnings drawn from its steps (most pairs saturated, reward hacking, a loss\n"
    "flat at ln 2, fp16 steps mostly skipped on inf/nan gradients).\n"
    "  -o FORMAT   table (the default), json (dpod.v1.Job in protobuf's JSON mapping) or yaml\n"
    "  --json      the same as -o json\n";

static const char *const usage_checkpoints =
    "usage: dpoctl checkpoints ID [-o table|json|yaml]\n"
    "\n"
    "Lists the job's checkpoints that are on disk now, oldest first: step, directory, size and the\n"
    "metrics of that step (each directory loads with diffusers' UNet2DConditionModel.from_pretrained).\n"
    "  -o FORMAT   table (the default), json (an array of dpod.v1.CheckpointInfo) or yaml\n"
    "  --json      the same as -o json\n";

static const char *const usage_delete =
    "usage: dpoctl delete ID [--run-dir]\n"
    "\n"
    "Forgets a job that has ended (succeeded, failed, cancelled or preempted): its record, events and\n"
    "metrics leave dpod's store. Jobs still queued or running are refused: cancel them first.\n"
    "  --run-dir   also remove its run directory (logs, spec, checkpoints), if it lies inside dpod's\n"
    "              jobs directory\n";

static const char *const usage_watch =
    "usage: dpoctl watch ID [--after-seq K] [--events-jsonl] [--no-progress]\n"
    "\n"
    "Prints the job's events until it ends, then a summary. On a terminal the steps are one progress\n"
    "line redrawn in place (step/total, a bar, percentage, elapsed<remaining time, steps per second,\n"
    "the latest loss and accuracy), with state changes, evaluations and checkpoints printed above it;\n"
    "otherwise every event is a line of its own. Reconnects if the daemon restarts, without losing or\n"
    "repeating events. Warns on stderr, in words, when most pairs are saturated, when implicit accuracy\n"
    "sits at 1 while the policy's MSE rises, when the loss stays at ln 2, or when most fp16 steps are\n"
    "skipped on inf/nan gradients. Exits 0 only if the job succeeded.\n"
    "  --after-seq K    start after event K (default: replay from the first event)\n"
    "  --events-jsonl   each event (dpod.v1.JobEvent in protobuf's JSON mapping) as one line; the\n"
    "                   summary goes to stderr\n"
    "  --no-progress    a line per event even on a terminal\n"
    "  --retries N      reconnect attempts before giving up (default 10)\n";

static const char *const usage_metrics =
    "usage: dpoctl metrics ID [--format csv|jsonl]\n"
    "\n"
    "Prints the job's step metrics so far, one row per optimizer step, and exits (a running job's later\n"
    "steps are not waited for: `dpoctl watch` follows). Columns: time_unix_ms (when dpod recorded the\n"
    "step), then the fields of dpod.v1.StepMetrics; a value the step lacks is left empty.\n"
    "  --format csv     a header line and comma-separated rows (the default)\n"
    "  --format jsonl   one JSON object per step (protobuf's JSON mapping; time_unix_ms a string)\n";

static const char *const usage_logs =
    "usage: dpoctl logs ID [-f|--follow] [--rank R] [--attempt N] [--tail N] [--after-offset K] [--jsonl]\n"
    "\n"
    "Prints the job's worker output, every rank's stdout and stderr, attempt after attempt, each line as\n"
    "\"[attempt A rank R] text\" (\"... rank R stderr]\" for stderr, \"[attempt A dpod]\" for the launcher's\n"
    "own lines).\n"
    "  -f, --follow       then follow the output until the job ends (reconnecting if dpod restarts)\n"
    "  --rank R           only rank R's lines\n"
    "  --attempt N        only attempt N\n"
    "  --tail N           only the last N lines (at most 100000), then --follow goes on from there\n"
    "  --after-offset K   only the lines after the one whose offset is K (--jsonl shows offsets)\n"
    "  --jsonl            each line as a JSON object (attempt, rank, stream, text, offset)\n"
    "  --retries N        reconnect attempts before giving up (default 10)\n";

static const char *const usage_cancel =
    "usage: dpoctl cancel ID [--wait]\n"
    "\n"
    "Asks dpod to cancel the job. A running job stops at its next step and ends CANCELLED.\n"
    "  --wait   return only once the job has ended, and say how\n";

static const char *const usage_restart =
    "usage: dpoctl restart ID\n"
    "\n"
    "Queues a failed, cancelled or preempted job again, in its run directory: the worker resumes from\n"
    "the newest complete checkpoint (or starts over if there is none). Watch it with `dpoctl watch ID`.\n";

static const char *const usage_drain =
    "usage: dpoctl drain\n"
    "\n"
    "For maintenance: every running job checkpoints and ends PREEMPTED (resume it with `dpoctl restart`),\n"
    "queued jobs wait, and new ones are refused until `dpoctl undrain`. Stopping dpod itself does not\n"
    "touch running jobs: the next dpod adopts them.\n";

static const char *const usage_undrain =
    "usage: dpoctl undrain\n"
    "\n"
    "Ends a drain: dpod takes jobs again and starts the queued ones.\n";

static const char *const usage_status =
    "usage: dpoctl status [-o table|json|yaml]\n"
    "\n"
    "What dpod is doing: its version and uptime, worker slots in use, running and queued jobs, whether it\n"
    "is draining, open watchers, and how responsive its event loop has been (the longest it went without\n"
    "serving calls, and how often that exceeded 50 ms).\n"
    "\n"
    "  -o FORMAT   table (the default), json (dpod.v1.GetStatusResponse in protobuf's JSON mapping)\n"
    "              or yaml\n"
    "  --json      the same as -o json\n";

static const char *const usage_health =
    "usage: dpoctl health [--service NAME]\n"
    "\n"
    "Calls grpc.health.v1.Health/Check and prints the status (SERVING). Exits 0 only if serving.\n";

static int usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int usage_error(const char *cmd, const char *fmt, ...) {
  fprintf(stderr, "dpoctl: %s%s", cmd ? cmd : "", cmd ? ": " : "");
  va_list ap;
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, " (see dpoctl %s%s--help)\n", cmd ? cmd : "", cmd ? " " : "");
  return EXIT_USAGE;
}

/* getopt_long with our own messages; argv[0] is the command name. Returns the option or -1. */
static int next_opt(const char *cmd, int argc, char **argv, const char *shortopts, const struct option *longopts,
                    int *bad) {
  int c = getopt_long(argc, argv, shortopts, longopts, NULL);
  if (c == '?' || c == ':') {
    const char *what = optind - 1 < argc ? argv[optind - 1] : "?";
    if (c == ':')
      usage_error(cmd, "option '%s' needs a value", what);
    else
      usage_error(cmd, "unknown option '%s'", what);
    *bad = 1;
  }
  return c;
}

static int parse_id(const char *cmd, const char *text, uint64_t *id) {
  if (dpod_parse_u64(text, UINT64_MAX, id) != 0 || *id == 0) return usage_error(cmd, "bad job id '%s'", text);
  return 0;
}

static int parse_output(const char *cmd, const char *text, out_format *out) {
  if (strcmp(text, "table") == 0) *out = OUT_TABLE;
  else if (strcmp(text, "json") == 0) *out = OUT_JSON;
  else if (strcmp(text, "yaml") == 0) *out = OUT_YAML;
  else return usage_error(cmd, "-o wants table, json or yaml, not '%s'", text);
  return 0;
}

/* Prints a tree from pb_json_message() as indented JSON or as YAML, and frees it. */
static int print_tree(cJSON *tree, out_format f) {
  if (!tree) {
    fprintf(stderr, "dpoctl: out of memory\n");
    return EXIT_FAIL;
  }
  int rc = 0;
  if (f == OUT_YAML) {
    rc = pb_yaml_write(tree, stdout);
  } else {
    char *text = cJSON_Print(tree);
    rc = text && puts(text) >= 0 ? 0 : -1;
    cJSON_free(text);
  }
  cJSON_Delete(tree);
  return rc == 0 ? EXIT_OK : EXIT_FAIL;
}

/* An array of the messages' JSON trees; NULL when out of memory. */
static cJSON *tree_of_array(ProtobufCMessage *const *msgs, size_t n) {
  cJSON *arr = cJSON_CreateArray();
  for (size_t i = 0; arr && i < n; i++) {
    cJSON *j = pb_json_message(msgs[i]);
    if (!j) {
      cJSON_Delete(arr);
      return NULL;
    }
    cJSON_AddItemToArray(arr, j);
  }
  return arr;
}

/* ----------------------------------------------------------------------------------------------- */
/* Talking to dpod. */

/* The token for a TCP address: $DPOD_TOKEN, else the token file's first line. "" when there is none
 * (dpod then answers UNAUTHENTICATED, and rpc_failed() says what to do). */
static int ctl_token(const ctl *c, char *token, size_t len) {
  const char *env = getenv("DPOD_TOKEN");
  token[0] = '\0';
  if (env && *env) return snprintf(token, len, "%s", env) < (int)len ? 0 : -1;
  char path[4096], err[512];
  const char *file = c->token_file ? c->token_file : getenv("DPOD_TOKEN_FILE");
  if (file && *file) {
    snprintf(path, sizeof path, "%s", file);
  } else {
    dpod_default_state_dir(path, sizeof path - 8);
    strcat(path, "/token");
  }
  char *text = NULL;
  size_t n = 0;
  int status = dpod_read_file(path, len - 1, &text, &n, err, sizeof err);
  if (status == DPOD_ENOENT && !(file && *file)) return 0; /* no default file: try without */
  if (status != 0) {
    fprintf(stderr, "dpoctl: token: %s\n", err);
    return -1;
  }
  while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r')) text[--n] = '\0';
  snprintf(token, len, "%s", text);
  memset(text, 0, n);
  free(text);
  return 0;
}

static int ctl_connect(ctl *c) {
  if (c->client) return 0;
  char err[512], token[520] = "";
  rpc_client_params p = rpc_client_default_params();
  if (!rpc_unix_path(c->addr)) {
    /* Over the unix socket its owner-only mode is the access control; TCP needs TLS and the token. */
    if (ctl_token(c, token, sizeof token) != 0) return EXIT_USAGE;
    p.token = token;
    p.tls_ca = c->tls_ca ? c->tls_ca : getenv("DPOD_TLS_CA");
  }
  int status = rpc_client_open_with(c->addr, &p, &c->client, err, sizeof err);
  memset(token, 0, sizeof token);
  if (status != 0) {
    fprintf(stderr, "dpoctl: cannot reach dpod at %s: %s\n", c->addr, err);
    return EXIT_CONN;
  }
  return 0;
}

static void ctl_disconnect(ctl *c) {
  rpc_client_close(c->client);
  c->client = NULL;
}

/* The rpc layer's message without the leading "/service/Method: ". */
static const char *strip_method(const char *err) {
  if (err[0] != '/') return err;
  const char *p = strstr(err, ": ");
  return p ? p + 2 : err;
}

static int is_conn_status(int st) { return st == GRPC_STATUS_UNAVAILABLE || st == GRPC_STATUS_DEADLINE_EXCEEDED; }

/* Reports a failed call and picks the exit status. */
static int rpc_failed(ctl *c, const char *what, const char *err) {
  int st = rpc_last_grpc_status();
  if (is_conn_status(st)) {
    fprintf(stderr, "dpoctl: cannot reach dpod at %s: %s\n", c->addr, strip_method(err));
    fprintf(stderr, "hint: is dpod running? start it (dpod --listen %s) or point --addr / DPOD_ADDR at it\n",
            c->addr);
    return EXIT_CONN;
  }
  fprintf(stderr, "dpoctl: %s: %s\n", what, strip_method(err));
  if (st == GRPC_STATUS_UNAUTHENTICATED)
    fprintf(stderr, "hint: dpod wants its token over TCP: --token-file FILE, $DPOD_TOKEN_FILE or $DPOD_TOKEN "
                    "(dpod writes it to STATE_DIR/token)\n");
  return st == GRPC_STATUS_INVALID_ARGUMENT ? EXIT_USAGE : EXIT_FAIL;
}

static int ctl_unary(ctl *c, const char *what, const char *method, const ProtobufCMessage *req,
                     const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp) {
  int rc = ctl_connect(c);
  if (rc) return rc;
  char err[1024];
  if (rpc_unary(c->client, method, req, desc, resp, RPC_TIMEOUT_MS, err, sizeof err) != 0)
    return rpc_failed(c, what, err);
  return 0;
}

static int get_job(ctl *c, uint64_t id, Dpod__V1__GetJobResponse **out) {
  Dpod__V1__GetJobRequest req = DPOD__V1__GET_JOB_REQUEST__INIT;
  req.has_job_id = 1;
  req.job_id = id;
  char what[64];
  snprintf(what, sizeof what, "job %" PRIu64, id);
  ProtobufCMessage *resp;
  int rc = ctl_unary(c, what, M_GET, &req.base, &dpod__v1__get_job_response__descriptor, &resp);
  if (rc) return rc;
  *out = (Dpod__V1__GetJobResponse *)resp;
  if (!(*out)->job) {
    fprintf(stderr, "dpoctl: job %" PRIu64 ": the daemon returned no job\n", id);
    protobuf_c_message_free_unpacked(resp, NULL);
    return EXIT_FAIL;
  }
  return 0;
}

/* The job's name as the table shows it: the job's own, else its spec's; "" when it has none. */
static const char *job_display_name(const Dpod__V1__Job *j) {
  if (j->name && *j->name) return j->name;
  return j->spec && j->spec->name ? j->spec->name : "";
}

static int list_jobs(ctl *c, const char *what, const Dpod__V1__ListJobsRequest *req, Dpod__V1__ListJobsResponse **out) {
  ProtobufCMessage *m;
  int rc = ctl_unary(c, what, M_LIST, &req->base, &dpod__v1__list_jobs_response__descriptor, &m);
  if (rc == 0) *out = (Dpod__V1__ListJobsResponse *)m;
  return rc;
}

/* A job named on the command line: a number is its id; anything else is a name, which must belong to
 * exactly one of the newest NAME_LOOKUP_LIMIT jobs. Returns 0 with *id set, or an exit status (the
 * error said). */
static int resolve_job(ctl *c, const char *cmd, const char *text, uint64_t *id) {
  if (text[0] >= '0' && text[0] <= '9') return parse_id(cmd, text, id);
  if (!text[0]) return usage_error(cmd, "%s", "empty job id");
  Dpod__V1__ListJobsRequest req = DPOD__V1__LIST_JOBS_REQUEST__INIT;
  req.has_limit = 1;
  req.limit = NAME_LOOKUP_LIMIT;
  Dpod__V1__ListJobsResponse *resp;
  int rc = list_jobs(c, cmd, &req, &resp);
  if (rc) return rc;
  size_t found = 0;
  char ids[256] = "";
  size_t off = 0;
  for (size_t i = 0; i < resp->n_jobs; i++) {
    if (strcmp(job_display_name(resp->jobs[i]), text) != 0) continue;
    *id = resp->jobs[i]->id;
    if (off < sizeof ids - 24)
      off += (size_t)snprintf(ids + off, sizeof ids - off, "%s%" PRIu64, found ? ", " : "", resp->jobs[i]->id);
    found++;
  }
  protobuf_c_message_free_unpacked(&resp->base, NULL);
  if (found == 1) return 0;
  if (found == 0) {
    fprintf(stderr, "dpoctl: %s: no job is named '%s' (nor is it a job id)\n", cmd, text);
    return EXIT_FAIL;
  }
  return usage_error(cmd, "%zu jobs are named '%s' (ids %s): give the id", found, text, ids);
}

/* ----------------------------------------------------------------------------------------------- */
/* watch */

typedef struct {
  uint64_t last_seq;
  int have_metrics, have_ckpt, terminal;
  Dpod__V1__JobState state;
  char reason[256];
  Dpod__V1__StepMetrics metrics;  /* a copy: StepMetrics holds no pointers */
  uint32_t ckpt_step;
  char ckpt_path[1024];
  int64_t first_ms, last_ms;
  /* The progress line (watch_opts.progress): */
  fmt_rate_meter meter;
  int64_t train_start_ms;       /* event time of the first RUNNING state (or first step) seen */
  int64_t last_event_ms;        /* the latest event's time and when it arrived here: elapsed time */
  int64_t last_recv_ms;         /* counts on from it without comparing dpod's clock with ours */
  int64_t last_step_ms;         /* the latest step's event time: where elapsed stops once the job ended */
  int64_t drawn_ms;             /* when the line was last drawn (local); 0: it is not on screen */
  int dirty;                    /* a step arrived that the line does not show yet */
  diagnose diag;                /* warnings drawn from the steps (diagnose.h) */
  unsigned raised;              /* ... raised by the latest step, not printed yet */
} watch_state;

/* The terminal's width, 80 when it cannot be had (read at every redraw: the window may be resized). */
static int watch_columns(void) {
  struct winsize ws;
  return ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 ? ws.ws_col : 80;
}

/* Draws the progress line over whatever the cursor's line holds, leaving the cursor on it. */
static void watch_draw_progress(watch_state *w) {
  if (!w->have_metrics) return;
  int64_t now = fmt_now_ms();
  const Dpod__V1__StepMetrics *m = &w->metrics;
  fmt_progress p = {.step = m->step, .total = m->total_steps, .steps_per_s = fmt_rate_meter_rate(&w->meter),
                    .has_loss = m->has_loss, .loss = m->loss, .has_acc = m->has_implicit_acc, .acc = m->implicit_acc};
  if (w->terminal)
    p.elapsed_s = (w->last_step_ms - w->train_start_ms) / 1000.0;
  else
    p.elapsed_s = (w->last_event_ms - w->train_start_ms + now - w->last_recv_ms) / 1000.0;
  char line[512];
  printf("\r\033[K%s", fmt_progress_line(&p, watch_columns(), line, sizeof line));
  fflush(stdout);
  w->drawn_ms = now;
  w->dirty = 0;
}

/* Takes the progress line off the screen, so that a line can be printed where it was. */
static void watch_clear_progress(watch_state *w) {
  if (!w->drawn_ms) return;
  fputs("\r\033[K", stdout);
  fflush(stdout); /* before anything on stderr, which is likely the same terminal */
  w->drawn_ms = 0;
}

/* Leaves the progress line on the screen, up to date, as the last line of the stream (as tqdm does). */
static void watch_finish_progress(watch_state *w) {
  if (w->dirty) watch_draw_progress(w);
  if (w->drawn_ms) {
    putchar('\n');
    fflush(stdout);
  }
  w->drawn_ms = 0;
}

/* On a terminal: steps redraw the progress line in place (at most ten times a second: a replayed
 * history arrives all at once); every other event is printed above it. Called after watch_note_event. */
static void watch_progress_event(watch_state *w, const Dpod__V1__JobEvent *ev) {
  w->last_event_ms = ev->time_unix_ms;
  w->last_recv_ms = fmt_now_ms();
  if (ev->event_case == DPOD__V1__JOB_EVENT__EVENT_STATE && ev->state->state == DPOD__V1__JOB_STATE__JOB_STATE_RUNNING &&
      !w->train_start_ms)
    w->train_start_ms = ev->time_unix_ms;
  if (ev->event_case == DPOD__V1__JOB_EVENT__EVENT_METRICS) {
    if (!w->train_start_ms) w->train_start_ms = ev->time_unix_ms;
    w->last_step_ms = ev->time_unix_ms;
    fmt_rate_meter_add(&w->meter, ev->metrics->step, ev->time_unix_ms);
    w->dirty = 1;
    if (!w->drawn_ms || w->last_recv_ms - w->drawn_ms >= 100) watch_draw_progress(w);
    return;
  }
  char line[1024];
  watch_clear_progress(w);
  puts(fmt_event(ev, line, sizeof line));
  watch_draw_progress(w);
}

/* The next event, as rpc_stream_next; with the progress line on, it is redrawn every half second while
 * none comes, so that a step the throttle held back shows up and the elapsed time keeps counting. */
static int watch_next_event(const watch_opts *o, watch_state *w, rpc_stream *s, ProtobufCMessage **m, char *err,
                            size_t errlen) {
  for (;;) {
    int rc = rpc_stream_next(s, &dpod__v1__job_event__descriptor, m, o->progress ? 500 : 0, err, errlen);
    if (rc != DPOD_ETIMEDOUT || !o->progress) return rc;
    if (!w->terminal) watch_draw_progress(w);
  }
}

static void watch_print_event(const watch_opts *o, watch_state *w, const Dpod__V1__JobEvent *ev) {
  if (o->jsonl) {
    char *s = pb_json_print(&ev->base, 0);
    if (s) puts(s);
    cJSON_free(s);
  } else if (o->progress) {
    watch_progress_event(w, ev);
  } else {
    char line[1024];
    puts(fmt_event(ev, line, sizeof line));
  }
  fflush(stdout);
}

static void watch_note_event(watch_state *w, const Dpod__V1__JobEvent *ev) {
  w->last_seq = ev->seq;
  if (ev->has_time_unix_ms) {
    if (!w->first_ms) w->first_ms = ev->time_unix_ms;
    w->last_ms = ev->time_unix_ms;
  }
  switch (ev->event_case) {
    case DPOD__V1__JOB_EVENT__EVENT_STATE:
      w->state = ev->state->state;
      snprintf(w->reason, sizeof w->reason, "%s", ev->state->reason ? ev->state->reason : "");
      w->terminal = job_state_is_terminal(w->state); /* a restarted job leaves its terminal state again */
      break;
    case DPOD__V1__JOB_EVENT__EVENT_METRICS:
      w->metrics = *ev->metrics;
      w->have_metrics = 1;
      w->raised |= diag_add(&w->diag, ev->metrics);
      break;
    case DPOD__V1__JOB_EVENT__EVENT_CHECKPOINT:
      w->have_ckpt = 1;
      w->ckpt_step = ev->checkpoint->step;
      snprintf(w->ckpt_path, sizeof w->ckpt_path, "%s", ev->checkpoint->path ? ev->checkpoint->path : "");
      break;
    default: break;
  }
}

/* "job 7 succeeded in 1m12s: 20/20 steps, loss 0.6931, acc 0.50; last checkpoint step 20: /path". The
 * daemon's view of the job (times, last checkpoint) is preferred when it can be had. */
static void watch_summary(ctl *c, const watch_opts *o, uint64_t id, watch_state *w) {
  FILE *out = o->jsonl ? stderr : stdout;
  Dpod__V1__GetJobResponse *resp = NULL;
  double secs = w->last_ms > w->first_ms ? (w->last_ms - w->first_ms) / 1000.0 : 0;
  char dur[32];
  if (c->client) {
    Dpod__V1__GetJobRequest req = DPOD__V1__GET_JOB_REQUEST__INIT;
    req.has_job_id = 1;
    req.job_id = id;
    char err[512];
    ProtobufCMessage *m;
    if (rpc_unary(c->client, M_GET, &req.base, &dpod__v1__get_job_response__descriptor, &m, RPC_TIMEOUT_MS, err,
                  sizeof err) == 0)
      resp = (Dpod__V1__GetJobResponse *)m;
  }
  const Dpod__V1__Job *job = resp ? resp->job : NULL;
  if (job && job->started_unix_ms > 0 && job->finished_unix_ms >= job->started_unix_ms)
    secs = (job->finished_unix_ms - job->started_unix_ms) / 1000.0;
  if (job && job->last_metrics && !w->have_metrics) {
    w->metrics = *job->last_metrics;
    w->have_metrics = 1;
  }
  if (job && job->last_checkpoint) {
    w->have_ckpt = 1;
    w->ckpt_step = job->last_checkpoint->step;
    snprintf(w->ckpt_path, sizeof w->ckpt_path, "%s", job->last_checkpoint->path ? job->last_checkpoint->path : "");
  }

  fprintf(out, "job %" PRIu64 " %s", id, job_state_name(w->state));
  if (w->state != DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED && w->reason[0]) fprintf(out, " (%s)", w->reason);
  fprintf(out, " after %s", fmt_duration(secs, dur, sizeof dur));
  if (w->have_metrics) {
    const Dpod__V1__StepMetrics *m = &w->metrics;
    fprintf(out, ": step %u/%u", m->step, m->total_steps);
    if (m->has_loss) fprintf(out, ", loss %.4f", m->loss);
    if (m->has_implicit_acc) fprintf(out, ", acc %.2f", m->implicit_acc);
  } else {
    fprintf(out, ": no steps reported");
  }
  if (w->have_ckpt) fprintf(out, "; last checkpoint step %u: %s", w->ckpt_step, w->ckpt_path);
  fprintf(out, "\n");
  fflush(out);
  if (resp) protobuf_c_message_free_unpacked(&resp->base, NULL);
}

/* Before reconnecting a broken stream: a fresh channel, after a backoff that grows with the failures. */
static void ctl_reconnect_pause(ctl *c, int failures) {
  ctl_disconnect(c);
  int delay_ms = failures < 4 ? 250 << failures : 2000;
  struct timespec ts = {.tv_sec = delay_ms / 1000, .tv_nsec = (long)(delay_ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Follows the job's events. A broken stream (dpod restarting) is reopened with after_seq = the last
 * seq printed, so the user sees every event exactly once; a fresh channel each time avoids waiting out
 * the old one's reconnect backoff. */
/* The warnings the latest step raised, on stderr (above the progress line). */
static void watch_print_warnings(watch_state *w) {
  char text[512];
  if (!w->raised) return;
  watch_clear_progress(w);
  for (unsigned k = 1; k <= DIAG_LAST; k <<= 1)
    if (w->raised & k)
      fprintf(stderr, "warning: step %u: %s\n", w->metrics.step, diag_describe(&w->diag, (diag_kind)k, text, sizeof text));
  w->raised = 0;
}

static int watch_job(ctl *c, uint64_t id, uint64_t after_seq, const watch_opts *o) {
  watch_state w = {.last_seq = after_seq};
  diag_init(&w.diag, NULL);
  int got_any = 0, failures = 0;
  char err[1024];

  for (;;) {
    int rc = ctl_connect(c);
    if (rc) return rc;
    Dpod__V1__WatchJobRequest req = DPOD__V1__WATCH_JOB_REQUEST__INIT;
    req.has_job_id = 1;
    req.job_id = id;
    req.has_after_seq = 1;
    req.after_seq = w.last_seq;
    rpc_stream *s = NULL;
    rc = rpc_stream_open(c->client, M_WATCH, &req.base, &s, err, sizeof err);
    if (rc == 0) {
      ProtobufCMessage *m;
      while ((rc = watch_next_event(o, &w, s, &m, err, sizeof err)) == 1) {
        Dpod__V1__JobEvent *ev = (Dpod__V1__JobEvent *)m;
        got_any = 1;
        failures = 0;
        if (ev->seq <= w.last_seq) {  /* replayed after a reconnect: already shown */
          protobuf_c_message_free_unpacked(m, NULL);
          continue;
        }
        if (ev->seq != w.last_seq + 1) {
          watch_clear_progress(&w);
          fprintf(stderr, "dpoctl: warning: events %" PRIu64 "..%" PRIu64 " of job %" PRIu64 " are missing\n",
                  w.last_seq + 1, ev->seq - 1, id);
        }
        watch_note_event(&w, ev);
        watch_print_event(o, &w, ev);
        watch_print_warnings(&w);
        protobuf_c_message_free_unpacked(m, NULL);
      }
      rpc_stream_close(s);
    }
    if (w.terminal) break;
    watch_clear_progress(&w); /* messages follow on stderr, likely the same terminal */

    int st = rpc_last_grpc_status();
    if (rc < 0 && !is_conn_status(st) && st != GRPC_STATUS_CANCELLED && st != GRPC_STATUS_INTERNAL &&
        st != GRPC_STATUS_UNKNOWN) {
      char what[64];
      snprintf(what, sizeof what, "job %" PRIu64, id);
      return rpc_failed(c, what, err);  /* NOT_FOUND and the like: retrying will not help */
    }
    if (!got_any && rc < 0) return rpc_failed(c, "watch", err);  /* never connected */
    if (++failures > o->retries) {
      fprintf(stderr, "dpoctl: lost dpod at %s and gave up after %d attempts (last seen event %" PRIu64 "): %s\n",
              c->addr, o->retries, w.last_seq, rc < 0 ? strip_method(err) : "stream ended early");
      return EXIT_CONN;
    }
    fprintf(stderr, "dpoctl: stream to dpod broke (%s); reconnecting after event %" PRIu64 " (%d/%d)\n",
            rc < 0 ? strip_method(err) : "ended before the job did", w.last_seq, failures, o->retries);
    ctl_reconnect_pause(c, failures);
  }

  if (o->progress) watch_finish_progress(&w);
  watch_summary(c, o, id, &w);
  return w.state == DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED ? EXIT_OK : EXIT_FAIL;
}

static int cmd_watch(ctl *c, int argc, char **argv) {
  static const struct option longopts[] = {{"after-seq", required_argument, NULL, 'a'},
                                           {"events-jsonl", no_argument, NULL, 'j'},
                                           {"no-progress", no_argument, NULL, 'P'},
                                           {"retries", required_argument, NULL, 'r'},
                                           {"addr", required_argument, NULL, 'A'},
                                           {"help", no_argument, NULL, 'h'},
                                           {0}};
  watch_opts o = {.progress = isatty(STDOUT_FILENO), .retries = WATCH_RETRIES};
  uint64_t after = 0;
  int opt, bad = 0;
  while ((opt = next_opt("watch", argc, argv, ":h", longopts, &bad)) != -1 && !bad) {
    switch (opt) {
      case 'a':
        if (dpod_parse_u64(optarg, UINT64_MAX, &after) != 0) return usage_error("watch", "bad --after-seq '%s'", optarg);
        break;
      case 'j': o.jsonl = 1; break;
      case 'P': o.progress = 0; break;
      case 'r': {
        uint64_t v;
        if (dpod_parse_u64(optarg, 1000000, &v) != 0) return usage_error("watch", "bad --retries '%s'", optarg);
        o.retries = (int)v;
        break;
      }
      case 'A': snprintf(c->addr, sizeof c->addr, "%s", optarg); break;
      case 'h': fputs(usage_watch, stdout); return EXIT_OK;
    }
  }
  if (bad) return EXIT_USAGE;
  if (optind != argc - 1) return usage_error("watch", "%s", "expected one job id");
  uint64_t id;
  int rc = resolve_job(c, "watch", argv[optind], &id);
  if (rc) return rc;
  if (o.jsonl) o.progress = 0;
  return watch_job(c, id, after, &o);
}

/* ----------------------------------------------------------------------------------------------- */
/* submit */

static int read_stdin(char **out, size_t *len) {
  size_t cap = 8192, n = 0;
  char *buf = malloc(cap);
  if (!buf) return DPOD_ENOMEM;
  size_t k;
  while ((k = fread(buf + n, 1, cap - n, stdin)) > 0) {
    n += k;
    if (n == cap) {
      char *nb = realloc(buf, cap *= 2);
      if (!nb) return free(buf), DPOD_ENOMEM;
      buf = nb;
    }
  }
  *out = buf;
  *len = n;
  return 0;
}

static int cmd_submit(ctl *c, int argc, char **argv) {
  static const struct option longopts[] = {{"set", required_argument, NULL, 's'},
                                           {"name", required_argument, NULL, 'n'},
                                           {"dry-run", no_argument, NULL, 'd'},
                                           {"watch", no_argument, NULL, 'w'},
                                           {"events-jsonl", no_argument, NULL, 'j'},
                                           {"no-progress", no_argument, NULL, 'P'},
                                           {"quiet", no_argument, NULL, 'q'},
                                           {"addr", required_argument, NULL, 'A'},
                                           {"help", no_argument, NULL, 'h'},
                                           {0}};
  char err[1024];
  int rc = EXIT_USAGE, opt, bad = 0, dry_run = 0, watch = 0, quiet = 0;
  watch_opts o = {.progress = isatty(STDOUT_FILENO), .retries = WATCH_RETRIES};
  const char *name = NULL;
  char **sets = calloc((size_t)argc, sizeof *sets);
  size_t n_sets = 0;
  Dpod__V1__JobSpec *spec = NULL;
  if (!sets) return EXIT_FAIL;

  while ((opt = next_opt("submit", argc, argv, ":hq", longopts, &bad)) != -1 && !bad) {
    switch (opt) {
      case 'q': quiet = 1; break;
      case 's': sets[n_sets++] = optarg; break;
      case 'n': name = optarg; break;
      case 'd': dry_run = 1; break;
      case 'w': watch = 1; break;
      case 'j': o.jsonl = 1; break;
      case 'P': o.progress = 0; break;
      case 'A': snprintf(c->addr, sizeof c->addr, "%s", optarg); break;
      case 'h': fputs(usage_submit, stdout); rc = EXIT_OK; goto done;
    }
  }
  if (bad) goto done;
  if (optind != argc - 1) {
    usage_error("submit", "%s", optind >= argc ? "expected a job file (JOB.yaml, or - for stdin)"
                                               : "expected exactly one job file");
    goto done;
  }
  const char *path = argv[optind];

  spec = job_spec_new();
  if (!spec) {
    fprintf(stderr, "dpoctl: out of memory\n");
    rc = EXIT_FAIL;
    goto done;
  }
  int st;
  if (strcmp(path, "-") == 0) {
    char *text;
    size_t len;
    st = read_stdin(&text, &len);
    if (st == 0) {
      st = job_spec_parse_yaml(spec, text, len, "<stdin>", err, sizeof err);
      free(text);
    } else {
      snprintf(err, sizeof err, "<stdin>: cannot read");
    }
  } else {
    st = job_spec_load_yaml(spec, path, err, sizeof err);
  }
  if (st) {
    fprintf(stderr, "dpoctl: %s\n", err);
    goto done;
  }
  for (size_t i = 0; i < n_sets; i++) {
    char *eq = strchr(sets[i], '=');
    if (!eq) {
      usage_error("submit", "--set '%s': expected KEY=VALUE", sets[i]);
      goto done;
    }
    *eq = '\0';
    st = job_spec_set(spec, sets[i], eq + 1, err, sizeof err);
    *eq = '=';
    if (st) {
      fprintf(stderr, "dpoctl: --set %s: %s\n", sets[i], err);
      goto done;
    }
  }
  if (name && job_spec_set(spec, "name", name, err, sizeof err) != 0) {
    fprintf(stderr, "dpoctl: --name: %s\n", err);
    goto done;
  }
  /* dpod runs in a directory of its own: paths relative to ours mean nothing there. (Over TCP dpod is
   * on another host, where our directory means nothing either: it refuses relative paths itself.) */
  char cwd[4096];
  if (rpc_unix_path(c->addr) && getcwd(cwd, sizeof cwd) &&
      job_spec_absolute_paths(spec, cwd, err, sizeof err) != 0) {
    fprintf(stderr, "dpoctl: %s: %s\n", path, err);
    goto done;
  }
  if (job_spec_validate(spec, 0, err, sizeof err) != 0) {
    fprintf(stderr, "dpoctl: %s: invalid job spec: %s\n", path, err);
    goto done;
  }
  if (dry_run) {
    printf("# %s, normalized (every default filled in); not submitted\n", path);
    job_spec_write_yaml(spec, stdout, 0);
    rc = EXIT_OK;
    goto done;
  }

  Dpod__V1__SubmitJobRequest req = DPOD__V1__SUBMIT_JOB_REQUEST__INIT;
  req.spec = spec;
  ProtobufCMessage *m;
  rc = ctl_unary(c, "submit", M_SUBMIT, &req.base, &dpod__v1__submit_job_response__descriptor, &m);
  if (rc) goto done;
  Dpod__V1__SubmitJobResponse *resp = (Dpod__V1__SubmitJobResponse *)m;
  if (!resp->job || !resp->job->has_id) {
    fprintf(stderr, "dpoctl: submit: the daemon returned no job id\n");
    protobuf_c_message_free_unpacked(m, NULL);
    rc = EXIT_FAIL;
    goto done;
  }
  uint64_t id = resp->job->id;
  protobuf_c_message_free_unpacked(m, NULL);
  if (quiet)
    fprintf(watch && o.jsonl ? stderr : stdout, "%" PRIu64 "\n", id);
  else
    fprintf(watch && o.jsonl ? stderr : stdout, "submitted job %" PRIu64 "\n", id);
  fflush(stdout);
  rc = watch ? watch_job(c, id, 0, &o) : EXIT_OK;

done:
  if (spec) protobuf_c_message_free_unpacked(&spec->base, NULL);
  free(sets);
  return rc;
}

/* ----------------------------------------------------------------------------------------------- */
/* list, get, cancel, health */

static void progress_cell(const Dpod__V1__Job *j, char *buf, size_t len) {
  uint32_t total = j->spec && j->spec->train ? j->spec->train->steps : 0;
  if (j->last_metrics && j->last_metrics->total_steps) total = j->last_metrics->total_steps;
  if (j->last_metrics)
    snprintf(buf, len, "%u/%u", j->last_metrics->step, total);
  else
    snprintf(buf, len, "-/%u", total);
}

static int cmd_list(ctl *c, int argc, char **argv) {
  static const struct option longopts[] = {{"state", required_argument, NULL, 's'},
                                           {"limit", required_argument, NULL, 'l'},
                                           {"name", required_argument, NULL, 'n'},
                                           {"quiet", no_argument, NULL, 'q'},
                                           {"output", required_argument, NULL, 'o'},
                                           {"json", no_argument, NULL, 'j'},
                                           {"addr", required_argument, NULL, 'A'},
                                           {"help", no_argument, NULL, 'h'},
                                           {0}};
  Dpod__V1__JobState states[16];
  size_t n_states = 0;
  uint32_t limit = 0;
  int opt, bad = 0, quiet = 0;
  out_format out = OUT_TABLE;
  const char *pattern = NULL;
  while ((opt = next_opt("list", argc, argv, ":hqo:", longopts, &bad)) != -1 && !bad) {
    switch (opt) {
      case 'n': pattern = optarg; break;
      case 'q': quiet = 1; break;
      case 'o':
        if (parse_output("list", optarg, &out)) return EXIT_USAGE;
        break;
      case 's': {
        char buf[256];
        snprintf(buf, sizeof buf, "%s", optarg);
        for (char *save, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
          if (n_states == 16) return usage_error("list", "%s", "too many --state values");
          if (job_state_parse(tok, &states[n_states]) != 0) return usage_error("list", "unknown state '%s'", tok);
          n_states++;
        }
        break;
      }
      case 'l': {
        uint64_t v;
        if (dpod_parse_u64(optarg, UINT32_MAX, &v) != 0 || v == 0) return usage_error("list", "bad --limit '%s'", optarg);
        limit = (uint32_t)v;
        break;
      }
      case 'j': out = OUT_JSON; break;
      case 'A': snprintf(c->addr, sizeof c->addr, "%s", optarg); break;
      case 'h': fputs(usage_list, stdout); return EXIT_OK;
    }
  }
  if (bad) return EXIT_USAGE;
  if (optind != argc) return usage_error("list", "unexpected argument '%s'", argv[optind]);

  Dpod__V1__ListJobsRequest req = DPOD__V1__LIST_JOBS_REQUEST__INIT;
  req.n_states = n_states;
  req.states = states;
  if (limit || pattern) {
    /* A name filter applies here, to the newest jobs the daemon gives; the limit after it. */
    req.has_limit = 1;
    req.limit = pattern ? NAME_LOOKUP_LIMIT : limit;
  }
  Dpod__V1__ListJobsResponse *resp;
  int rc = list_jobs(c, "list", &req, &resp);
  if (rc) return rc;
  ProtobufCMessage *m = &resp->base;
  if (pattern) {
    size_t kept = 0;
    int glob = strpbrk(pattern, "*?[") != NULL;
    for (size_t i = 0; i < resp->n_jobs; i++) {
      const char *nm = job_display_name(resp->jobs[i]);
      int match = glob ? fnmatch(pattern, nm, 0) == 0 : strstr(nm, pattern) != NULL;
      if (match && kept < (limit ? limit : LIST_DEFAULT_LIMIT)) {
        Dpod__V1__Job *keep = resp->jobs[i];
        resp->jobs[i] = resp->jobs[kept];
        resp->jobs[kept++] = keep;
      }
    }
    /* The others stay in the array past n_jobs, for the free below. */
    for (size_t i = kept; i < resp->n_jobs; i++) protobuf_c_message_free_unpacked(&resp->jobs[i]->base, NULL);
    resp->n_jobs = kept;
  }
  if (quiet) {
    for (size_t i = 0; i < resp->n_jobs; i++) printf("%" PRIu64 "\n", resp->jobs[i]->id);
  } else if (out != OUT_TABLE) {
    rc = print_tree(tree_of_array((ProtobufCMessage *const *)resp->jobs, resp->n_jobs), out);
  } else if (resp->n_jobs == 0) {
    printf("no jobs%s%s\n", n_states ? " in that state" : "", pattern ? " with that name" : "");
  } else {
    int64_t now = fmt_now_ms();
    printf("%-6s %-24s %-10s %-11s %-8s %-5s %s\n", "ID", "NAME", "STATE", "STEP/TOTAL", "LOSS", "ACC", "AGE");
    for (size_t i = 0; i < resp->n_jobs; i++) {
      const Dpod__V1__Job *j = resp->jobs[i];
      char name[25], prog[32], loss[16] = "-", acc[16] = "-", age[16] = "-";
      const char *nm = *job_display_name(j) ? job_display_name(j) : "-";
      if (strlen(nm) > 24)
        snprintf(name, sizeof name, "%.21s...", nm);
      else
        snprintf(name, sizeof name, "%s", nm);
      progress_cell(j, prog, sizeof prog);
      if (j->last_metrics && j->last_metrics->has_loss) snprintf(loss, sizeof loss, "%.4f", j->last_metrics->loss);
      if (j->last_metrics && j->last_metrics->has_implicit_acc)
        snprintf(acc, sizeof acc, "%.2f", j->last_metrics->implicit_acc);
      if (j->created_unix_ms > 0) fmt_age(now - j->created_unix_ms, age, sizeof age);
      printf("%-6" PRIu64 " %-24s %-10s %-11s %-8s %-5s %s", j->id, name, job_state_name(j->state), prog, loss, acc,
             age);
      /* Why a job has not started yet (its backoff, or the scheduler's reason: "Resources"). */
      bool waiting = j->state == DPOD__V1__JOB_STATE__JOB_STATE_QUEUED || j->state == DPOD__V1__JOB_STATE__JOB_STATE_STARTING;
      if (waiting && j->reason && *j->reason) printf("  (%.60s)", j->reason);
      putchar('\n');
    }
  }
  protobuf_c_message_free_unpacked(m, NULL);
  return rc;
}

static void print_job(const Dpod__V1__Job *j, const diagnose *diag) {
  char t[64], ago[32], line[1024];
  int64_t now = fmt_now_ms();
  printf("job %" PRIu64 "%s%s%s\n", j->id, j->name && *j->name ? " (" : "", j->name && *j->name ? j->name : "",
         j->name && *j->name ? ")" : "");
  printf("  state:       %s\n", job_state_name(j->state));
  if (j->reason && *j->reason) printf("  reason:      %s\n", j->reason);
  if (j->has_exit_code && job_state_is_terminal(j->state)) printf("  exit code:   %d\n", j->exit_code);
  if (j->created_unix_ms > 0)
    printf("  created:     %s (%s ago)\n", fmt_time(j->created_unix_ms, t, sizeof t),
           fmt_age(now - j->created_unix_ms, ago, sizeof ago));
  if (j->started_unix_ms > 0) printf("  started:     %s\n", fmt_time(j->started_unix_ms, t, sizeof t));
  if (j->finished_unix_ms > 0) {
    printf("  finished:    %s", fmt_time(j->finished_unix_ms, t, sizeof t));
    if (j->started_unix_ms > 0)
      printf(" (ran %s)", fmt_duration((j->finished_unix_ms - j->started_unix_ms) / 1000.0, ago, sizeof ago));
    printf("\n");
  }
  if (j->run_dir && *j->run_dir) printf("  run dir:     %s\n", j->run_dir);
  if (j->has_last_seq) printf("  events:      %" PRIu64 " (watch with: dpoctl watch %" PRIu64 ")\n", j->last_seq, j->id);
  if (j->last_metrics) printf("  last step:   %s\n", fmt_metrics(j->last_metrics, line, sizeof line));
  if (j->last_checkpoint) {
    Dpod__V1__JobEvent ev = DPOD__V1__JOB_EVENT__INIT;
    ev.event_case = DPOD__V1__JOB_EVENT__EVENT_CHECKPOINT;
    ev.checkpoint = j->last_checkpoint;
    printf("  checkpoint:  %s\n", fmt_event(&ev, line, sizeof line) + strlen("checkpoint "));
  }
  if (j->n_checkpoints > 1) {
    printf("  on disk:     ");
    for (size_t i = 0; i < j->n_checkpoints; i++) printf("%sstep %u", i ? ", " : "", j->checkpoints[i]->step);
    printf("\n");
  }
  if (j->n_attempts > 0) {
    printf("  attempts:    %zu\n", j->n_attempts);
    if (j->restarts) printf("  restarts:    %u automatic (of %u allowed)\n", j->restarts, j->spec ? j->spec->max_restarts : 0);
    for (size_t i = 0; i < j->n_attempts; i++)
      printf("    %s\n", fmt_attempt(j->attempts[i], line, sizeof line));
  }
  if (j->first_eval) printf("  first eval:  %s\n", fmt_eval(j->first_eval, line, sizeof line) + strlen("eval "));
  if (j->last_eval && (!j->first_eval || j->last_eval->step != j->first_eval->step))
    printf("  last eval:   %s\n", fmt_eval(j->last_eval, line, sizeof line) + strlen("eval "));
  if (diag && diag_active(diag)) {
    printf("  warnings:\n");
    for (unsigned k = 1; k <= DIAG_LAST; k <<= 1)
      if (diag_active(diag) & k) printf("    - %s\n", diag_describe(diag, (diag_kind)k, line, sizeof line));
  }
  if (j->spec) {
    printf("  spec:\n");
    job_spec_write_yaml(j->spec, stdout, 4);
  }
}

/* Feeds every step of job `id` up to event `last_seq` to `diag` (a replay of its events). Returns 0, or
 * -1 with err set when the stream broke before. */
static int diagnose_job(ctl *c, uint64_t id, uint64_t last_seq, diagnose *diag, char *err, size_t errlen) {
  Dpod__V1__WatchJobRequest req = DPOD__V1__WATCH_JOB_REQUEST__INIT;
  req.has_job_id = 1;
  req.job_id = id;
  rpc_stream *s = NULL;
  if (rpc_stream_open(c->client, M_WATCH, &req.base, &s, err, errlen) != 0) return -1;
  ProtobufCMessage *m;
  uint64_t seq = 0;
  int rc = 1;
  while (seq < last_seq && (rc = rpc_stream_next(s, &dpod__v1__job_event__descriptor, &m, 0, err, errlen)) == 1) {
    const Dpod__V1__JobEvent *ev = (const Dpod__V1__JobEvent *)m;
    seq = ev->seq;
    if (ev->event_case == DPOD__V1__JOB_EVENT__EVENT_METRICS) diag_add(diag, ev->metrics);
    protobuf_c_message_free_unpacked(m, NULL);
  }
  rpc_stream_close(s);
  return rc < 0 && seq < last_seq ? -1 : 0;
}

/* The options of `get` and `checkpoints`: -o/--json and one job. Returns 0 with *resp the job, or an
 * exit status to return (help printed: EXIT_OK with *resp NULL). */
static int get_command(ctl *c, const char *name, const char *usage, int argc, char **argv, out_format *out,
                       Dpod__V1__GetJobResponse **resp) {
  static const struct option longopts[] = {{"json", no_argument, NULL, 'j'},
                                           {"output", required_argument, NULL, 'o'},
                                           {"addr", required_argument, NULL, 'A'},
                                           {"help", no_argument, NULL, 'h'},
                                           {0}};
  int opt, bad = 0;
  *resp = NULL;
  *out = OUT_TABLE;
  while ((opt = next_opt(name, argc, argv, ":ho:", longopts, &bad)) != -1 && !bad) {
    switch (opt) {
      case 'j': *out = OUT_JSON; break;
      case 'o':
        if (parse_output(name, optarg, out)) return EXIT_USAGE;
        break;
      case 'A': snprintf(c->addr, sizeof c->addr, "%s", optarg); break;
      case 'h': fputs(usage, stdout); return EXIT_OK;
    }
  }
  if (bad) return EXIT_USAGE;
  if (optind != argc - 1) return usage_error(name, "%s", "expected one job id");
  uint64_t id;
  int rc = resolve_job(c, name, argv[optind], &id);
  return rc ? rc : get_job(c, id, resp);
}

static int cmd_get(ctl *c, int argc, char **argv) {
  Dpod__V1__GetJobResponse *resp;
  out_format out;
  int rc = get_command(c, "get", usage_get, argc, argv, &out, &resp);
  if (rc || !resp) return rc;
  if (out != OUT_TABLE)
    rc = print_tree(pb_json_message(&resp->job->base), out);
  else {
    /* Warnings need the steps, not just the last one: replayed from the events. */
    diagnose diag;
    diag_init(&diag, NULL);
    char err[1024];
    const Dpod__V1__Job *j = resp->job;
    if (j->last_metrics && j->has_last_seq && j->last_seq > 0 &&
        diagnose_job(c, j->id, j->last_seq, &diag, err, sizeof err) != 0)
      fprintf(stderr, "dpoctl: cannot read job %" PRIu64 "'s steps for its warnings: %s\n", j->id, strip_method(err));
    print_job(j, &diag);
  }
  protobuf_c_message_free_unpacked(&resp->base, NULL);
  return rc;
}

static int cmd_checkpoints(ctl *c, int argc, char **argv) {
  Dpod__V1__GetJobResponse *resp;
  out_format out;
  int rc = get_command(c, "checkpoints", usage_checkpoints, argc, argv, &out, &resp);
  if (rc || !resp) return rc;
  const Dpod__V1__Job *j = resp->job;
  if (out != OUT_TABLE) {
    rc = print_tree(tree_of_array((ProtobufCMessage *const *)j->checkpoints, j->n_checkpoints), out);
  } else if (j->n_checkpoints == 0) {
    printf("job %" PRIu64 " has no checkpoint on disk\n", j->id);
  } else {
    printf("%-7s %-10s %-8s %-5s %s\n", "STEP", "SIZE", "LOSS", "ACC", "PATH");
    for (size_t i = 0; i < j->n_checkpoints; i++) {
      const Dpod__V1__CheckpointInfo *ck = j->checkpoints[i];
      char size[32] = "-", loss[16] = "-", acc[16] = "-";
      if (ck->has_size_bytes) fmt_bytes(ck->size_bytes, size, sizeof size);
      if (ck->metrics && ck->metrics->has_loss) snprintf(loss, sizeof loss, "%.4f", ck->metrics->loss);
      if (ck->metrics && ck->metrics->has_implicit_acc) snprintf(acc, sizeof acc, "%.2f", ck->metrics->implicit_acc);
      printf("%-7u %-10s %-8s %-5s %s\n", ck->step, size, loss, acc, ck->path ? ck->path : "");
    }
  }
  protobuf_c_message_free_unpacked(&resp->base, NULL);
  return rc;
}

/* The options and the one job that `cancel`, `restart` and `delete` take; `flag` names the one flag
 * the command has besides --addr and --help (NULL: none), *flag_set says whether it was given. Returns
 * 0 with *id set, or an exit status to return (-1: help printed). */
static int parse_job_command(ctl *c, const char *name, const char *usage, const char *flag, int argc, char **argv,
                             uint64_t *id, int *flag_set) {
  const struct option longopts[] = {{"addr", required_argument, NULL, 'A'},
                                    {"help", no_argument, NULL, 'h'},
                                    {flag ? flag : "help", no_argument, NULL, flag ? 'f' : 'h'},
                                    {0}};
  int opt, bad = 0;
  if (flag_set) *flag_set = 0;
  while ((opt = next_opt(name, argc, argv, ":h", longopts, &bad)) != -1 && !bad) {
    switch (opt) {
      case 'A': snprintf(c->addr, sizeof c->addr, "%s", optarg); break;
      case 'f': *flag_set = 1; break;
      case 'h': fputs(usage, stdout); return -1;
    }
  }
  if (bad) return EXIT_USAGE;
  if (optind != argc - 1) return usage_error(name, "%s", "expected one job id");
  return resolve_job(c, name, argv[optind], id);
}

/* Polls the job until it is in a terminal state; prints how it ended. */
static int wait_terminal(ctl *c, uint64_t id) {
  for (;;) {
    Dpod__V1__GetJobResponse *resp;
    int rc = get_job(c, id, &resp);
    if (rc) return rc;
    Dpod__V1__JobState st = resp->job->state;
    if (job_state_is_terminal(st)) {
      const char *reason = resp->job->reason;
      printf("job %" PRIu64 " %s%s%s%s\n", id, job_state_name(st), reason && *reason ? " (" : "",
             reason && *reason ? reason : "", reason && *reason ? ")" : "");
      protobuf_c_message_free_unpacked(&resp->base, NULL);
      return EXIT_OK;
    }
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    struct timespec ts = {.tv_sec = 0, .tv_nsec = 200 * 1000000L};
    nanosleep(&ts, NULL);
  }
}

static int cmd_cancel(ctl *c, int argc, char **argv) {
  uint64_t id;
  int wait = 0;
  int rc = parse_job_command(c, "cancel", usage_cancel, "wait", argc, argv, &id, &wait);
  if (rc) return rc < 0 ? EXIT_OK : rc;
  Dpod__V1__CancelJobRequest req = DPOD__V1__CANCEL_JOB_REQUEST__INIT;
  req.has_job_id = 1;
  req.job_id = id;
  char what[64];
  snprintf(what, sizeof what, "cancel job %" PRIu64, id);
  ProtobufCMessage *m;
  if ((rc = ctl_unary(c, what, M_CANCEL, &req.base, &dpod__v1__cancel_job_response__descriptor, &m))) return rc;
  Dpod__V1__CancelJobResponse *resp = (Dpod__V1__CancelJobResponse *)m;
  if (resp->job)
    printf("cancelled job %" PRIu64 " (state: %s)\n", id, job_state_name(resp->job->state));
  else
    printf("cancelled job %" PRIu64 "\n", id);
  protobuf_c_message_free_unpacked(m, NULL);
  fflush(stdout);
  return wait ? wait_terminal(c, id) : EXIT_OK;
}

static int cmd_delete(ctl *c, int argc, char **argv) {
  uint64_t id;
  int run_dir = 0;
  int rc = parse_job_command(c, "delete", usage_delete, "run-dir", argc, argv, &id, &run_dir);
  if (rc) return rc < 0 ? EXIT_OK : rc;
  Dpod__V1__DeleteJobRequest req = DPOD__V1__DELETE_JOB_REQUEST__INIT;
  req.has_job_id = req.has_remove_run_dir = 1;
  req.job_id = id;
  req.remove_run_dir = run_dir;
  char what[64];
  snprintf(what, sizeof what, "delete job %" PRIu64, id);
  ProtobufCMessage *m;
  if ((rc = ctl_unary(c, what, M_DELETE, &req.base, &dpod__v1__delete_job_response__descriptor, &m))) return rc;
  protobuf_c_message_free_unpacked(m, NULL);
  printf("deleted job %" PRIu64 "%s\n", id, run_dir ? " and its run directory" : "");
  return EXIT_OK;
}

static int cmd_restart(ctl *c, int argc, char **argv) {
  uint64_t id;
  int rc = parse_job_command(c, "restart", usage_restart, NULL, argc, argv, &id, NULL);
  if (rc) return rc < 0 ? EXIT_OK : rc;
  Dpod__V1__RestartJobRequest req = DPOD__V1__RESTART_JOB_REQUEST__INIT;
  req.has_job_id = 1;
  req.job_id = id;
  char what[64];
  snprintf(what, sizeof what, "restart job %" PRIu64, id);
  ProtobufCMessage *m;
  if ((rc = ctl_unary(c, what, M_RESTART, &req.base, &dpod__v1__restart_job_response__descriptor, &m))) return rc;
  Dpod__V1__RestartJobResponse *resp = (Dpod__V1__RestartJobResponse *)m;
  printf("restarted job %" PRIu64 " (state: %s)\n", id, resp->job ? job_state_name(resp->job->state) : "queued");
  protobuf_c_message_free_unpacked(m, NULL);
  return EXIT_OK;
}

static int cmd_health(ctl *c, int argc, char **argv) {
  static const struct option longopts[] = {{"service", required_argument, NULL, 's'},
                                           {"addr", required_argument, NULL, 'A'},
                                           {"help", no_argument, NULL, 'h'},
                                           {0}};
  const char *service = "";
  int opt, bad = 0;
  while ((opt = next_opt("health", argc, argv, ":h", longopts, &bad)) != -1 && !bad) {
    switch (opt) {
      case 's': service = optarg; break;
      case 'A': snprintf(c->addr, sizeof c->addr, "%s", optarg); break;
      case 'h': fputs(usage_health, stdout); return EXIT_OK;
    }
  }
  if (bad) return EXIT_USAGE;
  if (optind != argc) return usage_error("health", "unexpected argument '%s'", argv[optind]);
  Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  req.service = (char *)service;
  ProtobufCMessage *m;
  int rc = ctl_unary(c, "health", M_HEALTH, &req.base, &grpc__health__v1__health_check_response__descriptor, &m);
  if (rc) return rc;
  Grpc__Health__V1__HealthCheckResponse *resp = (Grpc__Health__V1__HealthCheckResponse *)m;
  const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(
      &grpc__health__v1__health_check_response__serving_status__descriptor, resp->status);
  printf("%s\n", v ? v->name : "UNKNOWN");
  rc = resp->status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING ? EXIT_OK : EXIT_FAIL;
  protobuf_c_message_free_unpacked(m, NULL);
  return rc;
}

/* drain and undrain: no arguments, one call. */
static int cmd_drain_or_undrain(ctl *c, int argc, char **argv, int drain) {
  const char *name = drain ? "drain" : "undrain";
  static const struct option longopts[] = {{"addr", required_argument, NULL, 'A'}, {"help", no_argument, NULL, 'h'}, {0}};
  int opt, bad = 0;
  while ((opt = next_opt(name, argc, argv, ":h", longopts, &bad)) != -1 && !bad) {
    switch (opt) {
      case 'A': snprintf(c->addr, sizeof c->addr, "%s", optarg); break;
      case 'h': fputs(drain ? usage_drain : usage_undrain, stdout); return EXIT_OK;
    }
  }
  if (bad) return EXIT_USAGE;
  if (optind != argc) return usage_error(name, "unexpected argument '%s'", argv[optind]);
  ProtobufCMessage *m;
  int rc;
  if (drain) {
    Dpod__V1__DrainRequest req = DPOD__V1__DRAIN_REQUEST__INIT;
    if ((rc = ctl_unary(c, name, M_COORD("Drain"), &req.base, &dpod__v1__drain_response__descriptor, &m))) return rc;
    printf("draining: %u running jobs asked to checkpoint and stop; new jobs are refused until `dpoctl undrain`\n",
           ((Dpod__V1__DrainResponse *)m)->preempting);
  } else {
    Dpod__V1__UndrainRequest req = DPOD__V1__UNDRAIN_REQUEST__INIT;
    if ((rc = ctl_unary(c, name, M_COORD("Undrain"), &req.base, &dpod__v1__undrain_response__descriptor, &m))) return rc;
    printf("undrained: dpod takes jobs again\n");
  }
  protobuf_c_message_free_unpacked(m, NULL);
  return EXIT_OK;
}

static int cmd_drain(ctl *c, int argc, char **argv) { return cmd_drain_or_undrain(c, argc, argv, 1); }
static int cmd_undrain(ctl *c, int argc, char **argv) { return cmd_drain_or_undrain(c, argc, argv, 0); }

static int cmd_status(ctl *c, int argc, char **argv) {
  static const struct option longopts[] = {{"json", no_argument, NULL, 'j'},
                                           {"output", required_argument, NULL, 'o'},
                                           {"addr", required_argument, NULL, 'A'},
                                           {"help", no_argument, NULL, 'h'},
                                           {0}};
  int opt, bad = 0;
  out_format out = OUT_TABLE;
  while ((opt = next_opt("status", argc, argv, ":ho:", longopts, &bad)) != -1 && !bad) {
    switch (opt) {
      case 'j': out = OUT_JSON; break;
      case 'o':
        if (parse_output("status", optarg, &out)) return EXIT_USAGE;
        break;
      case 'A': snprintf(c->addr, sizeof c->addr, "%s", optarg); break;
      case 'h': fputs(usage_status, stdout); return EXIT_OK;
    }
  }
  if (bad) return EXIT_USAGE;
  if (optind != argc) return usage_error("status", "unexpected argument '%s'", argv[optind]);
  Dpod__V1__GetStatusRequest req = DPOD__V1__GET_STATUS_REQUEST__INIT;
  ProtobufCMessage *m;
  int rc = ctl_unary(c, "status", M_COORD("GetStatus"), &req.base, &dpod__v1__get_status_response__descriptor, &m);
  if (rc) return rc;
  const Dpod__V1__GetStatusResponse *st = (const Dpod__V1__GetStatusResponse *)m;
  if (out != OUT_TABLE) {
    rc = print_tree(pb_json_message(m), out);
  } else {
    char up[32];
    fmt_duration((double)st->uptime_ms / 1000, up, sizeof up);
    printf("dpod %s, up %s, %s launcher%s\n", st->version ? st->version : "?", up, st->launcher ? st->launcher : "?",
           st->draining ? ", DRAINING (new jobs refused until `dpoctl undrain`)" : "");
    printf("slots    %u of %u in use\n", st->slots - st->slots_free, st->slots);
    printf("jobs     %u running, %u queued\n", st->running, st->queued);
    printf("watchers %u\n", st->watchers);
    if (st->loop)
      printf("loop     longest stall %.1f ms, %" PRIu64 " stalls over 50 ms, busy %.1f%% of the time\n",
             (double)st->loop->longest_stall_us / 1000, st->loop->stalls_over_50ms,
             st->uptime_ms ? 100.0 * (double)st->loop->busy_us / ((double)st->uptime_ms * 1000) : 0.0);
  }
  protobuf_c_message_free_unpacked(m, NULL);
  return rc;
}

/* ----------------------------------------------------------------------------------------------- */
/* metrics */

/* Prints one step in the chosen format. */
static void metrics_print(int csv, const Dpod__V1__JobEvent *ev) {
  char line[2048];
  if (csv) {
    puts(fmt_csv_row(&ev->metrics->base, ev->time_unix_ms, line, sizeof line));
    return;
  }
  cJSON *j = pb_json_message(&ev->metrics->base);
  char t[24];
  snprintf(t, sizeof t, "%" PRId64, ev->time_unix_ms); /* an int64, as the mapping writes one */
  if (j && cJSON_AddStringToObject(j, "time_unix_ms", t)) {
    char *text = cJSON_PrintUnformatted(j);
    if (text) puts(text);
    cJSON_free(text);
  }
  cJSON_Delete(j);
}

/* The job's metrics events up to the last event it had when asked (its history, replayed by WatchJob). */
static int cmd_metrics(ctl *c, int argc, char **argv) {
  static const struct option longopts[] = {{"format", required_argument, NULL, 'f'},
                                           {"addr", required_argument, NULL, 'A'},
                                           {"help", no_argument, NULL, 'h'},
                                           {0}};
  int opt, bad = 0, csv = 1;
  while ((opt = next_opt("metrics", argc, argv, ":h", longopts, &bad)) != -1 && !bad) {
    switch (opt) {
      case 'f':
        if (strcmp(optarg, "csv") == 0) csv = 1;
        else if (strcmp(optarg, "jsonl") == 0) csv = 0;
        else return usage_error("metrics", "--format wants csv or jsonl, not '%s'", optarg);
        break;
      case 'A': snprintf(c->addr, sizeof c->addr, "%s", optarg); break;
      case 'h': fputs(usage_metrics, stdout); return EXIT_OK;
    }
  }
  if (bad) return EXIT_USAGE;
  if (optind != argc - 1) return usage_error("metrics", "%s", "expected one job id");
  uint64_t id;
  int rc = resolve_job(c, "metrics", argv[optind], &id);
  if (rc) return rc;

  Dpod__V1__GetJobResponse *resp = NULL;
  rc = get_job(c, id, &resp);
  if (rc) return rc;
  uint64_t last_seq = resp->job->has_last_seq ? resp->job->last_seq : UINT64_MAX;
  protobuf_c_message_free_unpacked(&resp->base, NULL);
  if (csv) {
    char header[1024];
    puts(fmt_csv_header(&dpod__v1__step_metrics__descriptor, header, sizeof header));
  }
  Dpod__V1__WatchJobRequest req = DPOD__V1__WATCH_JOB_REQUEST__INIT;
  req.has_job_id = req.has_after_seq = 1;
  req.job_id = id;
  rpc_stream *s = NULL;
  char err[1024];
  if (last_seq == 0) return EXIT_OK; /* no event yet */
  if ((rc = rpc_stream_open(c->client, M_WATCH, &req.base, &s, err, sizeof err)) != 0) return rpc_failed(c, "metrics", err);
  ProtobufCMessage *m;
  uint64_t seq = 0;
  while (seq < last_seq && (rc = rpc_stream_next(s, &dpod__v1__job_event__descriptor, &m, 0, err, sizeof err)) == 1) {
    const Dpod__V1__JobEvent *ev = (const Dpod__V1__JobEvent *)m;
    seq = ev->seq;
    if (ev->event_case == DPOD__V1__JOB_EVENT__EVENT_METRICS && seq <= last_seq) metrics_print(csv, ev);
    protobuf_c_message_free_unpacked(m, NULL);
  }
  rpc_stream_close(s);
  fflush(stdout);
  if (rc < 0 && seq < last_seq) return rpc_failed(c, "metrics", err);
  return EXIT_OK;
}

/* ----------------------------------------------------------------------------------------------- */
/* logs */

typedef struct {
  int32_t rank;      /* -1: every line */
  uint32_t attempt;  /* 0: every attempt */
  uint32_t tail;
  uint64_t after;    /* resume token */
  int follow, jsonl, retries;
} logs_opts;

static void logs_print(const logs_opts *o, const Dpod__V1__LogLine *l) {
  if (o->jsonl) {
    char *text = pb_json_print(&l->base, 0); /* protobuf's JSON mapping: the offset a string */
    if (text) puts(text);
    cJSON_free(text);
    return;
  }
  const char *stream = l->stream ? l->stream : "";
  if (l->rank < 0) printf("[attempt %" PRIu32 " dpod] %s\n", l->attempt, l->text ? l->text : "");
  else
    printf("[attempt %" PRIu32 " rank %" PRId32 "%s] %s\n", l->attempt, l->rank,
           strcmp(stream, "stderr") == 0 ? " stderr" : "", l->text ? l->text : "");
}

/* Streams the lines; a stream that breaks (dpod restarting) is opened again after the last line shown,
 * so that every line is shown once. */
static int logs_job(ctl *c, uint64_t id, logs_opts *o) {
  int got_any = 0, failures = 0;
  char err[1024];
  for (;;) {
    int rc = ctl_connect(c);
    if (rc) return rc;
    Dpod__V1__LogsRequest req = DPOD__V1__LOGS_REQUEST__INIT;
    req.has_job_id = req.has_rank = req.has_attempt = req.has_after_offset = req.has_follow = req.has_tail = 1;
    req.job_id = id;
    req.rank = o->rank;
    req.attempt = o->attempt;
    req.after_offset = o->after;
    req.follow = o->follow;
    req.tail = got_any ? 0 : o->tail; /* after a reconnect, everything past the last line shown */
    rpc_stream *s = NULL;
    rc = rpc_stream_open(c->client, M_COORD("Logs"), &req.base, &s, err, sizeof err);
    if (rc == 0) {
      ProtobufCMessage *m;
      while ((rc = rpc_stream_next(s, &dpod__v1__log_line__descriptor, &m, 0, err, sizeof err)) == 1) {
        const Dpod__V1__LogLine *l = (const Dpod__V1__LogLine *)m;
        got_any = 1;
        failures = 0;
        logs_print(o, l);
        o->after = l->offset;
        protobuf_c_message_free_unpacked(m, NULL);
      }
      rpc_stream_close(s);
    }
    fflush(stdout);
    if (rc == 0) return EXIT_OK;
    int st = rpc_last_grpc_status();
    if (!is_conn_status(st) && st != GRPC_STATUS_CANCELLED && st != GRPC_STATUS_UNKNOWN) {
      char what[64];
      snprintf(what, sizeof what, "job %" PRIu64, id);
      return rpc_failed(c, what, err); /* NOT_FOUND, a bad rank: retrying will not help */
    }
    if (!got_any && !o->follow) return rpc_failed(c, "logs", err);
    if (++failures > o->retries) {
      fprintf(stderr, "dpoctl: lost dpod at %s and gave up after %d attempts: %s\n", c->addr, o->retries,
              strip_method(err));
      return EXIT_CONN;
    }
    fprintf(stderr, "dpoctl: stream to dpod broke (%s); reconnecting (%d/%d)\n", strip_method(err), failures,
            o->retries);
    ctl_reconnect_pause(c, failures);
  }
}

static int cmd_logs(ctl *c, int argc, char **argv) {
  static const struct option longopts[] = {{"follow", no_argument, NULL, 'f'},
                                           {"rank", required_argument, NULL, 'r'},
                                           {"attempt", required_argument, NULL, 'n'},
                                           {"tail", required_argument, NULL, 't'},
                                           {"after-offset", required_argument, NULL, 'o'},
                                           {"jsonl", no_argument, NULL, 'j'},
                                           {"retries", required_argument, NULL, 'R'},
                                           {"addr", required_argument, NULL, 'A'},
                                           {"help", no_argument, NULL, 'h'},
                                           {0}};
  logs_opts o = {.rank = -1, .retries = WATCH_RETRIES};
  uint64_t v;
  int opt, bad = 0;
  while ((opt = next_opt("logs", argc, argv, ":hf", longopts, &bad)) != -1 && !bad) {
    switch (opt) {
      case 'f': o.follow = 1; break;
      case 'r':
        if (strcmp(optarg, "-1") == 0) o.rank = -1;
        else if (dpod_parse_u64(optarg, INT32_MAX, &v) == 0) o.rank = (int32_t)v;
        else return usage_error("logs", "bad --rank '%s'", optarg);
        break;
      case 'n':
        if (dpod_parse_u64(optarg, UINT32_MAX, &v) != 0) return usage_error("logs", "bad --attempt '%s'", optarg);
        o.attempt = (uint32_t)v;
        break;
      case 't':
        if (dpod_parse_u64(optarg, UINT32_MAX, &v) != 0) return usage_error("logs", "bad --tail '%s'", optarg);
        o.tail = (uint32_t)v;
        break;
      case 'o':
        if (dpod_parse_u64(optarg, UINT64_MAX, &o.after) != 0)
          return usage_error("logs", "bad --after-offset '%s'", optarg);
        break;
      case 'j': o.jsonl = 1; break;
      case 'R':
        if (dpod_parse_u64(optarg, 1000000, &v) != 0) return usage_error("logs", "bad --retries '%s'", optarg);
        o.retries = (int)v;
        break;
      case 'A': snprintf(c->addr, sizeof c->addr, "%s", optarg); break;
      case 'h': fputs(usage_logs, stdout); return EXIT_OK;
    }
  }
  if (bad) return EXIT_USAGE;
  if (optind != argc - 1) return usage_error("logs", "%s", "expected one job id");
  uint64_t id;
  if (parse_id("logs", argv[optind], &id)) return EXIT_USAGE;
  return logs_job(c, id, &o);
}

/* ----------------------------------------------------------------------------------------------- */

typedef struct {
  const char *name;
  int (*fn)(ctl *, int, char **);
  const char *usage;
} command;

static const command commands[] = {
    {"submit", cmd_submit, usage_submit}, {"list", cmd_list, usage_list},       {"get", cmd_get, usage_get},
    {"watch", cmd_watch, usage_watch},    {"cancel", cmd_cancel, usage_cancel}, {"restart", cmd_restart, usage_restart},
    {"health", cmd_health, usage_health}, {"drain", cmd_drain, usage_drain},     {"undrain", cmd_undrain, usage_undrain},
    {"status", cmd_status, usage_status}, {"metrics", cmd_metrics, usage_metrics},
    {"logs", cmd_logs, usage_logs},
    {"checkpoints", cmd_checkpoints, usage_checkpoints}, {"delete", cmd_delete, usage_delete},
};

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "--version") == 0) {
    printf("dpoctl %s\n", DPOD_VERSION_STRING);
    return EXIT_OK;
  }
  ctl c = {0};
  dpod_default_addr(c.addr, sizeof c.addr);
  int i = 1;
  for (; i < argc && argv[i][0] == '-'; i++) {
    const char *a = argv[i];
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      fputs(usage_main, stdout);
      return EXIT_OK;
    } else if (strcmp(a, "--addr") == 0) {
      if (++i == argc) return usage_error(NULL, "%s", "--addr needs a value");
      snprintf(c.addr, sizeof c.addr, "%s", argv[i]);
    } else if (strncmp(a, "--addr=", 7) == 0) {
      snprintf(c.addr, sizeof c.addr, "%s", a + 7);
    } else if (strcmp(a, "--token-file") == 0) {
      if (++i == argc) return usage_error(NULL, "%s", "--token-file needs a value");
      c.token_file = argv[i];
    } else if (strcmp(a, "--tls-ca") == 0) {
      if (++i == argc) return usage_error(NULL, "%s", "--tls-ca needs a value");
      c.tls_ca = argv[i];
    } else {
      return usage_error(NULL, "unknown option '%s'", a);
    }
  }
  if (i == argc) {
    fputs(usage_main, stderr);
    return EXIT_USAGE;
  }
  const char *name = argv[i];
  if (strcmp(name, "help") == 0) {
    if (i + 1 == argc) {
      fputs(usage_main, stdout);
      return EXIT_OK;
    }
    name = argv[i + 1];
    for (size_t k = 0; k < sizeof commands / sizeof commands[0]; k++)
      if (strcmp(commands[k].name, name) == 0) return fputs(commands[k].usage, stdout), EXIT_OK;
    return usage_error(NULL, "unknown command '%s'", name);
  }
  for (size_t k = 0; k < sizeof commands / sizeof commands[0]; k++) {
    if (strcmp(commands[k].name, name) != 0) continue;
    optind = 0;  /* GNU: reinitialize getopt for the command's own arguments */
    opterr = 0;
    int rc = commands[k].fn(&c, argc - i, argv + i);
    ctl_disconnect(&c);
    return rc;
  }
  return usage_error(NULL, "unknown command '%s'", name);
}
