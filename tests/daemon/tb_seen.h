/* Reading a job's TensorBoard directory back in the daemon suites: every file's records checked, what
 * they hold counted. Include after <cmocka.h>. */
#ifndef DPOD_TESTS_TB_SEEN_H
#define DPOD_TESTS_TB_SEEN_H

#include <dirent.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dpod_file.h"
#include "tb_file.h"

#define TB_SEEN_MAX_STEP 64

/* What the files of a tensorboard directory hold, each file's records checked. */
typedef struct {
  unsigned files, versions, summaries;
  unsigned loss[TB_SEEN_MAX_STEP + 1]; /* train/loss values seen per step */
  float loss_value[TB_SEEN_MAX_STEP + 1];
  unsigned evals, checkpoints, attempts, exits;
  uint64_t max_seq;
  int seq_repeated;
} tb_seen;

static inline void tb_seen_read(const char *dir, tb_seen *seen) {
  memset(seen, 0, sizeof *seen);
  DIR *d = opendir(dir);
  assert_non_null(d);
  uint64_t seqs[1024];
  size_t n_seqs = 0;
  struct dirent *de;
  while ((de = readdir(d))) {
    if (de->d_name[0] == '.') continue;
    assert_true(strncmp(de->d_name, "events.out.tfevents.", 20) == 0);
    char path[2 * PATH_MAX + 300], err[256];
    snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
    char *buf;
    size_t len;
    assert_int_equal(dpod_read_file(path, 0, &buf, &len, err, sizeof err), 0);
    seen->files++;
    size_t off = 0;
    const unsigned char *data;
    size_t dl;
    for (bool first = true;; first = false) {
      tfrecord_status st = tfrecord_next((unsigned char *)buf, len, &off, TB_RECORD_MAX, &data, &dl);
      if (st == TFRECORD_END) break;
      assert_int_equal(st, TFRECORD_OK);
      Dpod__Tb__Event *ev = dpod__tb__event__unpack(NULL, dl, data);
      assert_non_null(ev);
      if (first) {
        assert_int_equal(ev->what_case, DPOD__TB__EVENT__WHAT_FILE_VERSION);
        assert_string_equal(ev->file_version, "brain.Event:2");
        seen->versions++;
      } else {
        assert_int_equal(ev->what_case, DPOD__TB__EVENT__WHAT_SUMMARY);
        assert_true(ev->has_dpod_seq);
        for (size_t i = 0; i < n_seqs; i++) seen->seq_repeated |= seqs[i] == ev->dpod_seq;
        assert_true(n_seqs < 1024);
        seqs[n_seqs++] = ev->dpod_seq;
        if (ev->dpod_seq > seen->max_seq) seen->max_seq = ev->dpod_seq;
        seen->summaries++;
        assert_true(ev->step >= 0 && ev->step <= TB_SEEN_MAX_STEP);
        for (size_t i = 0; i < ev->summary->n_value; i++) {
          const char *tag = ev->summary->value[i]->tag;
          if (strcmp(tag, "train/loss") == 0) {
            seen->loss[ev->step]++;
            seen->loss_value[ev->step] = ev->summary->value[i]->simple_value;
          }
          seen->evals += strcmp(tag, "eval/implicit_acc") == 0;
          seen->checkpoints += strcmp(tag, "checkpoint/size_mb") == 0;
          seen->attempts += strcmp(tag, "attempt/number") == 0;
          seen->exits += strcmp(tag, "attempt/exit_code") == 0;
        }
      }
      dpod__tb__event__free_unpacked(ev, NULL);
    }
    free(buf);
  }
  closedir(d);
}

static inline void tb_seen_assert_steps_once(const tb_seen *seen, unsigned last) {
  for (unsigned s = 1; s <= TB_SEEN_MAX_STEP; s++) {
    if (seen->loss[s] != (s <= last ? 1u : 0u)) fail_msg("step %u seen %u times (steps 1..%u expected once)", s, seen->loss[s], last);
  }
  assert_false(seen->seq_repeated);
}

#endif
