/* Defaults that dpod and dpoctl must agree on, and the contract between the daemon and the workers it
 * launches (command line, environment, exit statuses). */
#ifndef DPOD_PATHS_H
#define DPOD_PATHS_H

#include <stddef.h>

/* The daemon's default address: "unix:$XDG_RUNTIME_DIR/dpod/dpod.sock", or "unix:/tmp/dpod-$UID/dpod.sock"
 * without XDG_RUNTIME_DIR. DPOD_ADDR, when set, overrides it for both programs. Returns `buf`. */
char *dpod_default_addr(char *buf, size_t len);

/* The daemon's default state directory: $XDG_STATE_HOME/dpod, or $HOME/.local/state/dpod. Returns `buf`. */
char *dpod_default_state_dir(char *buf, size_t len);

/* How the daemon launches a job:
 *   mpirun -np RANKS ... dpo-worker --spec RUN_DIR/spec.pb --run-dir RUN_DIR --job-id ID --report-addr ADDR
 * with the per-job secret in the environment (never on the command line, where ps would show it). */
#define DPOD_ENV_JOB_SECRET "DPOD_JOB_SECRET"
/* The attempt the ranks belong to (1, 2, ...), which rank 0's reports carry. */
#define DPOD_ENV_ATTEMPT "DPOD_ATTEMPT"
#define JOB_SECRET_HEX_LEN 64 /* 32 random bytes as lower-case hex */
/* The CA file (PEM) the ranks trust when the report address is TCP with TLS; unset: plain. */
#define DPOD_ENV_TLS_CA "DPOD_TLS_CA"

/* dpo-worker exit statuses. mpirun passes on the status of the first rank that failed. */
enum {
  WORKER_EXIT_OK = 0,
  WORKER_EXIT_FAILED = 1,     /* training failed; the log says why */
  WORKER_EXIT_BAD_INPUT = 2,  /* a bad command line or spec, or a model or dataset it refuses: a retry cannot help */
  WORKER_EXIT_CANCELLED = 3,  /* stopped on the daemon's cancel directive */
  WORKER_EXIT_PREEMPTED = 4,  /* stopped by SIGTERM/SIGUSR1 after a checkpoint: resumable */
};

#endif
