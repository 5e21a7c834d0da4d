#!/usr/bin/env python3
"""Hold N idle keep-alive connections to 127.0.0.1:PORT for at most HOLD seconds.

  idle.py PORT N HOLD READY_FILE

Each connection sends one `GET /` and reads its answer (so the proxy has served it and
keeps it open as an idle keep-alive connection), then stays silent. When all N are
open, the count is written to READY_FILE; the process exits after HOLD seconds or when
killed, closing them all.
"""
import socket
import sys
import time

port, n, hold, ready = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
deadline = time.monotonic() + hold
req = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
conns = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(req)
    buf = b""
    # The answers are small (2-byte body): read until the head and the body are in.
    while b"\r\n\r\n" not in buf or not buf.endswith(b"ok"):
        chunk = s.recv(4096)
        if not chunk:
            sys.exit(f"idle.py: connection closed by 127.0.0.1:{port} after {len(conns)} connections")
        buf += chunk
        if time.monotonic() > deadline:
            sys.exit("idle.py: timed out opening connections")
    if not buf.startswith(b"HTTP/1.1 200"):
        sys.exit(f"idle.py: unexpected answer: {buf[:80]!r}")
    conns.append(s)
with open(ready, "w") as f:
    f.write(f"{len(conns)}\n")
while time.monotonic() < deadline:
    time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
