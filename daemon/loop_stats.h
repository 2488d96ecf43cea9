/* loop_stats: how long dpod's event loop went without polling, measured by the loop itself.
 *
 * Every libuv iteration polls for I/O, then runs the callbacks that became ready. While callbacks run,
 * no RPC, report or watcher is served: that busy time is the latency the loop adds to every call that
 * arrives meanwhile. A uv_prepare handle (run just before each poll) takes the time since the previous
 * one and subtracts the time the loop spent idle in the kernel (uv_metrics_idle_time), which leaves the
 * iteration's busy time. The loop thread's CPU time over the same iteration tells dpod's own work from
 * waiting for a CPU (on a machine shared with busy clients the two differ). Costs three clock reads per
 * iteration; it never wakes an idle loop. */
#ifndef DPOD_LOOP_STATS_H
#define DPOD_LOOP_STATS_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#define LOOP_STATS_SLOW_US 50000 /* an iteration busier than this counts as a stall */

typedef struct {
  uv_prepare_t prepare;
  bool started;
  uint64_t last_ns, last_idle_ns, last_cpu_ns;
  uint64_t iterations;
  uint64_t busy_ns;         /* the sum over all iterations */
  uint64_t longest_ns;      /* the busiest iteration */
  uint64_t longest_cpu_ns;  /* the most CPU time the loop thread used in one iteration */
  uint64_t slow_iterations; /* iterations busier than LOOP_STATS_SLOW_US */
} loop_stats;

/* Enables idle-time accounting on `loop` (before it first runs) and starts measuring. Returns 0 or a
 * libuv error code. The prepare handle does not keep the loop alive. */
int loop_stats_start(uv_loop_t *loop, loop_stats *s);

/* Closes the prepare handle (the struct must live until the loop has run its close callback). */
void loop_stats_stop(loop_stats *s);

#endif
