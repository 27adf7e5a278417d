"""devserver.py — sbx-devserver's twin for sandboxes that see the host's
/usr (local, vmpool's agent, the Fly emulator) and so have python3 but not
our build tree; devserver.c is for images with no runtime. Same behaviour:

    python3 devserver.py PORT [DIR]

GET /name answers DIR/name when it exists, else "devserver PORT saw /name";
a WebSocket upgrade echoes every text frame back as "echo:<text>".
Standard library only: a job ships it in its `files`.
"""
import base64
import hashlib
import os
import socket
import sys
import threading

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B63"


def read_exact(c, n):
    b = b""
    while len(b) < n:
        chunk = c.recv(n - len(b))
        if not chunk:
            raise EOFError
        b += chunk
    return b


def websocket(c, key):
    acc = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
    c.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % acc).encode())
    while True:
        h = read_exact(c, 2)
        if h[0] & 0x0F == 8:
            return
        n = h[1] & 0x7F
        if n == 126:
            n = int.from_bytes(read_exact(c, 2), "big")
        mask = read_exact(c, 4) if h[1] & 0x80 else b"\0\0\0\0"
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(read_exact(c, n)))
        out = b"echo:" + data
        hdr = bytes([0x81, len(out)]) if len(out) < 126 else bytes([0x81, 126]) + len(
            out).to_bytes(2, "big")
        c.sendall(hdr + out)


def serve(c, port, root):
    buf = b""
    with c:
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = c.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1].split("?")[0]
                hdrs = {k.strip().lower(): v.strip() for k, _, v in
                        (l.partition(":") for l in lines[1:])}
                if hdrs.get("upgrade", "").lower() == "websocket":
                    return websocket(c, hdrs["sec-websocket-key"])
                name = os.path.join(root, path.lstrip("/") or "index.html")
                try:
                    with open(name, "rb") as f:
                        body = f.read() if ".." not in path else None
                except OSError:
                    body = None
                if body is None:
                    body = ("devserver %d saw %s\n" % (port, path)).encode()
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                          b"Content-Length: %d\r\n\r\n" % len(body) + body)
                if hdrs.get("connection", "").lower() == "close":
                    return        # HTTP/1.1: the client reads to the end
        except (EOFError, OSError):
            return


def main():
    port = int(sys.argv[1])
    root = sys.argv[2] if len(sys.argv) > 2 else "."
    # Both families where the host has IPv6: a Fly Machine is reached at its
    # 6PN address (IPv6 only; Fly's private-networking doc: bind to ::), the
    # others at an IPv4 one.
    try:
        ls = socket.socket(socket.AF_INET6)
        ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("::", port))
    except OSError:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("0.0.0.0", port))
    ls.listen(64)
    print("devserver.py listening on %d" % port, flush=True)
    while True:
        c, _ = ls.accept()
        threading.Thread(target=serve, args=(c, port, root), daemon=True).start()


if __name__ == "__main__":
    main()
