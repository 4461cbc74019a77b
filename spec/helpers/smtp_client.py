#!/usr/bin/env python3
"""Minimal SMTP submission test client on Python's smtplib.

usage: smtp_client.py HOST PORT --from ADDR --to ADDR [--to ADDR...]
                      [--user USER --password PASS] [--helo NAME]
                      [--subject TEXT] [--body TEXT]

Says EHLO (as NAME), logs in with smtp.login() when --user is given
(smtplib picks the mechanism from the server's AUTH keyword: CRAM-MD5,
PLAIN, then LOGIN), sends one message with sendmail() and QUITs.  Prints
"login <code>" after a login and "sent" once the message is accepted, and
exits non-zero with the error on stderr on any failure.
"""
import argparse
import smtplib
import sys


def main(argv):
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--from", dest="sender", required=True)
    ap.add_argument("--to", action="append", required=True)
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--helo", default="client.example")
    ap.add_argument("--subject", default="smtplib test")
    ap.add_argument("--body", default="Sent by smtplib through postern.")
    try:
        a = ap.parse_args(argv[1:])
    except SystemExit:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    msg = "From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\n\r\n%s\r\n" % (
        a.sender, a.to[0], a.subject, a.body)
    try:
        s = smtplib.SMTP(a.host, a.port, local_hostname=a.helo, timeout=15)
        code, _ = s.ehlo()
        if code != 250:
            raise RuntimeError("EHLO answered %d" % code)
        if a.user is not None:
            code, _ = s.login(a.user, a.password or "")
            print("login %d" % code)
        refused = s.sendmail(a.sender, a.to, msg)
        if refused:
            raise RuntimeError("recipients refused: %r" % (refused,))
        print("sent")
        sys.stdout.flush()
        try:
            s.quit()
        except Exception:  # noqa: BLE001 - the message is sent already
            pass
    except Exception as e:  # noqa: BLE001 - report anything
        print("smtp_client: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
