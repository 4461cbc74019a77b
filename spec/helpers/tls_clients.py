#!/usr/bin/env python3
"""Python's mail clients over TLS, for the specs.

usage: tls_clients.py KIND HOST PORT USER PASSWORD CAFILE

KIND: imap-ssl | imap-starttls | pop3-ssl | pop3-stls | smtp-ssl | smtp-starttls

The server certificate is verified against CAFILE, host name included
(HOST is also the name checked: 127.0.0.1 matches the test certificate's
IP SAN). IMAP: login, SELECT INBOX, FETCH 1, print the message. POP3:
login, RETR 1, print it. SMTP: login, send one message (Subject "tls
test via <KIND>"), print "sent". Any failure: the error on stderr, exit 1.
"""
import imaplib
import poplib
import smtplib
import socket
import ssl
import sys


def main(argv):
    if len(argv) != 7:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    kind, host, port, user, password, cafile = argv[1], argv[2], int(argv[3]), argv[4], argv[5], argv[6]
    socket.setdefaulttimeout(15)
    ctx = ssl.create_default_context(cafile=cafile)
    try:
        if kind.startswith("imap"):
            if kind == "imap-ssl":
                m = imaplib.IMAP4_SSL(host, port, ssl_context=ctx)
            else:
                m = imaplib.IMAP4(host, port)
                if "STARTTLS" not in m.capabilities:
                    raise RuntimeError("no STARTTLS in %r" % (m.capabilities,))
                m.starttls(ssl_context=ctx)
            print("capabilities: " + " ".join(m.capabilities))
            m.login(user, password)
            typ, data = m.select("INBOX")
            if typ != "OK":
                raise RuntimeError("SELECT failed: %r" % (data,))
            typ, data = m.fetch("1", "(RFC822)")
            if typ != "OK" or not data or not isinstance(data[0], tuple):
                raise RuntimeError("FETCH failed: %r" % (data,))
            sys.stdout.write(data[0][1].decode("utf-8", "replace"))
            m.logout()
        elif kind.startswith("pop3"):
            if kind == "pop3-ssl":
                p = poplib.POP3_SSL(host, port, context=ctx)
            else:
                p = poplib.POP3(host, port)
                p.stls(context=ctx)
            print("capa: " + " ".join(sorted(p.capa().keys())))
            p.user(user)
            p.pass_(password)
            _, lines, _ = p.retr(1)
            sys.stdout.write("\n".join(l.decode("utf-8", "replace") for l in lines) + "\n")
            p.quit()
        elif kind.startswith("smtp"):
            if kind == "smtp-ssl":
                s = smtplib.SMTP_SSL(host, port, context=ctx)
                s.ehlo("client.test")
            else:
                s = smtplib.SMTP(host, port)
                s.ehlo("client.test")
                if not s.has_extn("starttls"):
                    raise RuntimeError("no STARTTLS in EHLO")
                s.starttls(context=ctx)
                s.ehlo("client.test")
            print("ehlo: " + " ".join(sorted(s.esmtp_features.keys())))
            s.login(user, password)
            msg = "From: a@example.test\r\nTo: b@example.test\r\nSubject: tls test via %s\r\n\r\nhello\r\n" % kind
            s.sendmail("a@example.test", ["b@example.test"], msg)
            s.quit()
            print("sent")
        else:
            print("unknown kind " + kind, file=sys.stderr)
            return 2
    except Exception as e:  # noqa: BLE001 - report anything
        print("tls_clients: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
