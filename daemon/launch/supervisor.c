/* dpod-supervisor: runs one attempt of a job and records how it ended, whether or not dpod is still
 * there to see it.
 *
 *   dpod-supervisor --run-dir DIR --attempt N -- mpirun ARGS...
 *
 * dpod starts it as the leader of a new session (its pid is the attempt's handle) with stdout and stderr
 * on the job's log. It starts mpirun in that session, waits for it, SIGKILLs whatever is left in the
 * session (a rank stuck in a collective must not outlive its attempt), writes RUN_DIR/attempt-N.exit
 * (daemon/launch/launch.h) and exits. It ignores SIGTERM, SIGINT and SIGHUP: stopping dpod, or the
 * service around it, must not stop the jobs; dpod stops an attempt by signalling its ranks (mpirun only
 * while it starts them, see mpirun_stop_), never the supervisor. Because mpirun is the supervisor's child
 * and not dpod's, a dpod that dies or restarts leaves the attempt running, and the next dpod adopts it
 * from its handle. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dpod_error.h"
#include "dpod_parse.h"
#include "launch.h"
#include "proc_scan.h"

static void usage(FILE *f) {
  fprintf(f, "usage: dpod-supervisor --run-dir DIR --attempt N -- COMMAND [ARGS...]\n"
             "Runs COMMAND (mpirun) as one attempt of a dpod job and writes DIR/attempt-N.exit when it ends.\n"
             "--version prints its version.\n");
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int main(int argc, char **argv) {
  const char *run_dir = NULL;
  uint64_t attempt = 0;
  static const struct option opts[] = {{"run-dir", required_argument, 0, 'r'},
                                       {"attempt", required_argument, 0, 'a'},
                                       {"help", no_argument, 0, 'h'},
                                       {"version", no_argument, 0, 'V'},
                                       {0, 0, 0, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "+", opts, NULL)) != -1) {
    switch (c) {
      case 'r': run_dir = optarg; break;
      case 'a':
        if (dpod_parse_u64(optarg, UINT32_MAX, &attempt) != 0 || attempt == 0) {
          fprintf(stderr, "dpod-supervisor: --attempt wants a number from 1, got '%s'\n", optarg);
          return 2;
        }
        break;
      case 'h': usage(stdout); return 0;
      case 'V': printf("dpod-supervisor %s\n", DPOD_VERSION_STRING); return 0;
      default: usage(stderr); return 2;
    }
  }
  if (!run_dir || attempt == 0 || optind >= argc) {
    usage(stderr);
    return 2;
  }
  char **command = argv + optind;

  /* dpod made us a session leader; started by hand we make ourselves one. */
  if (getsid(0) != getpid() && setsid() < 0) {
    fprintf(stderr, "dpod-supervisor: setsid: %s\n", strerror(errno));
    return 1;
  }
  signal(SIGTERM, SIG_IGN);
  signal(SIGINT, SIG_IGN);
  signal(SIGHUP, SIG_IGN);
  signal(SIGPIPE, SIG_IGN);

  pid_t child = fork();
  if (child < 0) {
    fprintf(stderr, "dpod-supervisor: fork: %s\n", strerror(errno));
    return 1;
  }
  if (child == 0) {
    /* mpirun and the ranks get the default dispositions back: they are what stopping signals. */
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    execvp(command[0], command);
    fprintf(stderr, "dpod-supervisor: cannot run %s: %s\n", command[0], strerror(errno));
    _exit(127);
  }
  int status = 0;
  while (waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  int left = proc_signal_session((int)getpid(), NULL, SIGKILL, (int)getpid());
  if (left > 0) fprintf(stderr, "dpod-supervisor: killed %d leftover processes of the attempt\n", left);

  launch_exit ex = {.attempt = (uint32_t)attempt,
                    .term_signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0,
                    .exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : 0,
                    .finished_unix_ms = now_ms()};
  char err[1024];
  if (launch_exit_record_write(run_dir, &ex, err, sizeof err) != 0) {
    fprintf(stderr, "dpod-supervisor: %s\n", err);
    return 1;
  }
  return 0;
}
