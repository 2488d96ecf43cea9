#include "proc_scan.h"

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Whether one of pid's command-line arguments is exactly `arg`. */
static int proc_has_arg_(long pid, const char *arg) {
  char path[64], buf[8192];
  snprintf(path, sizeof path, "/proc/%ld/cmdline", pid);
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  size_t len = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[len] = '\0';
  for (size_t i = 0; i < len; i += strlen(buf + i) + 1)
    if (strcmp(buf + i, arg) == 0) return 1;
  return 0;
}

int proc_signal_session(int sid, const char *arg, int sig, int spare) {
  DIR *d = opendir("/proc");
  if (!d) return 0;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    char *end;
    long pid = strtol(e->d_name, &end, 10);
    if (*end != '\0' || pid <= 0 || pid == (long)getpid() || pid == spare) continue;
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) continue;
    size_t len = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[len] = '\0';
    /* "pid (comm) state ppid pgrp session ...": comm may hold spaces or parentheses, so parse after the
     * last ')'. */
    char *rp = strrchr(buf, ')');
    char state;
    int ppid, pgrp, session;
    if (!rp || sscanf(rp + 1, " %c %d %d %d", &state, &ppid, &pgrp, &session) != 4) continue;
    if (session != sid || state == 'Z') continue;
    if (arg && !proc_has_arg_(pid, arg)) continue;
    if (kill((pid_t)pid, sig) == 0) n++;
  }
  closedir(d);
  return n;
}
