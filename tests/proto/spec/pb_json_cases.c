/* Writes messages for pb_json_oracle.py to check: for each case NAME, DIR/NAME.type (the full message
 * name), DIR/NAME.bin (the packed message) and DIR/NAME.json (what pb_json_print() makes of it). The
 * oracle parses the .bin with google.protobuf and compares MessageToJson's output with the .json.
 * usage: pb_json_cases DIR */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "job_spec.h"
#include "pb_json.h"
#include "pb_json_types.pb-c.h"

static const char *dir;
static int failures;

static void write_file(const char *name, const char *ext, const void *data, size_t len) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s.%s", dir, name, ext);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
    fprintf(stderr, "pb_json_cases: cannot write %s\n", path);
    failures++;
  }
}

static void emit(const char *name, const ProtobufCMessage *m) {
  size_t n = protobuf_c_message_get_packed_size(m);
  uint8_t *buf = malloc(n ? n : 1);
  protobuf_c_message_pack(m, buf);
  char *json = pb_json_print(m, 1);
  if (!buf || !json) {
    fprintf(stderr, "pb_json_cases: %s: out of memory\n", name);
    failures++;
    return;
  }
  write_file(name, "type", m->descriptor->name, strlen(m->descriptor->name));
  write_file(name, "bin", buf, n);
  write_file(name, "json", json, strlen(json));
  free(buf);
  cJSON_free(json);
}

static void all_types(void) {
  Dpodtest__AllTypes m = DPODTEST__ALL_TYPES__INIT;
  emit("all_types_empty", &m.base);
  m.has_i32 = m.has_i64 = m.has_u32 = m.has_u64 = m.has_s32 = m.has_s64 = 1;
  m.has_f32 = m.has_f64 = m.has_sf32 = m.has_sf64 = m.has_b = m.has_fl = m.has_d = m.has_by = 1;
  m.has_color = m.has_with_default = 1;
  m.i32 = INT32_MIN, m.i64 = INT64_MIN, m.u32 = UINT32_MAX, m.u64 = UINT64_MAX;
  m.s32 = -5, m.s64 = INT64_MAX, m.f32 = 7, m.f64 = UINT64_MAX - 1, m.sf32 = -9, m.sf64 = -10;
  m.b = 1, m.fl = 0.1f, m.d = 1.0 / 3.0;
  m.str = "quote \" backslash \\ newline \n tab \t ctrl \x01 \xc3\xa9 \xe2\x82\xac";
  uint8_t bytes[] = {0, 1, 2, 0xfb, 0xfc, 0xfd, 0xfe, 0xff};
  m.by.data = bytes, m.by.len = sizeof bytes;
  m.color = DPODTEST__COLOR__COLOR_GREEN;
  m.with_default = 7;
  m.str_default = "x";
  Dpodtest__Inner leaf = DPODTEST__INNER__INIT, top = DPODTEST__INNER__INIT, empty = DPODTEST__INNER__INIT;
  leaf.s = "leaf";
  Dpodtest__Inner *kids[] = {&leaf, &empty};
  top.n_children = 2, top.children = kids;
  m.inner = &top;
  int64_t i64s[] = {0, -1, INT64_MAX};
  double ds[] = {0, -0.5, 1e300, 5e-324, NAN, INFINITY, -INFINITY};
  char *strs[] = {"", "a", "\xf0\x9f\x98\x80"};
  Dpodtest__Color colors[] = {DPODTEST__COLOR__COLOR_RED, DPODTEST__COLOR__COLOR_GREEN};
  Dpodtest__Inner *inners[] = {&top, &empty};
  m.n_r_i64 = 3, m.r_i64 = i64s;
  m.n_r_d = 7, m.r_d = ds;
  m.n_r_str = 3, m.r_str = strs;
  m.n_r_inner = 2, m.r_inner = inners;
  m.n_r_color = 2, m.r_color = colors;
  m.choice_case = DPODTEST__ALL_TYPES__CHOICE_PICK_INNER;
  m.pick_inner = &leaf;
  emit("all_types_full", &m.base);
  m.choice_case = DPODTEST__ALL_TYPES__CHOICE_PICK_U32;
  m.pick_u32 = 0;
  m.d = NAN, m.fl = -INFINITY;
  emit("all_types_oneof_scalar_non_finite", &m.base);
  float floats[] = {1.1f, 3.4028235e38f, 1e-45f, 16777217.0f};
  for (size_t i = 0; i < 4; i++) {
    Dpodtest__AllTypes f = DPODTEST__ALL_TYPES__INIT;
    f.has_fl = 1, f.fl = floats[i];
    char name[32];
    snprintf(name, sizeof name, "float_%zu", i);
    emit(name, &f.base);
  }
}

/* dpod's own messages as dpoctl prints them: a job with its normalized spec, an event, the status. */
static void dpod_messages(void) {
  Dpod__V1__Job job = DPOD__V1__JOB__INIT;
  job.has_id = job.has_state = job.has_created_unix_ms = job.has_last_seq = job.has_exit_code = 1;
  job.has_restarts = 1;
  job.id = 3, job.state = DPOD__V1__JOB_STATE__JOB_STATE_FAILED, job.created_unix_ms = 1764755000123;
  job.last_seq = 17, job.exit_code = -9, job.restarts = 2;
  job.name = "tiny", job.reason = "exit status 3", job.run_dir = "/var/lib/dpod/jobs/3";
  job.spec = job_spec_new();
  if (!job.spec) {
    failures++;
    return;
  }
  Dpod__V1__StepMetrics sm = DPOD__V1__STEP_METRICS__INIT;
  sm.has_step = sm.has_total_steps = sm.has_loss = sm.has_implicit_acc = sm.has_learning_rate = 1;
  sm.step = 20, sm.total_steps = 20, sm.loss = 0.693147180559945, sm.implicit_acc = 0.5, sm.learning_rate = 1e-5;
  job.last_metrics = &sm;
  Dpod__V1__CheckpointInfo ck = DPOD__V1__CHECKPOINT_INFO__INIT;
  ck.has_step = ck.has_size_bytes = 1;
  ck.step = 20, ck.path = "/var/lib/dpod/jobs/3/checkpoints/step-000020", ck.size_bytes = 5000000000ULL;
  ck.metrics = &sm;
  Dpod__V1__CheckpointInfo *cks[] = {&ck, &ck};
  job.last_checkpoint = &ck;
  job.n_checkpoints = 2, job.checkpoints = cks;
  Dpod__V1__AttemptInfo at = DPOD__V1__ATTEMPT_INFO__INIT;
  at.has_attempt = at.has_started_unix_ms = at.has_will_retry = 1;
  at.attempt = 1, at.started_unix_ms = 1764755000999, at.will_retry = 0;
  Dpod__V1__AttemptInfo *ats[] = {&at};
  job.n_attempts = 1, job.attempts = ats;
  emit("job", &job.base);
  protobuf_c_message_free_unpacked(&job.spec->base, NULL);

  Dpod__V1__JobEvent ev = DPOD__V1__JOB_EVENT__INIT;
  Dpod__V1__StateChange sc = DPOD__V1__STATE_CHANGE__INIT;
  sc.has_state = 1, sc.state = DPOD__V1__JOB_STATE__JOB_STATE_RUNNING;
  ev.has_job_id = ev.has_seq = ev.has_time_unix_ms = 1;
  ev.job_id = 3, ev.seq = 2, ev.time_unix_ms = 1764755001000;
  ev.event_case = DPOD__V1__JOB_EVENT__EVENT_STATE, ev.state = &sc;
  emit("event_state", &ev.base);
  ev.event_case = DPOD__V1__JOB_EVENT__EVENT_METRICS, ev.metrics = &sm;
  emit("event_metrics", &ev.base);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: pb_json_cases DIR\n");
    return 2;
  }
  dir = argv[1];
  all_types();
  dpod_messages();
  return failures ? 1 : 0;
}
