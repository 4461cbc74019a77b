#!/usr/bin/env python3
"""spec/helpers/http_server.py: a small scriptable HTTP/1.1 server for specs
(driven by spec/helpers/http_server.lua).

    python3 http_server.py DIR [--tls CERT KEY]

DIR/routes.json (read again for every request, so a spec may change it
while the server runs):

    {"routes": [{"path": "/auth", "method": "POST", "body_contains": "alice",
                 "status": 200, "headers": {"X-A": "1"}, "body": "...",
                 "body_size": 2000000, "delay": 1.0, "close": false}, ...],
     "default": {"status": 404, "body": "no route"}}

The first route whose path (exact, without the query string), method and
body_contains all match answers; "echo": true answers the request itself as
JSON ({"method", "path", "query", "headers", "body"}).

DIR/record.jsonl gets one JSON object per line, written at once:
    {"event": "connect", "conn": 1}
    {"event": "request", "conn": 1, "method": "GET", "path": "/x",
     "query": "a=1", "headers": [["Host", "..."], ...], "body": "..."}
    {"event": "close", "conn": 1}
DIR/ready holds the port once listening. HTTP/1.1 keep-alive: a connection
serves requests until the client closes it (or a route says "close").
"""
import json
import os
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DIR = sys.argv[1]
TLS = None
if len(sys.argv) >= 5 and sys.argv[2] == "--tls":
    TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    TLS.load_cert_chain(sys.argv[3], sys.argv[4])

lock = threading.Lock()
counter = [0]
record_file = open(os.path.join(DIR, "record.jsonl"), "a", encoding="utf-8")


def record(obj):
    with lock:
        record_file.write(json.dumps(obj) + "\n")
        record_file.flush()


def routes():
    try:
        with open(os.path.join(DIR, "routes.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        if TLS is not None:
            self.request = TLS.wrap_socket(self.request, server_side=True)
        with lock:
            counter[0] += 1
            self.conn_id = counter[0]
        record({"event": "connect", "conn": self.conn_id})
        super().setup()

    def finish(self):
        try:
            super().finish()
        finally:
            record({"event": "close", "conn": self.conn_id})

    def log_message(self, fmt, *args):
        sys.stderr.write("%s\n" % (fmt % args))

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        path, _, query = self.path.partition("?")
        req = {"event": "request", "conn": self.conn_id, "method": self.command,
               "path": path, "query": query, "headers": [[k, v] for k, v in self.headers.items()],
               "body": body}
        record(req)
        conf = routes()
        answer = None
        for r in conf.get("routes", []):
            if r.get("path", path) != path:
                continue
            if r.get("method", self.command) != self.command:
                continue
            if r.get("body_contains") is not None and r["body_contains"] not in body:
                continue
            answer = r
            break
        if answer is None:
            answer = conf.get("default", {"status": 404, "body": "no route\n"})
        if answer.get("delay"):
            time.sleep(float(answer["delay"]))
        if answer.get("echo"):
            out = json.dumps({"method": self.command, "path": path, "query": query,
                              "headers": dict((k.lower(), v) for k, v in self.headers.items()),
                              "body": body}).encode()
        elif answer.get("body_size"):
            out = b"x" * int(answer["body_size"])
        else:
            out = answer.get("body", "").encode()
        self.send_response(int(answer.get("status", 200)))
        for k, v in answer.get("headers", {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(out)))
        if answer.get("close"):
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = handle_any


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main():
    srv = Server(("127.0.0.1", 0), Handler)
    port = srv.server_address[1]
    with open(os.path.join(DIR, "ready.tmp"), "w") as f:
        f.write(str(port))
    os.rename(os.path.join(DIR, "ready.tmp"), os.path.join(DIR, "ready"))
    srv.serve_forever()


if __name__ == "__main__":
    main()
