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

/* Reads /proc/pid/stat into buf and returns what follows "pid (comm)", or NULL if pid is gone. comm may
 * hold spaces or parentheses, so the fields start after the last ')'. */
static const char *proc_stat_fields_(long pid, char *buf, size_t size) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%ld/stat", pid);
  FILE *f = fopen(path, "r");
  if (!f) return NULL;
  size_t len = fread(buf, 1, size - 1, f);
  fclose(f);
  buf[len] = '\0';
  const char *rp = strrchr(buf, ')');
  return rp ? rp + 1 : NULL;
}

/* pid's state, parent and session from /proc/pid/stat. Returns 0, or -1 if it is gone. */
static int proc_stat_(long pid, char *state, int *ppid, int *session) {
  char buf[1024];
  const char *fields = proc_stat_fields_(pid, buf, sizeof buf);
  int pgrp;
  if (!fields || sscanf(fields, " %c %d %d %d", state, ppid, &pgrp, session) != 4) return -1;
  return 0;
}

int proc_signal(const proc_filter *flt, int sig) {
  DIR *d = opendir("/proc");
  if (!d) return 0;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    char *end;
    long pid = strtol(e->d_name, &end, 10);
    if (*end != '\0' || pid <= 0 || pid == (long)getpid() || pid == flt->spare) continue;
    char state;
    int ppid, session;
    if (proc_stat_(pid, &state, &ppid, &session) != 0) continue;
    if (session != flt->sid || state == 'Z') continue;
    if (flt->spare_children_of && ppid == flt->spare_children_of) continue;
    if (flt->arg && !proc_has_arg_(pid, flt->arg)) continue;
    if (kill((pid_t)pid, sig) == 0) n++;
  }
  closedir(d);
  return n;
}

int proc_signal_session(int sid, const char *arg, int sig, int spare) {
  proc_filter f = {.sid = sid, .arg = arg, .spare = spare};
  return proc_signal(&f, sig);
}

int proc_first_child(int ppid) {
  DIR *d = opendir("/proc");
  if (!d) return 0;
  int found = 0;
  struct dirent *e;
  while (!found && (e = readdir(d)) != NULL) {
    char *end;
    long pid = strtol(e->d_name, &end, 10);
    char state;
    int parent, session;
    if (*end != '\0' || pid <= 0 || proc_stat_(pid, &state, &parent, &session) != 0) continue;
    if (parent == ppid && state != 'Z') found = (int)pid;
  }
  closedir(d);
  return found;
}

long proc_reaped_children_ticks(int pid) {
  char buf[1024];
  const char *fields = proc_stat_fields_(pid, buf, sizeof buf);
  /* state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime:
   * the last two are the fields 16 and 17 of proc(5). */
  long cutime, cstime;
  if (!fields || sscanf(fields, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %ld %ld", &cutime, &cstime) != 2)
    return -1;
  return cutime + cstime;
}

int proc_is_session_leader_with_arg(int pid, const char *arg) {
  char state;
  int ppid, session;
  if (pid <= 0 || proc_stat_(pid, &state, &ppid, &session) != 0) return 0;
  return state != 'Z' && session == pid && proc_has_arg_(pid, arg);
}
