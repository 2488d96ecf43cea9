/* What the in-process dpo-tool suites share: a fresh temporary directory per case, paths in it, small
 * text files, and running a command's main() with its stderr captured (to check what a refusal says).
 * Header-only; each suite is one binary. */
#ifndef DPOD_TOOL_CASE_H
#define DPOD_TOOL_CASE_H

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test_util.h"

static char tc_dir[256];

static int tc_setup(void **state) {
  (void)state;
  return test_mkdtemp(tc_dir, sizeof tc_dir, "dpod-tool-case");
}

static int tc_teardown(void **state) {
  (void)state;
  return test_rmtree(tc_dir);
}

/* "<case dir>/<name>" in one of 16 static buffers: valid for the next 15 calls. */
static const char *in_tmp(const char *name) {
  static char path[16][512];
  static int k;
  k = (k + 1) % 16;
  snprintf(path[k], sizeof path[k], "%s/%s", tc_dir, name);
  return path[k];
}

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

/* Runs main_fn(argc, argv) with stderr going to a file; returns its status, what it wrote to stderr in
 * msg[msglen] (cut to fit). */
static int tc_run_captured(int (*main_fn)(int, char **), int argc, char **argv, char *msg, size_t msglen) {
  const char *log = in_tmp("stderr.txt");
  fflush(stderr);
  int saved = dup(2), fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  assert_true(saved >= 0 && fd >= 0);
  dup2(fd, 2);
  close(fd);
  int rc = main_fn(argc, argv);
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  FILE *f = fopen(log, "r");
  assert_non_null(f);
  size_t n = fread(msg, 1, msglen - 1, f);
  msg[n] = 0;
  fclose(f);
  return rc;
}

#define TC_CASE(name) cmocka_unit_test_setup_teardown(name, tc_setup, tc_teardown)

#endif
