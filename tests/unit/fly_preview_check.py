"""fly_preview_check.py — the browser of test_fly.c's preview test.

    python3 fly_preview_check.py URL TEXT

The dev server (tests/devserver/devserver.py) runs inside the session's Fly
Machine (the emulator's), reached by the worker's proxy at its private_ip.
This client uses preview_check.py's helpers: no token is 401, the URL's
token is a 302 with the cookie, then with the cookie GET / has TEXT (the
workspace's index.html) and a WebSocket echoes. Exits 0 when every check
held (the failing check's text on stderr otherwise).
"""
import base64
import os
import socket
import sys
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from preview_check import check, read_head, request, ws_frame, ws_read  # noqa: E402


def main():
    url, text = sys.argv[1], sys.argv[2]
    u = urllib.parse.urlsplit(url)
    host, port = u.hostname, u.port
    token = urllib.parse.parse_qs(u.query)["sbx_token"][0]
    cookie = "Cookie: sbx_preview_%d=%s\r\n" % (port, token)

    s, status, h, body = request(host, port, "/")
    check(status.split(" ")[1] == "401", "no token: 401, got %s" % status)
    s, status, h, body = request(host, port, "/?sbx_token=%s" % token)
    check(status.split(" ")[1] == "302", "token: 302, got %s" % status)
    s, status, h, body = request(host, port, "/index.html", cookie)
    check(status.split(" ")[1] == "200" and text in body, "dev server: %s %r" % (status, body))
    s = socket.create_connection((host, port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n"
               % (key, cookie)).encode())
    head, rest = read_head(s)
    check(head.startswith("HTTP/1.1 101"), "websocket: 101, got %r" % head)
    s.sendall(ws_frame(b"hot-reload", True))
    got = ws_read(s, rest)
    check(got == b"echo:hot-reload", "websocket echo: %r" % got)
    s.close()
    print("fly_preview_check: all checks held")


if __name__ == "__main__":
    main()
