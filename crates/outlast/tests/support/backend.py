"""A test backend: answers GET with "backend SITE", 501 to other methods (as python's
http.server does), threads per request, and a listen backlog like nginx's (511) rather
than socketserver's 5, so a burst of requests is queued, not refused."""
import http.server
import sys

port, site = int(sys.argv[1]), sys.argv[2]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = ("backend %s\n" % site).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 511
    daemon_threads = True


Server(("127.0.0.1", port), Handler).serve_forever()
