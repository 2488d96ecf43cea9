#include "loop_stats.h"

#include <time.h>

static uint64_t thread_cpu_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void loop_stats_on_prepare(uv_prepare_t *h) {
  loop_stats *s = h->data;
  uint64_t now = uv_hrtime(), idle = uv_metrics_idle_time(h->loop), cpu = thread_cpu_ns();
  uint64_t wall = now - s->last_ns, idle_delta = idle - s->last_idle_ns;
  uint64_t busy = wall > idle_delta ? wall - idle_delta : 0;
  s->last_ns = now;
  s->last_idle_ns = idle;
  uint64_t cpu_delta = cpu - s->last_cpu_ns;
  s->last_cpu_ns = cpu;
  if (!s->started) { /* the time before the loop first ran is set-up, not a stall */
    s->started = true;
    return;
  }
  s->iterations++;
  s->busy_ns += busy;
  if (busy > s->longest_ns) s->longest_ns = busy;
  if (cpu_delta > s->longest_cpu_ns) s->longest_cpu_ns = cpu_delta;
  if (busy > (uint64_t)LOOP_STATS_SLOW_US * 1000) s->slow_iterations++;
}

int loop_stats_start(uv_loop_t *loop, loop_stats *s) {
  *s = (loop_stats){0};
  int rc = uv_loop_configure(loop, UV_METRICS_IDLE_TIME);
  if (rc != 0) return rc;
  if ((rc = uv_prepare_init(loop, &s->prepare)) != 0) return rc;
  s->prepare.data = s;
  s->last_ns = uv_hrtime();
  s->last_idle_ns = uv_metrics_idle_time(loop);
  s->last_cpu_ns = thread_cpu_ns();
  if ((rc = uv_prepare_start(&s->prepare, loop_stats_on_prepare)) != 0) return rc;
  uv_unref((uv_handle_t *)&s->prepare);
  return 0;
}

void loop_stats_stop(loop_stats *s) {
  if (!uv_is_closing((uv_handle_t *)&s->prepare)) uv_close((uv_handle_t *)&s->prepare, NULL);
}
