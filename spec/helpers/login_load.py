#!/usr/bin/env python3
"""IMAP login load for the process-model specs: THREADS clients log in
(LOGIN alice ok), log out and reconnect for SECONDS seconds. Prints one
JSON object: ok, failed, and the first few failures with their reason
(a refused connection, a missing greeting, a NO...).

usage: login_load.py PORT SECONDS [THREADS]"""
import json
import socket
import sys
import threading
import time

port, seconds = int(sys.argv[1]), float(sys.argv[2])
threads = int(sys.argv[3]) if len(sys.argv) > 3 else 4
lock = threading.Lock()
result = {"ok": 0, "failed": 0, "errors": []}


def read_line(f):
    line = f.readline()
    if not line:
        raise EOFError("connection closed")
    return line.decode("latin-1").rstrip("\r\n")


def one():
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        f = s.makefile("rb")
        greeting = read_line(f)
        if not greeting.startswith("* OK"):
            raise RuntimeError("greeting: " + greeting)
        s.sendall(b"a LOGIN alice ok\r\n")
        while True:
            line = read_line(f)
            if line.startswith("a "):
                break
        if not line.startswith("a OK"):
            raise RuntimeError("login: " + line)
        s.sendall(b"b LOGOUT\r\n")


def run():
    end = time.time() + seconds
    while time.time() < end:
        try:
            one()
            with lock:
                result["ok"] += 1
        except Exception as e:  # every failure is counted and shown
            with lock:
                result["failed"] += 1
                if len(result["errors"]) < 5:
                    result["errors"].append(repr(e))


ts = [threading.Thread(target=run) for _ in range(threads)]
for t in ts:
    t.start()
for t in ts:
    t.join()
print(json.dumps(result))
