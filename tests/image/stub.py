"""Stub upstream for tests/image/run.sh: answers every request on the given loopback
ports with JSON naming the port, method, path and request headers. A path ending in
/slow answers after SLOW_SECONDS, so a request is in flight while the gateway drains;
its start is announced on stdout.

    python3 stub.py PORT [PORT ...]
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLOW_SECONDS = 2.0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        if self.path.split("?")[0].endswith("/slow"):
            print("slow request started", flush=True)
            time.sleep(SLOW_SECONDS)
        body = json.dumps(
            {
                "port": self.server.server_address[1],
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, fmt, *args):
        pass


def main():
    servers = [ThreadingHTTPServer(("127.0.0.1", int(p)), Handler) for p in sys.argv[1:]]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print("stub listening on " + " ".join(sys.argv[1:]), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
