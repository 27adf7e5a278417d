/* preview.c — the preview proxy (preview.h says what and why).
 *
 * A connection walks these states, each move through cmove():
 *
 *   HEAD   reading the first request head (at most SBX_PREVIEW_HEAD_MAX,
 *          within HEAD_TIMEOUT_MS): then the token decides
 *   REPLY  our own answer (302 setting the cookie, 401, 502, 431) is
 *          written, then the connection is closed
 *   DIAL   the token passed: dial() gave a socket whose connect runs; its
 *          first writability says whether it connected (SO_ERROR)
 *   PIPE   bytes both ways: what the client sent (the head first) to the
 *          dev server, what it answers back. A side's EOF is passed on as
 *          shutdown(SHUT_WR) once its buffer is written; the connection
 *          ends when both directions did, or on any error.
 *
 * Interest is recomputed after every event from the buffers alone (read a
 * side while its buffer has room and it has not ended; write it while the
 * other buffer holds bytes for it), so a slow side stops the other's reads.
 */
#include "preview.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "sbx_sha256.h"

#define BUF_MAX (64 * 1024)     /* per direction and connection */
#define HEAD_TIMEOUT_MS 10000   /* a client that sends no whole head is dropped */
#define DIAL_TIMEOUT_MS 10000
#define NAME_MAX_LEN 63
#define TOKEN_LEN 32            /* hex characters of the token */

typedef enum cstate { C_HEAD, C_REPLY, C_DIAL, C_PIPE } cstate;
static const char *const cstate_names[] = {"head", "reply", "dial", "pipe"};

typedef struct pbuf {
    size_t off, len;
    char data[BUF_MAX];
} pbuf;

typedef struct preview preview;

typedef struct conn {
    preview *pv;
    struct conn *prev, *next;
    cstate st;
    sbx_io cio, uio;            /* client; upstream (fd -1 until dialled) */
    sbx_timer timer;            /* HEAD and DIAL deadlines */
    size_t headlen;
    char head[SBX_PREVIEW_HEAD_MAX];
    pbuf up, down;              /* client -> dev server; dev server -> client */
    int client_eof, up_eof;     /* that side sent EOF */
    int up_shut, client_shut;   /* we passed the EOF on */
} conn;

struct preview {
    sbx_previews *ps;
    preview *next;
    char name[NAME_MAX_LEN + 1];
    char token[65];             /* TOKEN_LEN hex characters */
    int port;
    sbx_io lio;
    sbx_preview_dial_fn dial;
    void *arg;
    conn *conns;
    int nconns;
};

struct sbx_previews {
    sbx_loop *loop;
    char bind_host[64], public_host[128], secret[128];
    struct in_addr addr;
    int port_min, port_max, max_conns;
    preview *list;
    /* Closed connections and previews wait here for the reap timer: an
     * epoll batch may still name their ios (loop.h: freed at a safe point). */
    conn *dead;
    preview *dead_previews;
    sbx_timer reap;
};

static void cmove(conn *c, cstate to)
{
    sbx_debug("preview", "preview %s port %d: connection %s -> %s", c->pv->name, c->pv->port,
              cstate_names[c->st], cstate_names[to]);
    c->st = to;
}

/* Closes c now; its memory goes at the next reap. */
static void conn_free(conn *c)
{
    preview *pv = c->pv;
    sbx_previews *ps = pv->ps;
    sbx_timer_stop(ps->loop, &c->timer);
    sbx_io_stop(&c->cio);
    sbx_io_stop(&c->uio);
    if (c->cio.fd >= 0)
        close(c->cio.fd);
    if (c->uio.fd >= 0)
        close(c->uio.fd);
    c->cio.fd = c->uio.fd = -1;
    if (c->prev)
        c->prev->next = c->next;
    else
        pv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    pv->nconns--;
    c->prev = NULL;
    c->next = ps->dead;
    ps->dead = c;
    sbx_timer_start(ps->loop, &ps->reap, 0);
}

static void on_reap(sbx_timer *t)
{
    sbx_previews *ps = t->data;
    while (ps->dead) {
        conn *c = ps->dead;
        ps->dead = c->next;
        free(c);
    }
    while (ps->dead_previews) {
        preview *pv = ps->dead_previews;
        ps->dead_previews = pv->next;
        free(pv);
    }
}

/* Which events each side waits for, from the buffers (see the top). */
static void interest(conn *c)
{
    sbx_loop *l = c->pv->ps->loop;
    int ce = 0, ue = 0;
    switch (c->st) {
    case C_HEAD:
        ce = SBX_READ;
        break;
    case C_REPLY:
        ce = SBX_WRITE;
        break;
    case C_DIAL:
        ue = SBX_WRITE;
        break;
    case C_PIPE:
        if (!c->client_eof && c->up.len < BUF_MAX)
            ce |= SBX_READ;
        if (c->down.len > 0)
            ce |= SBX_WRITE;
        if (!c->up_eof && c->down.len < BUF_MAX)
            ue |= SBX_READ;
        if (c->up.len > 0)
            ue |= SBX_WRITE;
        break;
    }
    if (sbx_io_set(l, &c->cio, ce) != 0 ||
        (c->uio.fd >= 0 && sbx_io_set(l, &c->uio, ue) != 0))
        conn_free(c);
}

/* Reads into the free end of b; returns bytes, 0 at EOF, -1 on error,
 * -2 when it would block. */
static ssize_t fill(int fd, pbuf *b)
{
    ssize_t n;
    if (b->off > 0 && b->off + b->len == BUF_MAX) {
        memmove(b->data, b->data + b->off, b->len);
        b->off = 0;
    }
    n = read(fd, b->data + b->off + b->len, BUF_MAX - b->off - b->len);
    if (n < 0)
        return errno == EAGAIN || errno == EINTR ? -2 : -1;
    b->len += (size_t)n;
    return n;
}

/* Writes what b holds; -1 on error. */
static int drain(int fd, pbuf *b)
{
    while (b->len > 0) {
        ssize_t n = send(fd, b->data + b->off, b->len, MSG_NOSIGNAL);
        if (n < 0)
            return errno == EAGAIN || errno == EINTR ? 0 : -1;
        b->off += (size_t)n;
        b->len -= (size_t)n;
    }
    b->off = 0;
    return 0;
}

/* Our own answer, then close. */
static void reply(conn *c, const char *status, const char *extra, const char *text)
{
    int n = snprintf(c->down.data, BUF_MAX,
                     "HTTP/1.1 %s\r\n%sContent-Type: text/plain; charset=utf-8\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n%s",
                     status, extra ? extra : "", strlen(text), text);
    c->down.off = 0;
    c->down.len = n < 0 ? 0 : (size_t)n < BUF_MAX ? (size_t)n : BUF_MAX - 1;
    sbx_timer_stop(c->pv->ps->loop, &c->timer);
    cmove(c, C_REPLY);
    interest(c);
}

/* The value of query parameter `key` in target (NULL if absent); *len set. */
static const char *query_param(const char *target, size_t tlen, const char *key, size_t *len)
{
    const char *q = memchr(target, '?', tlen), *end = target + tlen;
    size_t klen = strlen(key);
    if (!q)
        return NULL;
    for (const char *p = q + 1; p < end;) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        if ((size_t)(stop - p) > klen && memcmp(p, key, klen) == 0 && p[klen] == '=') {
            *len = (size_t)(stop - p - klen - 1);
            return p + klen + 1;
        }
        p = stop + 1;
    }
    return NULL;
}

/* The value of header `name` (case-insensitive) in the head, NULL if none. */
static const char *header(const char *head, size_t hlen, const char *name, size_t *len)
{
    size_t nlen = strlen(name);
    const char *end = head + hlen, *p = memchr(head, '\n', hlen);
    while (p && p + 1 < end) {
        const char *line = p + 1, *eol = memchr(line, '\n', (size_t)(end - line));
        if (!eol)
            break;
        if ((size_t)(eol - line) > nlen && strncasecmp(line, name, nlen) == 0 &&
            line[nlen] == ':') {
            const char *v = line + nlen + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            *len = (size_t)(eol - v);
            if (*len > 0 && v[*len - 1] == '\r')
                (*len)--;
            return v;
        }
        p = eol;
    }
    return NULL;
}

/* The token compared in constant time. */
static int token_ok(const preview *pv, const char *t, size_t len)
{
    unsigned char d = 0;
    if (!t || len != TOKEN_LEN)
        return 0;
    for (size_t i = 0; i < TOKEN_LEN; i++)
        d |= (unsigned char)(t[i] ^ pv->token[i]);
    return d == 0;
}

static int cookie_token(const conn *c, const char **v, size_t *vlen)
{
    char name[32];
    size_t clen, nlen;
    const char *ck = header(c->head, c->headlen, "cookie", &clen), *end;
    if (!ck)
        return 0;
    nlen = (size_t)snprintf(name, sizeof(name), "sbx_preview_%d=", c->pv->port);
    end = ck + clen;
    for (const char *p = ck; p < end;) {
        while (p < end && (*p == ' ' || *p == ';'))
            p++;
        const char *semi = memchr(p, ';', (size_t)(end - p)), *stop = semi ? semi : end;
        if ((size_t)(stop - p) >= nlen && memcmp(p, name, nlen) == 0) {
            *v = p + nlen;
            *vlen = (size_t)(stop - p - nlen);
            return 1;
        }
        p = stop;
    }
    return 0;
}

static void on_upstream(sbx_io *io, int events);

/* A whole head: the token decides, then the dial. */
static void decide(conn *c)
{
    preview *pv = c->pv;
    const char *sp1 = memchr(c->head, ' ', c->headlen), *sp2, *tok, *up;
    size_t tlen, toklen = 0, uplen = 0;
    char err[160] = "", extra[SBX_PREVIEW_HEAD_MAX + 256], loc[SBX_PREVIEW_HEAD_MAX];
    int fd, websocket;

    sp2 = sp1 ? memchr(sp1 + 1, ' ', c->headlen - (size_t)(sp1 + 1 - c->head)) : NULL;
    if (!sp2) {
        reply(c, "400 Bad Request", NULL, "sbx preview: not an HTTP request\n");
        return;
    }
    tlen = (size_t)(sp2 - sp1 - 1);
    up = header(c->head, c->headlen, "upgrade", &uplen);
    websocket = up && uplen >= 9 && strncasecmp(up, "websocket", 9) == 0;
    tok = query_param(sp1 + 1, tlen, "sbx_token", &toklen);
    if (tok && !websocket) {
        /* The token in the address: swap it for the cookie, and show the
         * same address without it. */
        size_t n = 0;
        const char *t = sp1 + 1, *q = memchr(t, '?', tlen), *pstart = tok - strlen("sbx_token=");
        const char *pend = tok + toklen;
        if (!token_ok(pv, tok, toklen)) {
            reply(c, "401 Unauthorized", NULL, "sbx preview: wrong token\n");
            return;
        }
        memcpy(loc, t, (size_t)(q - t));
        n = (size_t)(q - t);
        if (pstart > q + 1) { /* parameters before it */
            memcpy(loc + n, q, (size_t)(pstart - 1 - q));
            n += (size_t)(pstart - 1 - q);
        }
        if (pend < t + tlen) { /* parameters after it */
            char sep = n == (size_t)(q - t) ? '?' : '&';
            loc[n++] = sep;
            memcpy(loc + n, pend + 1, (size_t)(t + tlen - pend - 1));
            n += (size_t)(t + tlen - pend - 1);
        }
        loc[n] = '\0';
        snprintf(extra, sizeof(extra),
                 "Location: %.*s\r\nSet-Cookie: sbx_preview_%d=%s; Path=/; HttpOnly; "
                 "SameSite=Lax\r\n", (int)(n ? n : 1), n ? loc : "/", pv->port,
                 pv->token);
        reply(c, "302 Found", extra, "sbx preview: signed in; go on\n");
        return;
    }
    if (!(tok ? token_ok(pv, tok, toklen) : cookie_token(c, &tok, &toklen) &&
                                                token_ok(pv, tok, toklen))) {
        reply(c, "401 Unauthorized", NULL,
              "sbx preview: open the preview's URL, with its sbx_token, first\n");
        return;
    }
    fd = pv->dial(pv->arg, err, sizeof(err));
    if (fd < 0) {
        sbx_info("preview", "preview %s: dial failed: %s", pv->name, err[0] ? err : strerror(-fd));
        reply(c, "502 Bad Gateway", NULL,
              "sbx preview: the session's dev server cannot be reached\n");
        return;
    }
    memcpy(c->up.data, c->head, c->headlen);
    c->up.off = 0;
    c->up.len = c->headlen;
    sbx_io_init(&c->uio, fd, on_upstream, c);
    cmove(c, C_DIAL);
    sbx_timer_start(pv->ps->loop, &c->timer, DIAL_TIMEOUT_MS);
    interest(c);
}

static void on_client(sbx_io *io, int events)
{
    conn *c = io->data;
    ssize_t n;
    (void)events;
    if (c->st == C_HEAD) {
        n = read(io->fd, c->head + c->headlen, sizeof(c->head) - c->headlen);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            conn_free(c);
            return;
        }
        if (n < 0)
            return;
        c->headlen += (size_t)n;
        if (memmem(c->head, c->headlen, "\r\n\r\n", 4) || memmem(c->head, c->headlen, "\n\n", 2))
            decide(c);
        else if (c->headlen == sizeof(c->head))
            reply(c, "431 Request Header Fields Too Large", NULL,
                  "sbx preview: request head too large\n");
        return;
    }
    if (c->st == C_REPLY) {
        if (drain(io->fd, &c->down) != 0 || c->down.len == 0)
            conn_free(c);
        return;
    }
    if (c->st != C_PIPE)
        return;
    if ((events & (SBX_READ | SBX_ERROR)) && !c->client_eof && c->up.len < BUF_MAX) {
        n = fill(io->fd, &c->up);
        if (n == -1) {
            conn_free(c);
            return;
        }
        if (n == 0)
            c->client_eof = 1;
    }
    if (c->down.len > 0 && drain(io->fd, &c->down) != 0) {
        conn_free(c);
        return;
    }
    if (c->up_eof && c->down.len == 0 && !c->client_shut) {
        shutdown(io->fd, SHUT_WR);
        c->client_shut = 1;
    }
    if (c->client_eof && c->up.len == 0 && !c->up_shut) {
        shutdown(c->uio.fd, SHUT_WR);
        c->up_shut = 1;
    }
    if (c->client_shut && c->up_shut) {
        conn_free(c);
        return;
    }
    interest(c);
}

static void on_upstream(sbx_io *io, int events)
{
    conn *c = io->data;
    ssize_t n;
    if (c->st == C_DIAL) {
        int soerr = 0;
        socklen_t len = sizeof(soerr);
        if (getsockopt(io->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0 || soerr != 0) {
            sbx_info("preview", "preview %s: the dev server refused: %s", c->pv->name,
                     strerror(soerr ? soerr : errno));
            sbx_io_stop(&c->uio);
            reply(c, "502 Bad Gateway", NULL,
                  "sbx preview: nothing listens on the session's preview port\n");
            return;
        }
        sbx_timer_stop(c->pv->ps->loop, &c->timer);
        cmove(c, C_PIPE);
    }
    if ((events & (SBX_READ | SBX_ERROR)) && !c->up_eof && c->down.len < BUF_MAX) {
        n = fill(io->fd, &c->down);
        if (n == -1) {
            conn_free(c);
            return;
        }
        if (n == 0)
            c->up_eof = 1;
    }
    if (c->up.len > 0 && drain(io->fd, &c->up) != 0) {
        conn_free(c);
        return;
    }
    /* The client side moves on its own events; it gets one now so an EOF
     * or new bytes for it are passed on. */
    on_client(&c->cio, 0);
}

static void on_timeout(sbx_timer *t)
{
    conn *c = t->data;
    if (c->st == C_HEAD) {
        conn_free(c);
        return;
    }
    sbx_io_stop(&c->uio);
    reply(c, "504 Gateway Timeout", NULL, "sbx preview: the dev server did not answer\n");
}

static void on_accept(sbx_io *io, int events)
{
    preview *pv = io->data;
    (void)events;
    for (;;) {
        int fd = accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        conn *c;
        if (fd < 0)
            return;
        if (pv->nconns >= pv->ps->max_conns || !(c = calloc(1, sizeof(*c)))) {
            close(fd);
            continue;
        }
        c->pv = pv;
        c->next = pv->conns;
        if (pv->conns)
            pv->conns->prev = c;
        pv->conns = c;
        pv->nconns++;
        sbx_io_init(&c->cio, fd, on_client, c);
        sbx_io_init(&c->uio, -1, on_upstream, c);
        sbx_timer_init(&c->timer, on_timeout, c);
        sbx_timer_start(pv->ps->loop, &c->timer, HEAD_TIMEOUT_MS);
        interest(c);
    }
}

static preview *find(const sbx_previews *ps, const char *name)
{
    for (preview *pv = ps->list; pv; pv = pv->next)
        if (strcmp(pv->name, name) == 0)
            return pv;
    return NULL;
}

void sbx_preview_token(const sbx_previews *ps, const char *name, char tok[65])
{
    char msg[sizeof(ps->secret) + NAME_MAX_LEN + 8], hex[65];
    int n = snprintf(msg, sizeof(msg), "sbx-preview\n%s\n%s", ps->secret, name);
    sbx__sha256_hex(msg, (size_t)n, hex);
    snprintf(tok, 65, "%.*s", TOKEN_LEN, hex);
}

/* A listening socket on the first free port from the name's own place in
 * the range (the same name lands on the same port on every host that has
 * it free). */
static int listen_port(sbx_previews *ps, const char *name, int *port)
{
    unsigned h = 2166136261u;
    int range = ps->port_max - ps->port_min + 1;
    for (const char *p = name; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    for (int i = 0; i < range; i++) {
        int pt = ps->port_min + (int)((h + (unsigned)i) % (unsigned)range), one = 1;
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)pt),
                                 .sin_addr = ps->addr};
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -errno;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 && listen(fd, 64) == 0) {
            *port = pt;
            return fd;
        }
        close(fd);
    }
    return -EADDRINUSE;
}

int sbx_preview_open(sbx_previews *ps, const char *name, sbx_preview_dial_fn dial, void *arg,
                     char url[SBX_PREVIEW_URL_MAX], char *err, size_t errlen)
{
    preview *pv = find(ps, name);
    int fd, rc;
    if (strlen(name) > NAME_MAX_LEN) {
        snprintf(err, errlen, "preview name longer than %d characters", NAME_MAX_LEN);
        return -EINVAL;
    }
    if (!pv) {
        if (!(pv = calloc(1, sizeof(*pv))))
            return -ENOMEM;
        fd = listen_port(ps, name, &pv->port);
        if (fd < 0) {
            snprintf(err, errlen, "no free preview port in %d-%d on %s", ps->port_min,
                     ps->port_max, ps->bind_host);
            free(pv);
            return fd;
        }
        pv->ps = ps;
        snprintf(pv->name, sizeof(pv->name), "%s", name);
        sbx_preview_token(ps, name, pv->token);
        sbx_io_init(&pv->lio, fd, on_accept, pv);
        rc = sbx_io_set(ps->loop, &pv->lio, SBX_READ);
        if (rc) {
            close(fd);
            free(pv);
            snprintf(err, errlen, "watching the preview port: %s", strerror(-rc));
            return rc;
        }
        pv->next = ps->list;
        ps->list = pv;
        sbx_info("preview", "preview %s open on %s:%d", name, ps->bind_host, pv->port);
    }
    pv->dial = dial;
    pv->arg = arg;
    snprintf(url, SBX_PREVIEW_URL_MAX, "http://%s:%d/?sbx_token=%s", ps->public_host, pv->port,
             pv->token);
    return 0;
}

/* Closes pv and its connections; the memory goes at the next reap. */
static void preview_free(preview *pv)
{
    sbx_previews *ps = pv->ps;
    while (pv->conns)
        conn_free(pv->conns);
    sbx_io_stop(&pv->lio);
    close(pv->lio.fd);
    pv->lio.fd = -1;
    pv->next = ps->dead_previews;
    ps->dead_previews = pv;
    sbx_timer_start(ps->loop, &ps->reap, 0);
}

void sbx_preview_close(sbx_previews *ps, const char *name)
{
    for (preview **pp = &ps->list; *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->name, name) == 0) {
            preview *pv = *pp;
            *pp = pv->next;
            sbx_info("preview", "preview %s on port %d closed", name, pv->port);
            preview_free(pv);
            return;
        }
    }
}

int sbx_previews_new(const sbx_previews_cfg *cfg, sbx_previews **out, char *err, size_t errlen)
{
    sbx_previews *ps;
    if (cfg->port_min < 1 || cfg->port_max > 65535 || cfg->port_min > cfg->port_max) {
        snprintf(err, errlen, "preview ports %d-%d: give a range within 1-65535", cfg->port_min,
                 cfg->port_max);
        return -EINVAL;
    }
    if (!(ps = calloc(1, sizeof(*ps))))
        return -ENOMEM;
    ps->loop = cfg->loop;
    snprintf(ps->bind_host, sizeof(ps->bind_host), "%s", cfg->bind_host);
    snprintf(ps->public_host, sizeof(ps->public_host), "%s",
             cfg->public_host && *cfg->public_host ? cfg->public_host : cfg->bind_host);
    if (inet_pton(AF_INET, ps->bind_host, &ps->addr) != 1) {
        snprintf(err, errlen, "preview address %s: give an IPv4 address", cfg->bind_host);
        free(ps);
        return -EINVAL;
    }
    if (cfg->secret && *cfg->secret) {
        snprintf(ps->secret, sizeof(ps->secret), "%s", cfg->secret);
    } else {
        unsigned char r[32];
        if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r)) {
            snprintf(err, errlen, "getrandom: %s", strerror(errno));
            free(ps);
            return -EIO;
        }
        for (size_t i = 0; i < sizeof(r); i++)
            snprintf(ps->secret + 2 * i, 3, "%02x", r[i]);
    }
    ps->port_min = cfg->port_min;
    ps->port_max = cfg->port_max;
    ps->max_conns = cfg->max_conns > 0 ? cfg->max_conns : 64;
    sbx_timer_init(&ps->reap, on_reap, ps);
    *out = ps;
    return 0;
}

void sbx_previews_free(sbx_previews *ps)
{
    if (!ps)
        return;
    while (ps->list) {
        preview *pv = ps->list;
        ps->list = pv->next;
        preview_free(pv);
    }
    sbx_timer_stop(ps->loop, &ps->reap);
    on_reap(&ps->reap);
    free(ps);
}
