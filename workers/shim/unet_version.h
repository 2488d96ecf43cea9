/* The libtorch the shim was built against, for what records it (checkpoint provenance). Its own header so
 * that C callers need not include unet_shim.h for it, and its own source so that it costs no torch
 * compile. */
#ifndef DPOD_UNET_VERSION_H
#define DPOD_UNET_VERSION_H

#ifdef __cplusplus
extern "C" {
#endif

/* TORCH_VERSION at build time ("1.13.0"); a static string. */
const char *unet_torch_version(void);

#ifdef __cplusplus
}
#endif

#endif
