"""preview_client.py — a browser at a session's preview URL, for the
provider tests whose dev server is tests/devserver/devserver.py running
inside a sandbox (test_local.c).

    python3 preview_client.py URL TEXT

Checks, in order: without the token, 401; with the URL's token, 302 and a
cookie; with the cookie, GET / answers 200 with TEXT in the body (the dev
server's index.html); a WebSocket with the cookie echoes a message. Exits 0
when every check held, else 1 with the failing check on stderr.
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
        sys.stderr.write("preview_client: FAILED: %s\n" % what)
        sys.exit(1)


def read_head(c):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = c.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


def get(host, port, path, cookie=None):
    c = socket.create_connection((host, port), timeout=10)
    c.sendall(("GET %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n%s\r\n"
               % (path, host, port, "Cookie: %s\r\n" % cookie if cookie else "")).encode())
    # Until Content-Length, not EOF: the dev servers keep the connection
    # alive whatever the request says.
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = c.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    while len(body) < int(hdrs.get("content-length", "0")):
        chunk = c.recv(65536)
        if not chunk:
            break
        body += chunk
    c.close()
    return int(lines[0].split(" ")[1]), hdrs, body.decode("utf-8", "replace")


def ws_echo(host, port, cookie, text):
    c = socket.create_connection((host, port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    c.sendall(("GET /ws HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nCookie: %s\r\n\r\n"
               % (host, port, key, cookie)).encode())
    head, rest = read_head(c)
    check(head.startswith("HTTP/1.1 101"), "websocket: 101, got %r" % head)
    acc = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
    check(acc in head, "Sec-WebSocket-Accept")
    m = os.urandom(4)
    payload = text.encode()
    c.sendall(bytes([0x81, 0x80 | len(payload)]) + m +
              bytes(b ^ m[i % 4] for i, b in enumerate(payload)))
    while len(rest) < 2 or len(rest) < 2 + rest[1]:
        chunk = c.recv(4096)
        check(chunk, "websocket: closed before the echo")
        rest += chunk
    c.close()
    return rest[2:2 + rest[1]].decode()


def main():
    url, text = sys.argv[1], sys.argv[2]
    u = urllib.parse.urlsplit(url)
    host, port = u.hostname, u.port
    st, _, _ = get(host, port, "/")
    check(st == 401, "no token: 401, got %d" % st)
    st, hdrs, _ = get(host, port, "/?" + u.query)
    check(st == 302 and "set-cookie" in hdrs, "token: 302 with a cookie, got %d %r" % (st, hdrs))
    cookie = hdrs["set-cookie"].split(";")[0]
    st, _, body = get(host, port, "/", cookie)
    check(st == 200 and text in body, "cookie: 200 with %r, got %d %r" % (text, st, body[:200]))
    got = ws_echo(host, port, cookie, "hot-reload")
    check(got == "echo:hot-reload", "websocket echo: %r" % got)
    print("preview_client: all checks held")


if __name__ == "__main__":
    main()
