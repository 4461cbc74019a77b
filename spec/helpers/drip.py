#!/usr/bin/env python3
"""A TCP relay that drips one direction (specs only).

usage: drip.py TARGET_PORT RECORD_FILE [CHUNK] [DELAY]

Listens on 127.0.0.1 (any free port; "READY <port>" is the first line of
RECORD_FILE), and for each connection relays to 127.0.0.1:TARGET_PORT:
client -> target in slices of CHUNK bytes (default 1) with DELAY seconds
(default 0.001) between them, each slice its own write (TCP_NODELAY), so
TLS records and handshake messages arrive split at every possible byte;
target -> client unchanged. SIGTERM ends the process.
"""
import os
import select
import signal
import socket
import sys
import threading
import time


def pump_drip(src, dst, chunk, delay):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            for i in range(0, len(data), chunk):
                dst.sendall(data[i:i + chunk])
                time.sleep(delay)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def serve(c, target, chunk, delay):
    try:
        u = socket.create_connection(("127.0.0.1", target))
    except OSError:
        c.close()
        return
    for s in (c, u):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t1 = threading.Thread(target=pump_drip, args=(c, u, chunk, delay), daemon=True)
    t2 = threading.Thread(target=pump, args=(u, c), daemon=True)
    t1.start()
    t2.start()
    t1.join()
    t2.join()
    c.close()
    u.close()


def main():
    target = int(sys.argv[1])
    rec = open(sys.argv[2], "a")
    chunk = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    delay = float(sys.argv[4]) if len(sys.argv) > 4 else 0.001
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    rec.write("READY %d\n" % srv.getsockname()[1])
    rec.flush()
    while True:
        c, _ = srv.accept()
        threading.Thread(target=serve, args=(c, target, chunk, delay), daemon=True).start()


if __name__ == "__main__":
    main()
