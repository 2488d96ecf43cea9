/* dpod: the coordinator daemon. This file is process set-up: options, the state directory and its lock,
 * the socket, the loop, signals and the order of shutdown.
 *
 * One libuv loop owns all state. The gRPC server (rpc_server.c) drains its completion queue on a
 * thread of its own and hands every completion to the loop through uv_async_send; the handlers (api.c)
 * run on the loop and call the coordinator (coordinator.c), which reads and writes the SQLite job store
 * (job_store.c) synchronously, queues jobs FIFO over the launch backend's capacity (job_queue.c) and runs
 * each attempt through the launch backend (launch/, mpirun today), whose exits the loop observes.
 * WatchJob streams (watch.c) hear of every stored event, and so does the TensorBoard writer (tb_writer.c),
 * which writes the job's event files on a thread of its own. Signals only start the shutdown sequence; a
 * 1 s cron runs the slower chores.
 *
 * Shutdown (SIGTERM, SIGINT) leaves the jobs alone: each attempt runs under its own supervisor, which
 * outlives dpod. dpod forgets them, stops accepting calls, cancels those still open after a short grace,
 * lets the completion-queue thread drain and exit, closes the store and removes the socket. To stop the
 * jobs too, drain first (`dpoctl drain`).
 *
 * Start-up, after a stop or a crash: a job that was starting or running is adopted from its launch
 * handle if its attempt still runs, recorded from its exit record and report journal if it ended, and
 * failed (then retried as it allows) if neither; queued jobs are queued again. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include "coordinator.h"
#include "dpod_error.h"
#include "dpod_file.h"
#include "dpod_parse.h"
#include "dpod_log.h"
#include "dpod_paths.h"
#include "api.h"
#include "auth.h"
#include "launch.h"
#include "rpc_addr.h"
#include "rpc_server.h"
#include "tb_writer.h"
#include "watch.h"

#define CRON_PERIOD_MS 1000
#define SHUTDOWN_CALL_GRACE_MS 1000 /* open calls may end by themselves this long after the shutdown starts */
#define SHUTDOWN_DEADLINE_MS 60000  /* last resort if a call or a process never lets go */

static struct {
  uv_loop_t *loop;
  rpc_server *srv;
  rpc_server *report_srv; /* --report-listen: WorkerReport and health only; NULL without it */
  int rpc_servers_running;
  launch_backend *backend;
  coord *co;
  watch_set *watches;
  tb_writer *tb; /* NULL if it could not start: dpod serves without TensorBoard files */
  api_ctx api;
  uv_signal_t sigint, sigterm;
  uv_timer_t cron, grace, deadline;
  loop_stats loop_stats;
  uint64_t cronloops;
  bool shutting_down, jobs_done, rpc_done;
  char socket_path[PATH_MAX]; /* "" when not listening on a unix socket */
} dpod;

static void usage(FILE *f) {
  fprintf(f,
          "usage: dpod [--config FILE] [options]\n"
          "  --config FILE      options from a file, one a line (`launcher slurm`), before the command line's\n"
          "  --listen ADDR      address to serve on (default: $DPOD_ADDR or unix:$XDG_RUNTIME_DIR/dpod/dpod.sock)\n"
          "  --state-dir DIR    the database, on a local file system (default: $XDG_STATE_HOME/dpod)\n"
          "  --jobs-dir DIR     run directories, where the compute nodes see them (default: STATE_DIR/jobs)\n"
          "  --allow-network-state  use a state directory on a network file system anyway\n"
          "  --launcher L       mpirun (ranks on this host, the default) or slurm (each job a batch job)\n"
          "  --slots N          worker slots, i.e. MPI ranks that may run at once (default 2; with slurm,\n"
          "                     only if sinfo cannot say how many CPUs the cluster has)\n"
          "  --poll-interval S  slurm: how often one squeue asks after every job (default 15)\n"
          "  --preempt-grace S  slurm: the warning (SIGUSR1) before a time limit, to checkpoint in (default 120)\n"
          "  --worker PATH      dpo-worker binary (default: the one next to dpod)\n"
          "  --mpirun PATH      mpirun binary (default: mpirun from PATH)\n"
          "  --hostfile FILE    mpirun: an Open MPI hostfile, to run the ranks on those hosts\n"
          "  --start-timeout S  a job's rank 0 must report in within S seconds of its launch (default 600)\n"
          "  --heartbeat-floor S  the least a job's heartbeat timeout can be, in seconds (default 300)\n"
          "  --restart-backoff S  wait before the first automatic restart; doubles with each (default 10)\n"
          "  --drain-grace S    after a drain, SIGKILL what has not stopped at a checkpoint (default 30)\n"
          "  --tls-cert FILE    serve TCP with TLS: the certificate chain (PEM)\n"
          "  --tls-key FILE     ... and its private key (PEM, readable by this user only)\n"
          "  --tls-ca FILE      the CA the workers check the certificate against (default: --tls-cert)\n"
          "  --token-file FILE  bearer token TCP clients must send (default STATE_DIR/token; made on first use)\n"
          "  --insecure         serve a loopback TCP address without TLS (the token is still required)\n"
          "  --report-listen HOST:PORT  a second listener, for worker reports only, that ranks on other\n"
          "                     nodes reach (port 0: any free port; TLS with --tls-cert)\n"
          "  --log-level L      error, warn, info or debug (default info)\n"
          "  --help             this text\n"
          "  --version          print dpod's version\n");
}

/* A duration in seconds (fractions allowed, up to a day) as ms. Returns 0, or -1 after saying why. */
static int parse_seconds(const char *opt, const char *text, unsigned *ms) {
  char *end;
  double v = strtod(text, &end);
  if (end == text || *end || !(v > 0) || v > 86400) {
    fprintf(stderr, "dpod: %s: expected seconds, more than 0 and at most 86400, got \"%s\"\n", opt, text);
    return -1;
  }
  *ms = (unsigned)(v * 1000.0 + 0.5);
  if (*ms == 0) *ms = 1;
  return 0;
}

/* Formats into a buffer that a long message is cut to fit (error messages, derived addresses). */
#define fmt_into(buf, len, ...) (void)dpod_errf((buf), (len), 0, __VA_ARGS__)

/* Copies a string that must fit: returns -1 (and copies nothing) when it does not. */
static int str_copy(char *dst, size_t len, const char *src) {
  size_t n = strlen(src);
  if (n >= len) return -1;
  memcpy(dst, src, n + 1);
  return 0;
}

static int arg_too_long(const char *opt) {
  fprintf(stderr, "dpod: %s: argument too long\n", opt);
  return 2;
}

/* Creates the socket's directory (0700 and ours: the socket is the only access control; an existing one
 * owned by someone else or writable by others is refused, since whoever can write it can swap the
 * socket) and removes a socket file left by a daemon that died, refusing to start if a live daemon
 * still answers on it. */
static int prepare_socket(const char *path, char *err, size_t errlen) {
  char dir[PATH_MAX];
  struct sockaddr_un sa;
  if (str_copy(dir, sizeof dir, path) != 0) {
    fmt_into(err, errlen, "socket path too long: %.64s...", path);
    return DPOD_EINVAL;
  }
  char *slash = strrchr(dir, '/');
  if (slash && slash != dir) {
    *slash = '\0';
    int status = dpod_mkdirs(dir, 0700, DPOD_MKDIRS_PRIVATE, err, errlen);
    if (status != 0) return status;
  }
  struct stat st;
  if (lstat(path, &st) != 0) return 0;
  if (!S_ISSOCK(st.st_mode)) {
    fmt_into(err, errlen, "%s exists and is not a socket", path);
    return DPOD_EIO;
  }
  if (st.st_uid != geteuid()) {
    fmt_into(err, errlen, "%s: the socket is owned by uid %u, not by this user", path, (unsigned)st.st_uid);
    return DPOD_EACCESS;
  }
  /* A path longer than sun_path is reached through its directory's descriptor, as the server binds it. */
  char addr[PATH_MAX + 16], target[PATH_MAX + 64];
  int dir_fd = -1;
  fmt_into(addr, sizeof addr, "unix:%s", path);
  int status = rpc_addr_for_socket(addr, target, sizeof target, &dir_fd, err, errlen);
  if (status != 0) return status;
  const char *short_path = rpc_unix_path(target);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  memcpy(sa.sun_path, short_path, strlen(short_path) + 1);
  int live = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
  if (fd >= 0) close(fd);
  if (dir_fd >= 0) close(dir_fd);
  if (live) {
    fmt_into(err, errlen, "another dpod is listening on %s", path);
    return DPOD_ESTATE;
  }
  if (unlink(path) != 0) {
    fmt_into(err, errlen, "removing the stale socket %s: %s", path, strerror(errno));
    return DPOD_EIO;
  }
  log_info("removed stale socket %s", path);
  return 0;
}

/* Workers dial the daemon back; a wildcard listen address is not something one can dial. */
static void make_report_addr(const char *listen, char *buf, size_t len) {
  const char *port = NULL;
  if (strncmp(listen, "0.0.0.0:", 8) == 0) port = listen + 8;
  else if (strncmp(listen, "[::]:", 5) == 0) port = listen + 5;
  else if (listen[0] == ':') port = listen + 1;
  if (port) fmt_into(buf, len, "localhost:%s", port);
  else fmt_into(buf, len, "%s", listen);
}

/* What serving TCP takes: TLS (or --insecure on a loopback address) and the token. */
typedef struct {
  const char *cert, *key, *ca, *token_file; /* options; NULL when not given */
  bool insecure;
  char *cert_pem, *key_pem;                 /* read from cert and key */
  char token[AUTH_TOKEN_MAX + 1];
} tcp_security;

/* Reads the certificate and key files, when given. Returns 0, or -1 after logging why not. */
static int tls_load(tcp_security *t) {
  char err[1024];
  if (!t->cert != !t->key) {
    log_error("--tls-cert and --tls-key go together");
    return -1;
  }
  if (t->cert && (dpod_read_file(t->cert, 1 << 20, &t->cert_pem, NULL, err, sizeof err) != 0 ||
                  dpod_read_file(t->key, 1 << 20, &t->key_pem, NULL, err, sizeof err) != 0)) {
    log_error("TLS: %s", err);
    return -1;
  }
  return 0;
}

/* The address the ranks dial for a report listener on `listen` bound to `port`: a wildcard host
 * becomes this host's name (which the compute nodes resolve), a given host stays. */
static int routable_report_addr(const char *listen, int port, char *buf, size_t len) {
  const char *colon = strrchr(listen, ':');
  size_t host_len = colon ? (size_t)(colon - listen) : 0;
  char host[256];
  if (host_len >= sizeof host) return -1;
  memcpy(host, listen, host_len);
  host[host_len] = '\0';
  if (!*host || strcmp(host, "0.0.0.0") == 0 || strcmp(host, "[::]") == 0) {
    if (gethostname(host, sizeof host) != 0) return -1;
    host[sizeof host - 1] = '\0';
  }
  fmt_into(buf, len, "%s:%d", host, port);
  return 0;
}

/* Checks and loads what serving `addr` over TCP needs; fills `sec` for the server. Returns 0, or -1 after
 * logging why dpod must not serve. */
static int tcp_security_load(tcp_security *t, const char *addr, const char *state_dir, rpc_server_security *sec) {
  char err[1024], path[PATH_MAX + 16];
  if (!t->cert && !t->insecure) {
    log_error("refusing to serve %s without TLS: give --tls-cert and --tls-key (or, for a loopback address "
              "only, --insecure)", addr);
    return -1;
  }
  if (!t->cert && !auth_addr_is_loopback(addr)) {
    log_error("--insecure serves loopback addresses only (127.0.0.1, [::1], localhost), not %s", addr);
    return -1;
  }
  if (t->token_file) fmt_into(path, sizeof path, "%s", t->token_file);
  else fmt_into(path, sizeof path, "%s/token", state_dir);
  int created = 0;
  if (auth_token_load(path, t->token, &created, err, sizeof err) != 0) {
    log_error("token: %s", err);
    return -1;
  }
  if (created) log_info("made a new token in %s (dpoctl reads it there, or from $DPOD_TOKEN)", path);
  if (!t->cert) log_warn("serving %s WITHOUT TLS (--insecure): the token and every job travel in clear text", addr);
  if (geteuid() == 0)
    log_warn("serving TCP as root: whoever holds the token can make dpod read any file root can read");
  sec->tls_cert_pem = t->cert_pem;
  sec->tls_key_pem = t->key_pem;
  sec->token = t->token;
  return 0;
}

/* `--config FILE` (first on the command line): the file's options go before the command line's, which
 * win. The file holds one option a line, `name value` or `name = value` or just `name` (without the
 * leading dashes), with # comments; it is read whole, and *argv is replaced by a new array (its strings
 * live as long as the process). Returns 0, or -1 after saying why. */
static int config_prepend(int *argc, char ***argv) {
  if (*argc < 3 || strcmp((*argv)[1], "--config") != 0) return 0;
  const char *path = (*argv)[2];
  char *text = NULL, err[512];
  if (dpod_read_file(path, 1 << 16, &text, NULL, err, sizeof err) != 0) {
    fprintf(stderr, "dpod: --config: %s\n", err);
    return -1;
  }
  size_t cap = (size_t)*argc + 2;
  for (const char *p = text; *p; p++) cap += *p == '\n' ? 2 : 0;
  char **out = calloc(cap + 2, sizeof *out);
  if (!out) return -1;
  int n = 0, line_no = 0;
  out[n++] = (*argv)[0];
  char *save = NULL;
  for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    line_no++;
    char *hash = strchr(line, '#');
    if (hash) *hash = '\0';
    char *name = line + strspn(line, " \t");
    if (!*name) continue;
    char *end = name + strcspn(name, " \t=");
    char *value = end + strspn(end, " \t=");
    *end = '\0';
    for (char *e = value + strlen(value); e > value && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r');) *--e = '\0';
    char *opt = malloc(strlen(name) + 3);
    if (!opt) return -1;
    sprintf(opt, "--%s", name);
    if (strcmp(name, "config") == 0) {
      fprintf(stderr, "dpod: %s:%d: a config file cannot name another\n", path, line_no);
      return -1;
    }
    out[n++] = opt;
    if (*value) out[n++] = value;
  }
  for (int i = 3; i < *argc; i++) out[n++] = (*argv)[i];
  out[n] = NULL;
  *argc = n;
  *argv = out;
  return 0;
}

/* Every stored event goes to the WatchJob streams and to the TensorBoard files. */
static void on_job_event(void *arg, uint64_t job_id) {
  watch_notify(arg, job_id);
  if (dpod.tb) tb_writer_notify(dpod.tb, job_id);
}

static void close_handle(uv_handle_t *h) {
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* Both halves of the shutdown are over: nothing runs any more, release everything. */
static void shutdown_finish(void) {
  if (!dpod.jobs_done || !dpod.rpc_done) return;
  rpc_server_free(dpod.srv);
  dpod.srv = NULL;
  rpc_server_free(dpod.report_srv);
  dpod.report_srv = NULL;
  watch_set_free(dpod.watches);
  dpod.watches = NULL;
  tb_writer_stop(dpod.tb);
  dpod.tb = NULL;
  coord_free(dpod.co);
  dpod.co = NULL;
  launch_backend_free(dpod.backend);
  dpod.backend = NULL;
  close_handle((uv_handle_t *)&dpod.sigint);
  close_handle((uv_handle_t *)&dpod.sigterm);
  close_handle((uv_handle_t *)&dpod.cron);
  close_handle((uv_handle_t *)&dpod.grace);
  close_handle((uv_handle_t *)&dpod.deadline);
  loop_stats_stop(&dpod.loop_stats);
}

static void on_rpc_done(void *arg) {
  (void)arg;
  log_debug("an rpc server stopped");
  if (--dpod.rpc_servers_running > 0) return;
  dpod.rpc_done = true;
  shutdown_finish();
}

static void on_call_grace(uv_timer_t *t) {
  (void)t;
  if (!dpod.rpc_done) {
    log_info("cancelling the calls still open");
    rpc_server_cancel_all(dpod.srv);
    if (dpod.report_srv) rpc_server_cancel_all(dpod.report_srv);
  }
}

static void on_deadline(uv_timer_t *t) {
  (void)t;
  log_error("shutdown did not finish within %d s; exiting anyway", SHUTDOWN_DEADLINE_MS / 1000);
  if (dpod.socket_path[0]) unlink(dpod.socket_path);
  _exit(1);
}

static void start_shutdown(int signum) {
  if (dpod.shutting_down) {
    log_info("signal %d: already shutting down", signum);
    return;
  }
  dpod.shutting_down = true;
  log_info("signal %d: shutting down; running jobs keep running and the next dpod adopts them", signum);
  uv_timer_start(&dpod.deadline, on_deadline, SHUTDOWN_DEADLINE_MS, 0);
  /* Jobs are left alone: their supervisors outlive us. (Preempting everything is `dpoctl drain`.) */
  coord_detach(dpod.co);
  dpod.jobs_done = true;
  /* Calls in flight end by themselves (a watch of a finished job sends its last events and ends); those
   * that would not (a watch of a running job) are cut off after a short grace. A rank whose report is
   * cut off retries it with the next dpod. */
  dpod.rpc_servers_running = dpod.report_srv ? 2 : 1;
  rpc_server_shutdown(dpod.srv, on_rpc_done, NULL);
  if (dpod.report_srv) rpc_server_shutdown(dpod.report_srv, on_rpc_done, NULL);
  if (!dpod.rpc_done) uv_timer_start(&dpod.grace, on_call_grace, SHUTDOWN_CALL_GRACE_MS, 0);
  shutdown_finish();
}

/* uv_signal callbacks run on the loop, not in signal context: starting the shutdown here is safe. */
static void on_signal(uv_signal_t *h, int signum) {
  (void)h;
  start_shutdown(signum);
}

static void on_cron(uv_timer_t *t) {
  (void)t;
  dpod.cronloops++;
  if (dpod.co && !dpod.shutting_down) coord_cron(dpod.co, dpod.cronloops, CRON_PERIOD_MS);
}

int main(int argc, char **argv) {
  char addr[PATH_MAX + 16], state_dir[PATH_MAX], worker[PATH_MAX], supervisor[PATH_MAX], report_addr[PATH_MAX + 16];
  char err[1024];
  if (config_prepend(&argc, &argv) != 0) return 2;
  const char *mpirun = "mpirun";
  unsigned long slots = 2;
  int level = DPOD_LOG_INFO;
  int rc = 1;

  dpod_default_addr(addr, sizeof addr);
  dpod_default_state_dir(state_dir, sizeof state_dir);
  launch_default_worker(worker, sizeof worker);
  launch_default_supervisor(supervisor, sizeof supervisor);

  coord_params cp = coord_default_params();
  enum {
    OPT_LISTEN = 1, OPT_STATE, OPT_SLOTS, OPT_WORKER, OPT_MPIRUN, OPT_LEVEL, OPT_HELP, OPT_START_TIMEOUT,
    OPT_HEARTBEAT_FLOOR, OPT_RESTART_BACKOFF, OPT_DRAIN_GRACE, OPT_TLS_CERT, OPT_TLS_KEY, OPT_TLS_CA, OPT_TOKEN_FILE,
    OPT_INSECURE, OPT_LAUNCHER, OPT_POLL, OPT_GRACE, OPT_REPORT_LISTEN, OPT_JOBS_DIR, OPT_NETWORK_STATE, OPT_VERSION,
    OPT_CONFIG, OPT_HOSTFILE
  };
  char jobs_dir[PATH_MAX] = "";
  bool network_state = false;
  const char *report_listen = NULL, *hostfile = NULL;
  const char *launcher = "mpirun";
  unsigned poll_ms = 15000, grace_ms = 120000;
  tcp_security tcp = {0};
  rpc_server_security sec = {0};
  static const struct option opts[] = {
      {"listen", required_argument, NULL, OPT_LISTEN},
      {"state-dir", required_argument, NULL, OPT_STATE},
      {"slots", required_argument, NULL, OPT_SLOTS},
      {"worker", required_argument, NULL, OPT_WORKER},
      {"mpirun", required_argument, NULL, OPT_MPIRUN},
      {"log-level", required_argument, NULL, OPT_LEVEL},
      {"start-timeout", required_argument, NULL, OPT_START_TIMEOUT},
      {"heartbeat-floor", required_argument, NULL, OPT_HEARTBEAT_FLOOR},
      {"restart-backoff", required_argument, NULL, OPT_RESTART_BACKOFF},
      {"drain-grace", required_argument, NULL, OPT_DRAIN_GRACE},
      {"tls-cert", required_argument, NULL, OPT_TLS_CERT},
      {"tls-key", required_argument, NULL, OPT_TLS_KEY},
      {"tls-ca", required_argument, NULL, OPT_TLS_CA},
      {"token-file", required_argument, NULL, OPT_TOKEN_FILE},
      {"insecure", no_argument, NULL, OPT_INSECURE},
      {"launcher", required_argument, NULL, OPT_LAUNCHER},
      {"report-listen", required_argument, NULL, OPT_REPORT_LISTEN},
      {"jobs-dir", required_argument, NULL, OPT_JOBS_DIR},
      {"config", required_argument, NULL, OPT_CONFIG},
      {"hostfile", required_argument, NULL, OPT_HOSTFILE},
      {"allow-network-state", no_argument, NULL, OPT_NETWORK_STATE},
      {"poll-interval", required_argument, NULL, OPT_POLL},
      {"preempt-grace", required_argument, NULL, OPT_GRACE},
      {"help", no_argument, NULL, OPT_HELP},
      {"version", no_argument, NULL, OPT_VERSION},
      {NULL, 0, NULL, 0},
  };
  int c;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
      case OPT_LISTEN:
        if (str_copy(addr, sizeof addr, optarg) != 0) return arg_too_long("--listen");
        break;
      case OPT_STATE:
        if (str_copy(state_dir, sizeof state_dir, optarg) != 0) return arg_too_long("--state-dir");
        break;
      case OPT_SLOTS: {
        uint64_t v;
        if (dpod_parse_u64(optarg, 4096, &v) != 0 || v < 1) {
          fprintf(stderr, "dpod: --slots: expected a number from 1 to 4096, got \"%s\"\n", optarg);
          return 2;
        }
        slots = (unsigned long)v;
        break;
      }
      case OPT_WORKER:
        if (str_copy(worker, sizeof worker, optarg) != 0) return arg_too_long("--worker");
        break;
      case OPT_MPIRUN: mpirun = optarg; break;
      case OPT_HOSTFILE: hostfile = optarg; break;
      case OPT_TLS_CERT: tcp.cert = optarg; break;
      case OPT_TLS_KEY: tcp.key = optarg; break;
      case OPT_TLS_CA: tcp.ca = optarg; break;
      case OPT_TOKEN_FILE: tcp.token_file = optarg; break;
      case OPT_INSECURE: tcp.insecure = true; break;
      case OPT_REPORT_LISTEN: report_listen = optarg; break;
      case OPT_JOBS_DIR:
        if (str_copy(jobs_dir, sizeof jobs_dir, optarg) != 0) return arg_too_long("--jobs-dir");
        break;
      case OPT_NETWORK_STATE: network_state = true; break;
      case OPT_CONFIG:
        fprintf(stderr, "dpod: --config must come first (its options go before the command line's)\n");
        return 2;
      case OPT_LAUNCHER:
        if (strcmp(optarg, "mpirun") != 0 && strcmp(optarg, "slurm") != 0) {
          fprintf(stderr, "dpod: --launcher: expected mpirun or slurm, got \"%s\"\n", optarg);
          return 2;
        }
        launcher = optarg;
        break;
      case OPT_POLL:
        if (parse_seconds("--poll-interval", optarg, &poll_ms) != 0) return 2;
        break;
      case OPT_GRACE:
        if (parse_seconds("--preempt-grace", optarg, &grace_ms) != 0) return 2;
        break;
      case OPT_START_TIMEOUT:
        if (parse_seconds("--start-timeout", optarg, &cp.start_timeout_ms) != 0) return 2;
        break;
      case OPT_HEARTBEAT_FLOOR:
        if (parse_seconds("--heartbeat-floor", optarg, &cp.heartbeat_floor_ms) != 0) return 2;
        break;
      case OPT_RESTART_BACKOFF:
        if (parse_seconds("--restart-backoff", optarg, &cp.restart_backoff_ms) != 0) return 2;
        break;
      case OPT_DRAIN_GRACE:
        if (parse_seconds("--drain-grace", optarg, &cp.drain_kill_ms) != 0) return 2;
        break;
      case OPT_LEVEL:
        if ((level = dpod_log_parse_level(optarg)) < 0) {
          fprintf(stderr, "dpod: --log-level: expected error, warn, info or debug, got \"%s\"\n", optarg);
          return 2;
        }
        break;
      case 'h':
      case OPT_HELP: usage(stdout); return 0;
      case OPT_VERSION: printf("dpod %s\n", DPOD_VERSION_STRING); return 0;
      default: usage(stderr); return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "dpod: unexpected argument \"%s\"\n", argv[optind]);
    usage(stderr);
    return 2;
  }
  dpod_log_init("dpod", (dpod_log_level)level);
  /* A client that disconnects mid-write must not kill the daemon. */
  signal(SIGPIPE, SIG_IGN);

  /* Job directories are handed to workers that run elsewhere in the tree: make the path absolute. */
  /* Private whether dpod made it or found it: it holds every job's secret. */
  if (dpod_mkdirs(state_dir, 0700, DPOD_MKDIRS_PRIVATE, err, sizeof err) != 0) {
    log_error("%s", err);
    return 1;
  }
  char resolved[PATH_MAX];
  if (realpath(state_dir, resolved)) snprintf(state_dir, sizeof state_dir, "%s", resolved);
  /* SQLite's locks and WAL need a local file system; on NFS and the like two hosts could both write. */
  const char *netfs = dpod_path_network_fs(state_dir);
  if (netfs && !network_state) {
    log_error("%s is on a network file system (%s): the state directory must be local (run directories can go "
              "on the shared one with --jobs-dir; --allow-network-state overrides)", state_dir, netfs);
    return 1;
  }
  if (netfs) log_warn("%s is on a network file system (%s); --allow-network-state says go on", state_dir, netfs);
  if (jobs_dir[0]) {
    /* Handed to ranks on other nodes: absolute, and private to this user like the state directory. */
    if (dpod_mkdirs(jobs_dir, 0700, DPOD_MKDIRS_PRIVATE, err, sizeof err) != 0) {
      log_error("%s", err);
      return 1;
    }
    if (realpath(jobs_dir, resolved)) snprintf(jobs_dir, sizeof jobs_dir, "%s", resolved);
  }
  /* Two daemons on one database would launch the same queued jobs twice. The lock lives as long as
   * the process (O_CLOEXEC keeps it out of the jobs). */
  char lock_path[PATH_MAX + 16];
  fmt_into(lock_path, sizeof lock_path, "%s/dpod.lock", state_dir);
  int lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd < 0 || flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
    log_error("%s: %s", lock_path, lock_fd < 0 ? strerror(errno) : "another dpod uses this state directory");
    return 1;
  }
  if (access(worker, X_OK) != 0) log_warn("worker %s is not executable (yet); jobs will fail to start", worker);
  if (access(supervisor, X_OK) != 0)
    log_warn("supervisor %s is not executable (yet); jobs will fail to start", supervisor);

  if (tls_load(&tcp) != 0) return 1;
  if (report_listen && rpc_unix_path(report_listen)) {
    log_error("--report-listen takes a TCP address (HOST:PORT), not %s", report_listen);
    return 1;
  }
  const char *sock = rpc_unix_path(addr);
  if (sock) {
    if (prepare_socket(sock, err, sizeof err) != 0) {
      log_error("%s", err);
      return 1;
    }
    str_copy(dpod.socket_path, sizeof dpod.socket_path, sock); /* fits: checked above */
    if (tcp.cert || tcp.key || tcp.insecure) log_warn("--tls-*, --insecure: not used on a unix socket");
  } else if (tcp_security_load(&tcp, addr, state_dir, &sec) != 0) {
    return 1;
  }
  make_report_addr(addr, report_addr, sizeof report_addr);

  dpod.loop = uv_default_loop();
  /* First, before anything that would need undoing: a failure here leaves only the loop to give back. */
  int uv = 0;
  if ((uv = uv_signal_init(dpod.loop, &dpod.sigint)) != 0 || (uv = uv_signal_init(dpod.loop, &dpod.sigterm)) != 0 ||
      (uv = uv_signal_start(&dpod.sigint, on_signal, SIGINT)) != 0 ||
      (uv = uv_signal_start(&dpod.sigterm, on_signal, SIGTERM)) != 0 || (uv = uv_timer_init(dpod.loop, &dpod.cron)) != 0 ||
      (uv = uv_timer_start(&dpod.cron, on_cron, CRON_PERIOD_MS, CRON_PERIOD_MS)) != 0 ||
      (uv = uv_timer_init(dpod.loop, &dpod.grace)) != 0 || (uv = uv_timer_init(dpod.loop, &dpod.deadline)) != 0 ||
      (uv = loop_stats_start(dpod.loop, &dpod.loop_stats)) != 0) {
    log_error("cannot set up the event loop: %s", uv_strerror(uv));
    return 1;
  }
  uv_unref((uv_handle_t *)&dpod.deadline);
  /* The ranks dial the report listener, or else the public one: over TLS they check it against the CA
   * (a self-signed certificate is its own). */
  const char *tls_ca = (!sock || report_listen) && tcp.cert ? (tcp.ca ? tcp.ca : tcp.cert) : NULL;
  if (report_listen) {
    err[0] = '\0';
    /* Started before the backend, which must know the real port; no call is handled before uv_run. */
    rpc_server_security rsec = {.tls_cert_pem = tcp.cert_pem, .tls_key_pem = tcp.key_pem};
    if (rpc_server_create(dpod.loop, &dpod.report_srv) != 0 || api_register_reports(dpod.report_srv, &dpod.api) != 0 ||
        rpc_server_start(dpod.report_srv, report_listen, &rsec, err, sizeof err) != 0 ||
        routable_report_addr(report_listen, rpc_server_port(dpod.report_srv), report_addr, sizeof report_addr) != 0) {
      log_error("--report-listen %s: %s", report_listen, err);
      goto fail;
    }
    if (!tcp.cert && !auth_addr_is_loopback(report_listen))
      log_warn("reports on %s travel without TLS: give --tls-cert and --tls-key to protect them", report_listen);
  }
  int created;
  if (strcmp(launcher, "slurm") == 0) {
    launch_slurm_params sp = launch_slurm_default_params();
    sp.worker = worker;
    sp.report_addr = report_addr;
    sp.tls_ca = tls_ca;
    sp.poll_ms = poll_ms;
    sp.preempt_grace_s = (grace_ms + 999) / 1000;
    sp.capacity = (unsigned)slots;
    created = launch_slurm_create(dpod.loop, &sp, &dpod.backend, err, sizeof err);
  } else {
    launch_mpirun_params lp = launch_mpirun_default_params();
    lp.mpirun = mpirun;
    lp.worker = worker;
    lp.supervisor = supervisor;
    lp.report_addr = report_addr;
    lp.tls_ca = tls_ca;
    lp.hostfile = hostfile;
    lp.slots = (unsigned)slots;
    created = launch_mpirun_create(dpod.loop, &lp, &dpod.backend, err, sizeof err);
  }
  if (created != 0) {
    log_error("%s", err);
    goto fail;
  }
  cp.state_dir = state_dir;
  cp.jobs_dir = jobs_dir[0] ? jobs_dir : NULL;
  if (coord_open(dpod.loop, &cp, dpod.backend, &dpod.co, err, sizeof err) != 0) {
    log_error("%s", err);
    goto fail;
  }
  if (watch_set_create(coord_store(dpod.co), &dpod.watches) != 0) {
    log_error("out of memory");
    goto fail;
  }
  char db_path[PATH_MAX + 16];
  snprintf(db_path, sizeof db_path, "%s/dpod.db", state_dir);
  if (tb_writer_start(db_path, NULL, &dpod.tb, err, sizeof err) != 0) log_warn("%s; no TensorBoard files", err);
  coord_set_event_hook(dpod.co, on_job_event, dpod.watches);
  dpod.api.co = dpod.co;
  dpod.api.ws = dpod.watches;
  dpod.api.loop = &dpod.loop_stats;
  dpod.api.started_ns = uv_hrtime();
  coord_set_serving_hook(dpod.co, api_serving_changed, &dpod.api);
  if (rpc_server_create(dpod.loop, &dpod.srv) != 0 || api_register(dpod.srv, &dpod.api) != 0) {
    log_error("cannot set up the rpc server");
    goto fail;
  }
  if (rpc_server_start(dpod.srv, addr, &sec, err, sizeof err) != 0) {
    log_error("%s", err);
    goto fail;
  }
  /* The directory is ours and 0700 already; the socket itself is 0600 too, whatever the umask. */
  if (sock && chmod(sock, 0600) != 0) log_warn("%s: cannot make it 0600: %s", sock, strerror(errno));
  if (coord_recover(dpod.co) != 0) {
    log_error("recovering jobs failed; serving anyway");
  }


  printf("dpod listening on %s (state %s, %s launcher, %u slots)\n", addr, state_dir, launcher,
         launch_capacity(dpod.backend));
  fflush(stdout);
  log_info("worker %s, mpirun %s, report address %s", worker, mpirun, report_addr);

  uv_run(dpod.loop, UV_RUN_DEFAULT);
  rc = 0;
  log_info("dpod stopped");
  goto out;

fail:
  /* Never served a call: nothing of ours is in flight. */
  rpc_server_free(dpod.srv);
  dpod.srv = NULL;
  rpc_server_free(dpod.report_srv);
  dpod.report_srv = NULL;
  watch_set_free(dpod.watches);
  tb_writer_stop(dpod.tb);
  coord_free(dpod.co);
  dpod.co = NULL;
  launch_backend_free(dpod.backend);
  close_handle((uv_handle_t *)&dpod.sigint);
  close_handle((uv_handle_t *)&dpod.sigterm);
  close_handle((uv_handle_t *)&dpod.cron);
  close_handle((uv_handle_t *)&dpod.grace);
  close_handle((uv_handle_t *)&dpod.deadline);
  loop_stats_stop(&dpod.loop_stats);
  uv_run(dpod.loop, UV_RUN_NOWAIT); /* runs pending close callbacks */
out:
  if (dpod.socket_path[0]) unlink(dpod.socket_path);
  free(tcp.cert_pem);
  free(tcp.key_pem);
  uv_loop_close(dpod.loop);
  return rc;
}
