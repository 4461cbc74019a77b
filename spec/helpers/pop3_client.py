#!/usr/bin/env python3
"""Minimal POP3 test client.

usage: pop3_client.py HOST PORT USER PASSWORD [--starttls|--ssl]

Logs in (USER/PASS), RETRs message 1 and prints it to stdout.  Exits
non-zero with the error on stderr on any failure.  TLS certificates are
not verified (test servers use self-signed ones).
"""
import poplib
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
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        if "--ssl" in flags:
            p = poplib.POP3_SSL(host, port, timeout=15, context=ctx)
        else:
            p = poplib.POP3(host, port, timeout=15)
            if "--starttls" in flags:
                p.stls(context=ctx)
        p.user(user)
        p.pass_(password)
        _resp, lines, _octets = p.retr(1)
        sys.stdout.write("\r\n".join(l.decode("utf-8", "replace") for l in lines) + "\r\n")
        sys.stdout.flush()
        try:
            p.quit()
        except Exception:
            pass
    except Exception as e:  # noqa: BLE001 - report anything
        print("pop3_client: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
