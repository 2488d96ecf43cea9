/* gRPC addresses for unix sockets whose path is longer than a sockaddr_un holds (108 bytes, reached
 * quickly under a deep $TMPDIR or home directory). */
#ifndef DPOD_RPC_ADDR_H
#define DPOD_RPC_ADDR_H

#include <stddef.h>

/* The longest unix socket path bind() and connect() take directly. */
#define RPC_UNIX_PATH_MAX 107

/* The socket path of "unix:/p" or "unix:///p", or NULL for any other address. */
const char *rpc_unix_path(const char *addr);

/* Copies `addr` into out, except that a unix socket path too long for sockaddr_un becomes
 * "unix:/proc/self/fd/N/NAME", N being a descriptor of the socket's directory opened here (O_PATH,
 * close-on-exec) and returned in *dir_fd, which must stay open while the address is used and be closed
 * after; *dir_fd is -1 when no descriptor was needed. Works for binding and connecting alike, in this
 * process only. Returns 0 or a negative status (err says why). */
int rpc_addr_for_socket(const char *addr, char *out, size_t outlen, int *dir_fd, char *err, size_t errlen);

#endif
