#!/usr/bin/env python3
"""Minimal IMAP test client.

usage: imap_client.py HOST PORT USER PASSWORD [--starttls|--ssl]

Logs in, SELECTs INBOX, FETCHes message 1 (RFC822) and prints it to
stdout.  Exits non-zero with the error on stderr on any failure.
TLS certificates are not verified (test servers use self-signed ones).
"""
import imaplib
import socket
import ssl
import sys


def main(argv):
    args = [a for a in argv[1:] if not a.startswith("--")]
    flags = [a for a in argv[1:] if a.startswith("--")]
    if len(args) != 4 or any(f not in ("--starttls", "--ssl") for f in flags) \
            or len(flags) > 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    host, port, user, password = args[0], int(args[1]), args[2], args[3]
    socket.setdefaulttimeout(15)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        if "--ssl" in flags:
            m = imaplib.IMAP4_SSL(host, port, ssl_context=ctx)
        else:
            m = imaplib.IMAP4(host, port)
            if "--starttls" in flags:
                m.starttls(ssl_context=ctx)
        m.login(user, password)
        typ, data = m.select("INBOX")
        if typ != "OK":
            raise imaplib.IMAP4.error("SELECT failed: %r" % (data,))
        typ, data = m.fetch("1", "(RFC822)")
        if typ != "OK" or not data or not isinstance(data[0], tuple):
            raise imaplib.IMAP4.error("FETCH failed: %r" % (data,))
        sys.stdout.write(data[0][1].decode("utf-8", "replace"))
        sys.stdout.flush()
        try:
            m.logout()
        except Exception:
            pass
    except Exception as e:  # noqa: BLE001 - report anything
        print("imap_client: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
