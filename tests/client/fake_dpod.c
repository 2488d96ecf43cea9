/* fake_dpod ADDR: serves the scripted fake_server until SIGTERM or SIGINT, for dpoctl's tests. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>

#include "fake_server.h"

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: fake_dpod ADDR\n");
    return 2;
  }
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, NULL);  /* before any thread starts, so sigwait gets them */
  if (fake_server_start(argv[1]) != 0) return 1;
  int sig;
  sigwait(&set, &sig);
  fake_server_stop();
  return 0;
}
