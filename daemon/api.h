/* api: the RPC handlers of dpod.v1.Coordinator, dpod.v1.WorkerReport and grpc.health.v1.Health/Check.
 *
 * Each handler unpacks its request (refusing a malformed one with INVALID_ARGUMENT), calls the
 * coordinator or the watch streams, and ends its call before returning (a WatchJob call lives on in its
 * stream). dpod statuses become gRPC codes in one place, api_code(). */
#ifndef DPOD_API_H
#define DPOD_API_H

#include <grpc/status.h>

#include "coordinator.h"
#include "loop_stats.h"
#include "rpc_server.h"
#include "watch.h"

typedef struct api_health_watch api_health_watch;

/* What the handlers work on; borrowed, it must outlive the server's calls. Zero-initialize it, then set
 * co and ws (and loop, started_ns). */
typedef struct {
  coord *co;
  watch_set *ws;
  api_health_watch *health_watches; /* open grpc.health.v1.Health/Watch streams */
  const loop_stats *loop;           /* optional: the event loop's own measurements, for GetStatus */
  uint64_t started_ns;              /* uv_hrtime() when dpod started */
} api_ctx;

/* The coordinator's serving status changed: every health watcher hears of it. The signature of
 * coord_set_serving_hook(). */
void api_serving_changed(void *ctx);

/* Registers every method on `srv` (before rpc_server_start): the Coordinator and WorkerReport services
 * and grpc.health.v1.Health (Check and Watch). */
int api_register(rpc_server *srv, api_ctx *ctx);
/* Only WorkerReport and grpc.health.v1.Health: the listener the ranks on other nodes reach. */
int api_register_reports(rpc_server *srv, api_ctx *ctx);

/* The gRPC status code for a dpod status: DPOD_ENOENT -> NOT_FOUND, DPOD_EINVAL -> INVALID_ARGUMENT, ... */
grpc_status_code api_code(int status);

#endif
