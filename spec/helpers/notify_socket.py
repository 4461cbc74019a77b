#!/usr/bin/env python3
"""A stand-in for systemd's notification socket (specs only).

usage: notify_socket.py ADDRESS RECORD_FILE

Binds an AF_UNIX datagram socket at ADDRESS, a path or "@name" for the
abstract namespace (as in $NOTIFY_SOCKET; luasocket cannot bind those),
writes "READY" as the first line of RECORD_FILE once bound, then one line
per datagram received, its newlines written as a backslash and "n".
SIGTERM ends the process.
"""
import socket
import sys

address, record = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("\0" + address[1:] if address.startswith("@") else address)
with open(record, "a", buffering=1) as f:
    f.write("READY\n")
    while True:
        data = s.recv(4096).decode("utf-8", "replace")
        f.write(data.replace("\\", "\\\\").replace("\n", "\\n") + "\n")
