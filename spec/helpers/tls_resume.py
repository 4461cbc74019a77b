#!/usr/bin/env python3
"""TLS session resumption for the specs: one full handshake, then N more
connections that offer its session (a TLS 1.2 session ticket).

usage: tls_resume.py HOST PORT CAFILE N

Prints one line per connection: "<local port> full|resumed", the first
one being the full handshake whose ticket the others offer. Each
connection reads the server's first line, sends "a LOGOUT" and closes."""
import socket
import ssl
import sys


def connect(ctx, host, port, session=None):
    raw = socket.create_connection((host, port), timeout=10)
    s = ctx.wrap_socket(raw, server_hostname=host, session=session)
    s.recv(1024)  # the greeting (and, in TLS 1.2, the ticket came with the handshake)
    line = "%d %s" % (s.getsockname()[1], "resumed" if s.session_reused else "full")
    sess = s.session
    s.sendall(b"a LOGOUT\r\n")
    try:
        s.recv(1024)
    except OSError:
        pass
    s.close()
    return line, sess


def main(argv):
    host, port, cafile, n = argv[1], int(argv[2]), argv[3], int(argv[4])
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    line, sess = connect(ctx, host, port)
    print(line, flush=True)
    for _ in range(n):
        line, _ = connect(ctx, host, port, sess)
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
