/* preview.h — the preview proxy: a session's dev server, reachable from a
 * browser at a URL of its own, behind an access token (issue 13, item 3).
 *
 * One listening port per preview (from a configured range), so a dev
 * server's absolute paths, its WebSocket (hot reload) and its cookies work
 * as they would on localhost; the proxy checks the token on a connection's
 * first request and then passes bytes both ways untouched, which is what an
 * HTTP/1.1 keep-alive connection and an upgraded WebSocket both need.
 *
 * Where the bytes go is the caller's business: dial() returns a socket whose
 * connect is started (the local provider makes it inside the sandbox's
 * network namespace; docker and fly connect to the container's or machine's
 * address; the agent into its sandbox). The proxy knows no provider.
 *
 * The token. A preview's URL is http://<public host>:<port>/?sbx_token=<t>.
 * The first request carrying it is answered 302 to the same path without
 * it, setting a cookie sbx_preview_<port> (HttpOnly, SameSite=Lax), so the
 * browser then sends the cookie and the token leaves the address bar; a
 * WebSocket handshake may carry it in the query or the cookie. Anything
 * else gets 401. The token is SHA-256 of the secret and the preview's name:
 * every process with the same SBX_PREVIEW_SECRET gives a session the same
 * token (a session handed to another worker keeps its URL when it gets the
 * same port), and it is not the service key nor derived from any other
 * credential.
 *
 * Bounds: a request head of at most SBX_PREVIEW_HEAD_MAX bytes; at most
 * max_conns connections per preview; 64 KiB buffered per direction (a slow
 * reader stops the other side's reads, not our memory).
 */
#ifndef SBX_PREVIEW_H
#define SBX_PREVIEW_H

#include <stddef.h>

#include "loop.h"

#define SBX_PREVIEW_HEAD_MAX 16384
#define SBX_PREVIEW_URL_MAX 256

typedef struct sbx_previews sbx_previews;

/* A socket to the dev server (non-blocking; its connect may still be in
 * progress), or -errno with a line in err. */
typedef int (*sbx_preview_dial_fn)(void *arg, char *err, size_t errlen);

typedef struct sbx_previews_cfg {
    sbx_loop *loop;
    const char *bind_host;    /* IPv4 address the ports listen on */
    const char *public_host;  /* host of the URLs; NULL or "": bind_host */
    int port_min, port_max;   /* the ports previews get, inclusive */
    const char *secret;       /* tokens are keyed with it; NULL or "": random */
    int max_conns;            /* per preview; 0: 64 */
} sbx_previews_cfg;

int sbx_previews_new(const sbx_previews_cfg *cfg, sbx_previews **out, char *err, size_t errlen);
/* Closes every preview and connection. */
void sbx_previews_free(sbx_previews *p);

/* Opens the preview `name` (a session's sandbox name) and writes its URL.
 * Opening a name already open keeps its port and connections and takes the
 * new dial. Returns 0, or -errno (no free port in the range: -EADDRINUSE)
 * with a line in err. */
int sbx_preview_open(sbx_previews *p, const char *name, sbx_preview_dial_fn dial, void *arg,
                     char url[SBX_PREVIEW_URL_MAX], char *err, size_t errlen);
/* Stops listening and closes the preview's connections; unknown names are
 * fine. */
void sbx_preview_close(sbx_previews *p, const char *name);
/* The token of a name (for tests and for callers that build URLs). */
void sbx_preview_token(const sbx_previews *p, const char *name, char tok[65]);

#endif
