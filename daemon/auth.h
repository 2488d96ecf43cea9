/* Who may use dpod over TCP: the bearer token every public call carries, and which addresses may be
 * served without TLS. (Over the unix socket the socket's owner-only mode is the access control; worker
 * reports prove themselves with their job's secret, see coordinator.c.) */
#ifndef DPOD_AUTH_H
#define DPOD_AUTH_H

#include <stddef.h>

#define AUTH_TOKEN_HEX_LEN 64 /* a token dpod makes: 32 random bytes as lower-case hex */
#define AUTH_TOKEN_MIN 16     /* a token a user wrote must be at least this long */
#define AUTH_TOKEN_MAX 512

/* Reads the token in `path` into `token` (at least AUTH_TOKEN_MAX + 1 bytes), or, when the file does
 * not exist, creates it (mode 0600, 32 random bytes as hex) and says so in *created. The file must be a
 * regular file (not a link) owned by this user and readable by nobody else; its content is one line of
 * at least AUTH_TOKEN_MIN printable characters without blanks. Returns 0 or a negative status with err
 * naming the file and the problem, never its content. */
int auth_token_load(const char *path, char *token, int *created, char *err, size_t errlen);

/* Whether `addr` ("host:port", "[v6]:port", "ipv4:…", "ipv6:…") names only this host: 127.0.0.0/8,
 * ::1 or localhost. Wildcards (0.0.0.0, [::]) are not loopback. */
int auth_addr_is_loopback(const char *addr);

#endif
