"""preview_client.py — a browser at a session's preview URL, and the
browser-side helpers the other preview test scripts import from it.

    python3 preview_client.py URL TEXT

For the provider tests whose dev server is tests/devserver/devserver.py
running inside a sandbox (test_local.c, test_vmpool.c; test_fly.c through
fly_preview_check.py). Checks, in order: without the token, 401; with the
URL's token, 302 and a cookie; with the cookie, GET / answers 200 with TEXT
in the body (the dev server's index.html); a WebSocket with the cookie
echoes a message. Exits 0 when every check held, else 1 with the failing
check on stderr.

devserver.py does not import from here: it is shipped into sandboxes alone.
"""
import base64
import hashlib
import os
import socket
import sys
import urllib.parse

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B63"


def check(cond, what):
    if not cond:
        name = os.path.splitext(os.path.basename(sys.argv[0]))[0]
        sys.stderr.write("%s: FAILED: %s\n" % (name, what))
        sys.exit(1)


def read_head(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


def recv_exact(sock, n, buf=b""):
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("closed")
        buf += chunk
    return buf


def ws_read(sock, pending=b""):
    """One frame of at most 125 bytes (all our tests send)."""
    hdr = recv_exact(sock, 2, pending[:2])
    rest = pending[2:]
    ln = hdr[1] & 0x7F
    masked = hdr[1] & 0x80
    mask = recv_exact(sock, 4, rest[:4]) if masked else b""
    rest = rest[4:] if masked else rest
    payload = recv_exact(sock, ln, rest[:ln])
    if masked:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return payload


def ws_frame(payload, mask):
    if not mask:
        return bytes([0x81, len(payload)]) + payload
    key = os.urandom(4)
    return bytes([0x81, 0x80 | len(payload)]) + key + bytes(
        b ^ key[i % 4] for i, b in enumerate(payload))


def request(host, port, path, headers=""):
    """GET path; (socket, status line, lowercased headers, body). The body is
    read to Content-Length, not EOF: dev servers keep the connection alive."""
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(("GET %s HTTP/1.1\r\nHost: %s:%d\r\n%s\r\n" % (path, host, port, headers)).encode())
    return (s,) + read_response(s)


def read_response(s):
    """The next response on s: (status line, lowercased headers, body)."""
    head, rest = read_head(s)
    hdrs = {}
    for l in head.split("\r\n")[1:]:
        k, _, v = l.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    n = int(hdrs.get("content-length", "0"))
    body = recv_exact(s, n, rest)
    return head.split("\r\n")[0], hdrs, body.decode("utf-8", "replace")


def ws_open(host, port, path, headers=""):
    """A WebSocket upgrade of path; (socket, response head, bytes past it, key)."""
    s = socket.create_connection((host, port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n"
               % (path, host, port, key, headers)).encode())
    head, rest = read_head(s)
    return s, head, rest, key


def status_of(status_line):
    return int(status_line.split(" ")[1])


def browse(url, text):
    """The checks of this file's docstring, against url."""
    u = urllib.parse.urlsplit(url)
    host, port = u.hostname, u.port
    s, st, _, _ = request(host, port, "/", "Connection: close\r\n")
    s.close()
    check(status_of(st) == 401, "no token: 401, got %s" % st)
    s, st, hdrs, _ = request(host, port, "/?" + u.query, "Connection: close\r\n")
    s.close()
    check(status_of(st) == 302 and "set-cookie" in hdrs,
          "token: 302 with a cookie, got %s %r" % (st, hdrs))
    cookie = "Cookie: %s\r\n" % hdrs["set-cookie"].split(";")[0]
    s, st, _, body = request(host, port, "/", "Connection: close\r\n" + cookie)
    s.close()
    check(status_of(st) == 200 and text in body,
          "cookie: 200 with %r, got %s %r" % (text, st, body[:200]))
    s, head, rest, key = ws_open(host, port, "/ws", cookie)
    check(head.startswith("HTTP/1.1 101"), "websocket: 101, got %r" % head)
    acc = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
    check(acc in head, "Sec-WebSocket-Accept")
    s.sendall(ws_frame(b"hot-reload", True))
    try:
        got = ws_read(s, rest)
    except EOFError:
        check(False, "websocket: closed before the echo")
    s.close()
    check(got == b"echo:hot-reload", "websocket echo: %r" % got)


def main():
    browse(sys.argv[1], sys.argv[2])
    print("preview_client: all checks held")


if __name__ == "__main__":
    main()
