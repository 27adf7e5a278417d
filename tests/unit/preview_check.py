"""preview_check.py — the client and the dev server of test_preview.c.

Started by the test with the proxy's URL and a port for the dev server: it
serves HTTP and a WebSocket echo on that port (the "dev server" inside the
sandbox), then talks to the proxy as a browser would, and exits 0 when every
check held (the failing check's text on stderr otherwise). The browser
side is preview_client.py's helpers.
"""
import base64
import hashlib
import os
import socket
import sys
import threading
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from preview_client import (GUID, check, read_head, read_response, request,  # noqa: E402
                            ws_frame, ws_open, ws_read)


def serve(conn):
    with conn:
        while True:
            head, rest = read_head(conn)
            if not head:
                return
            lines = head.split("\r\n")
            hdrs = {k.lower(): v.strip() for k, v in
                    (l.split(":", 1) for l in lines[1:] if ":" in l)}
            path = lines[0].split(" ")[1]
            if hdrs.get("upgrade", "").lower() == "websocket":
                acc = base64.b64encode(hashlib.sha1(
                    hdrs["sec-websocket-key"].encode() + GUID).digest()).decode()
                conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                              "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n"
                              % acc).encode())
                while True:
                    try:
                        msg = ws_read(conn, rest)
                    except EOFError:
                        return
                    rest = b""
                    conn.sendall(ws_frame(b"echo:" + msg, False))
            body = ("dev server saw %s cookie=%s" % (path, hdrs.get("cookie", ""))).encode()
            if path == "/big":
                body = b"y" * 300000
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def dev_server(port):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(16)

    def loop():
        while True:
            c, _ = ls.accept()
            threading.Thread(target=serve, args=(c,), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()


def main():
    url, dev_port = sys.argv[1], int(sys.argv[2])
    u = urllib.parse.urlsplit(url)
    host, port = u.hostname, u.port
    token = urllib.parse.parse_qs(u.query)["sbx_token"][0]
    cookie = "sbx_preview_%d" % port

    s, status, h, body = request(host, port, "/")
    check(status.split(" ")[1] == "401", "no token: 401, got %s" % status)
    s, status, h, body = request(host, port, "/app?x=1&sbx_token=" + "0" * 32)
    check(status.split(" ")[1] == "401", "wrong token: 401, got %s" % status)
    s, status, h, body = request(host, port, "/app?x=1&sbx_token=%s&y=2" % token)
    check(status.split(" ")[1] == "302", "token: 302, got %s" % status)
    check(h.get("location") == "/app?x=1&y=2", "location without the token: %r" % h)
    check(h.get("set-cookie", "").startswith("%s=%s;" % (cookie, token)), "cookie set: %r" % h)
    check("HttpOnly" in h["set-cookie"], "HttpOnly")
    # Nothing listens yet: 502, said plainly.
    s, status, h, body = request(host, port, "/", "Cookie: %s=%s\r\n" % (cookie, token))
    check(status.split(" ")[1] == "502", "no dev server: 502, got %s" % status)
    dev_server(dev_port)
    # The browser comes back with the cookie: the dev server answers, twice on
    # one keep-alive connection.
    s = socket.create_connection((host, port), timeout=10)
    for i in range(2):
        s.sendall(("GET /page%d HTTP/1.1\r\nHost: x\r\nCookie: a=b; %s=%s\r\n\r\n"
                   % (i, cookie, token)).encode())
        status, _, body = read_response(s)
        check(status.startswith("HTTP/1.1 200"), "cookie: 200, got %r" % status)
        check(body.startswith("dev server saw /page%d" % i), "proxied body: %r" % body)
    s.close()
    # A WebSocket (hot reload), with the cookie, then with the token in its URL.
    for path, hdr in (("/ws", "Cookie: %s=%s\r\n" % (cookie, token)),
                      ("/ws?sbx_token=%s" % token, "")):
        s, head, rest, _ = ws_open(host, port, path, hdr)
        check(head.startswith("HTTP/1.1 101"), "websocket %s: 101, got %r" % (path, head))
        for msg in (b"ping", b"hello again"):
            s.sendall(ws_frame(msg, True))
            got = ws_read(s, rest)
            rest = b""
            check(got == b"echo:" + msg, "websocket echo: %r" % got)
        s.close()
    # A body larger than the proxy's buffers arrives whole.
    s, status, h, body = request(host, port, "/big", "Cookie: %s=%s\r\n" % (cookie, token))
    check(status.split(" ")[1] == "200" and body == "y" * 300000,
          "300 kB body: %s, %d bytes" % (status, len(body)))
    print("preview_check: all checks held")


if __name__ == "__main__":
    main()
