/* The fixture of the suites that need a job store of their own: a private directory holding dpod.db. */
#ifndef DPOD_TESTS_STORE_FIXTURE_H
#define DPOD_TESTS_STORE_FIXTURE_H

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

#include "job_store.h"
#include "test_util.h"

typedef struct {
  char dir[PATH_MAX];
  char db[PATH_MAX + 16];
  job_store *s;
} store_fixture;

/* Creates the directory (prefix names it under $TMPDIR) and opens the store. Returns 0 or -1. */
static inline int store_fixture_open(store_fixture *f, const char *prefix) {
  if (test_mkdtemp(f->dir, sizeof f->dir, prefix) != 0) return -1;
  snprintf(f->db, sizeof f->db, "%s/dpod.db", f->dir);
  char err[256];
  if (job_store_open(f->db, &f->s, err, sizeof err) != 0) {
    fprintf(stderr, "open: %s\n", err);
    return -1;
  }
  return 0;
}

/* Closes the store and removes the directory. Returns 0 or -1. */
static inline int store_fixture_close(store_fixture *f) {
  job_store_close(f->s);
  char cmd[PATH_MAX + 32];
  snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
  return system(cmd) == 0 ? 0 : -1;
}

#endif
