/* devserver.c — a stand-in for an app's dev server, for the preview tests:
 * what `npm run dev` is to a user, this is to sbx's tests (issue 13).
 *
 *   sbx-devserver PORT [DIR]
 *
 * Listens on 0.0.0.0:PORT and forks per connection. GET /name answers the
 * file DIR/name when there is one (so a test sees the session's workspace),
 * else "devserver PORT saw /name"; a WebSocket upgrade (RFC 6455) is
 * answered 101 and every text frame is echoed back as "echo:<text>", as a
 * hot-reload channel would talk. Small and static-friendly (libc only), so
 * it can be copied into a test image that has no language runtime.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

static char root[512] = ".";
static int port;

/* SHA-1 (FIPS 180-4), only for Sec-WebSocket-Accept. */
static void sha1(const unsigned char *msg, size_t len, unsigned char out[20])
{
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    unsigned char block[64];
    uint64_t bits = (uint64_t)len * 8;
    size_t total = ((len + 8) / 64 + 1) * 64;
    for (size_t off = 0; off < total; off += 64) {
        uint32_t w[80], a, b, c, d, e;
        for (size_t i = 0; i < 64; i++) {
            size_t k = off + i;
            block[i] = k < len ? msg[k] : k == len ? 0x80 : 0;
            if (k >= total - 8)
                block[i] = (unsigned char)(bits >> (8 * (total - 1 - k)));
        }
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)block[4 * i] << 24 | (uint32_t)block[4 * i + 1] << 16 |
                   (uint32_t)block[4 * i + 2] << 8 | block[4 * i + 3];
        for (int i = 16; i < 80; i++) {
            uint32_t x = w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16];
            w[i] = x << 1 | x >> 31;
        }
        a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
        for (int i = 0; i < 80; i++) {
            uint32_t f, k, t;
            if (i < 20)
                f = (b & c) | (~b & d), k = 0x5A827999;
            else if (i < 40)
                f = b ^ c ^ d, k = 0x6ED9EBA1;
            else if (i < 60)
                f = (b & c) | (b & d) | (c & d), k = 0x8F1BBCDC;
            else
                f = b ^ c ^ d, k = 0xCA62C1D6;
            t = (a << 5 | a >> 27) + f + e + k + w[i];
            e = d, d = c, c = b << 30 | b >> 2, b = a, a = t;
        }
        h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e;
    }
    for (int i = 0; i < 20; i++)
        out[i] = (unsigned char)(h[i / 4] >> (24 - 8 * (i % 4)));
}

static void base64(const unsigned char *in, size_t n, char *out)
{
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0) |
                     (i + 2 < n ? in[i + 2] : 0);
        out[o++] = t[v >> 18 & 63];
        out[o++] = t[v >> 12 & 63];
        out[o++] = i + 1 < n ? t[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? t[v & 63] : '=';
    }
    out[o] = '\0';
}

static int read_full(int fd, unsigned char *b, size_t n)
{
    for (size_t got = 0; got < n;) {
        ssize_t r = read(fd, b + got, n - got);
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

static void websocket(int fd, const char *key)
{
    char in[128], acc[64];
    unsigned char dig[20], hdr[14], mask[4], payload[65536];
    snprintf(in, sizeof(in), "%s258EAFA5-E914-47DA-95CA-C5AB0DC11B63", key);
    sha1((unsigned char *)in, strlen(in), dig);
    base64(dig, 20, acc);
    dprintf(fd, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Accept: %s\r\n\r\n", acc);
    for (;;) {
        uint64_t len;
        if (read_full(fd, hdr, 2) != 0)
            return;
        if ((hdr[0] & 0x0F) == 8)
            return; /* close */
        len = hdr[1] & 0x7F;
        if (len == 126) {
            if (read_full(fd, hdr + 2, 2) != 0)
                return;
            len = (uint64_t)hdr[2] << 8 | hdr[3];
        } else if (len == 127) {
            return; /* not for a dev server's chatter */
        }
        if (len + 5 > sizeof(payload) || ((hdr[1] & 0x80) && read_full(fd, mask, 4) != 0) ||
            read_full(fd, payload + 5, (size_t)len) != 0)
            return;
        for (uint64_t i = 0; (hdr[1] & 0x80) && i < len; i++)
            payload[5 + i] ^= mask[i % 4];
        memcpy(payload, "echo:", 5);
        len += 5;
        hdr[0] = 0x81;
        if (len < 126) {
            hdr[1] = (unsigned char)len;
            if (write(fd, hdr, 2) != 2)
                return;
        } else {
            hdr[1] = 126, hdr[2] = (unsigned char)(len >> 8), hdr[3] = (unsigned char)len;
            if (write(fd, hdr, 4) != 4)
                return;
        }
        if (write(fd, payload, (size_t)len) != (ssize_t)len)
            return;
    }
}

static void serve(int fd)
{
    char head[16384], path[1024], file[2048], body[65536], *key;
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, head + n, sizeof(head) - 1 - n);
        if (r <= 0)
            return;
        n += (size_t)r;
        head[n] = '\0';
        char *end = strstr(head, "\r\n\r\n");
        if (!end)
            continue;
        if (sscanf(head, "%*s %1023s", path) != 1)
            return;
        key = strcasestr(head, "\nSec-WebSocket-Key:");
        if (key && strcasestr(head, "\nUpgrade: websocket")) {
            char k[64];
            if (sscanf(key + 19, " %63s", k) == 1)
                websocket(fd, k);
            return;
        }
        char *q = strchr(path, '?');
        if (q)
            *q = '\0';
        snprintf(file, sizeof(file), "%s/%s", root, path[1] ? path + 1 : "index.html");
        int len = -1, f = strstr(path, "..") ? -1 : open(file, O_RDONLY);
        if (f >= 0) {
            len = (int)read(f, body, sizeof(body));
            close(f);
        }
        if (len < 0)
            len = snprintf(body, sizeof(body), "devserver %d saw %s\n", port, path);
        dprintf(fd, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n",
                len);
        if (write(fd, body, (size_t)len) != len)
            return;
        /* A client that asked to close (HTTP/1.1 keep-alive otherwise)
         * reads to the end of the connection. */
        *end = '\0';
        if (strcasestr(head, "\nConnection: close"))
            return;
        n -= (size_t)(end + 4 - head);
        memmove(head, end + 4, n);
    }
}

int main(int argc, char **argv)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    int ls, one = 1;
    if (argc < 2) {
        fprintf(stderr, "usage: sbx-devserver PORT [DIR]\n");
        return 2;
    }
    port = atoi(argv[1]);
    if (argc > 2)
        snprintf(root, sizeof(root), "%s", argv[2]);
    signal(SIGCHLD, SIG_IGN);
    ls = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sa.sin_port = htons((uint16_t)port);
    if (bind(ls, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(ls, 64) != 0) {
        perror("sbx-devserver: bind");
        return 1;
    }
    printf("sbx-devserver listening on %d\n", port);
    fflush(stdout);
    for (;;) {
        int fd = accept(ls, NULL, NULL);
        if (fd < 0)
            continue;
        if (fork() == 0) {
            close(ls);
            serve(fd);
            _exit(0);
        }
        close(fd);
    }
}
