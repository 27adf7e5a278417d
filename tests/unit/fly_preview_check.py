"""fly_preview_check.py — the browser of test_fly.c's preview test.

    python3 fly_preview_check.py URL TEXT

The dev server (tests/devserver/devserver.py) runs inside the session's Fly
Machine (the emulator's), reached by the worker's proxy at its private_ip.
The checks are preview_client.py's: no token is 401, the URL's token is a
302 with the cookie, then with the cookie GET / has TEXT (the workspace's
index.html) and a WebSocket echoes. Exits 0 when every check held (the
failing check's text on stderr otherwise).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from preview_client import browse  # noqa: E402


def main():
    browse(sys.argv[1], sys.argv[2])
    print("fly_preview_check: all checks held")


if __name__ == "__main__":
    main()
