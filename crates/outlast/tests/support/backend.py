"""A test backend: answers GET with "backend SITE", 501 to other methods (as python's
http.server does), threads per request, and a listen backlog like nginx's (511) rather
than socketserver's 5, so a burst of requests is queued, not refused.

With a third argument "stock" it keeps python's http.server defaults instead: HTTP/1.0
(a connection per request) and a listen queue of 5, as `python3 -m http.server` runs.

With an argument "log=PATH" it appends the wall-clock time (seconds since the epoch) of
every GET it answers and its path to PATH, a line each, so a test can tell which backend
served its clients when (health checks come too: they ask for "/")."""
import http.server
import sys
import threading
import time

port, site = int(sys.argv[1]), sys.argv[2]
stock = "stock" in sys.argv[3:]
log_path = next((a[4:] for a in sys.argv[3:] if a.startswith("log=")), None)
log = open(log_path, "a", buffering=1) if log_path else None
log_lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0" if stock else "HTTP/1.1"

    def do_GET(self):
        if log:
            with log_lock:
                log.write("%.6f %s\n" % (time.time(), self.path))
        body = ("backend %s\n" % site).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 5 if stock else 511
    daemon_threads = True


Server(("127.0.0.1", port), Handler).serve_forever()
