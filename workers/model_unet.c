#include "model_unet.h"

#include <stdio.h>
#include <stdlib.h>

#include "dpod_error.h"
#include "model_dir.h"

int model_unet_load(unet_t m, const model_source *src, char *err, size_t errlen) {
  int status;
  if (!src->sharded) {
    if ((status = unet_load_weights(m, src->weights)) != 0) snprintf(err, errlen, "%s", unet_last_error(m));
    return status;
  }
  unet_info info;
  unet_get_info(m, &info);
  model_param *params = calloc(info.num_tensors ? info.num_tensors : 1, sizeof *params);
  if (!params) return dpod_errf(err, errlen, DPOD_ENOMEM, "out of memory");
  for (size_t i = 0; i < info.num_tensors; i++) {
    model_param *p = &params[i];
    if ((status = unet_param_at(m, i, &p->name, &p->offset, &p->ndim, p->shape)) != 0) {
      free(params);
      return dpod_errf(err, errlen, status, "%s", unet_last_error(m));
    }
  }
  /* Last: on a device model the buffer is a host snapshot, valid until the next call on the handle. */
  size_t flat_len = 0;
  float *flat = unet_param_buffer(m, &flat_len);
  if (!flat) {
    free(params);
    return dpod_errf(err, errlen, DPOD_EUNSUPPORTED, "%s: %s", src->weights, unet_last_error(m));
  }
  status = model_weights_read(src->weights, 1, params, info.num_tensors, flat, flat_len, err, errlen);
  free(params);
  return status;
}
