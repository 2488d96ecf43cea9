#include "rpc_methods.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Paths built so far, keyed by the (static) method descriptor. A handful of methods exist; a list is
 * enough. */
typedef struct rpc_path_ {
  const ProtobufCMethodDescriptor *method;
  char *path;
  struct rpc_path_ *next;
} rpc_path_;

static pthread_mutex_t rpc_paths_lock_ = PTHREAD_MUTEX_INITIALIZER;
static rpc_path_ *rpc_paths_;

const char *rpc_method_path(const ProtobufCServiceDescriptor *svc, const char *method) {
  if (!svc || !method) return NULL;
  const ProtobufCMethodDescriptor *m = protobuf_c_service_descriptor_get_method_by_name(svc, method);
  if (!m) return NULL;
  const char *path = NULL;
  pthread_mutex_lock(&rpc_paths_lock_);
  for (rpc_path_ *p = rpc_paths_; p && !path; p = p->next)
    if (p->method == m) path = p->path;
  if (!path) {
    size_t len = strlen(svc->name) + strlen(m->name) + 3;
    rpc_path_ *p = malloc(sizeof *p);
    char *s = malloc(len);
    if (p && s) {
      snprintf(s, len, "/%s/%s", svc->name, m->name);
      p->method = m;
      p->path = s;
      p->next = rpc_paths_;
      rpc_paths_ = p;
      path = s;
    } else {
      free(p);
      free(s);
    }
  }
  pthread_mutex_unlock(&rpc_paths_lock_);
  return path;
}
