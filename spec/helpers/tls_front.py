#!/usr/bin/env python3
"""A TLS front for the plaintext mock backends (specs only).

usage: tls_front.py --target PORT --cert PEM --key KEY --record FILE
                    [--mode implicit|starttls] [--proto imap|pop3|smtp]
                    [--no-starttls] [--inject] [--port N]

Listens on 127.0.0.1 (--port, 0 = any free port) and, per connection:

  implicit  TLS handshake first, then connect to 127.0.0.1:TARGET and relay
            both ways (the mock's greeting passes through).
  starttls  speak the protocol's plaintext prelude itself (greeting,
            CAPABILITY / CAPA / EHLO with STARTTLS, the STARTTLS command),
            then the TLS handshake, then connect to the mock, swallow the
            mock's greeting (after STARTTLS the client expects none) and
            relay. Any other plaintext command gets a refusal.
            --no-starttls: STARTTLS is neither offered nor accepted.
            --inject: the STARTTLS go-ahead is followed, in the same write,
            by a forged plaintext line (response injection).

Record file (one line each, flushed): "READY <port>" first, then
  CONNECT <id>
  <id> PLAIN <line>              a line received in plaintext (before TLS)
  <id> FIRST <hex>               the first bytes where the handshake should start
                                 ("16 03 01" for a ClientHello)
  <id> TLS <version> <cipher> sni=<name or ->
  <id> TLSFAIL <reason>
  <id> CLOSE
SIGTERM ends the process.
"""
import argparse
import os
import select
import signal
import socket
import ssl
import sys
import threading

lock = threading.Lock()
rec = None


def record(line):
    with lock:
        rec.write(line + "\n")
        rec.flush()


INJECT = {
    "imap": b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN INJECTED] injected\r\n",
    "pop3": b"+OK injected\r\n",
    "smtp": b"250 INJECTED\r\n",
}


def readline(sock, buf):
    """-> (line without CRLF or None at EOF, rest of buf)"""
    while b"\n" not in buf:
        data = sock.recv(4096)
        if not data:
            return None, buf
        buf += data
    line, _, rest = buf.partition(b"\n")
    return line.rstrip(b"\r"), rest


def prelude(conn, cid, args):
    """The plaintext part of a STARTTLS server. True once STARTTLS was
    accepted (the go-ahead sent), False when the client went away."""
    proto, offer = args.proto, not args.no_starttls
    if proto == "imap":
        caps = b"IMAP4rev1 " + (b"STARTTLS LOGINDISABLED" if offer else b"LOGINDISABLED")
        conn.sendall(b"* OK [CAPABILITY " + caps + b"] front ready\r\n")
    elif proto == "pop3":
        conn.sendall(b"+OK front ready\r\n")
    else:
        conn.sendall(b"220 front.test ESMTP front\r\n")
    buf = b""
    while True:
        line, buf = readline(conn, buf)
        if line is None:
            return False
        record("%d PLAIN %s" % (cid, line.decode("latin-1")))
        words = line.split()
        if proto == "imap":
            tag = words[0] if words else b"*"
            verb = words[1].upper() if len(words) > 1 else b""
            if verb == b"STARTTLS" and offer:
                conn.sendall(tag + b" OK Begin TLS negotiation now\r\n" + (INJECT["imap"] if args.inject else b""))
                return True
            if verb == b"CAPABILITY":
                conn.sendall(b"* CAPABILITY " + caps + b"\r\n" + tag + b" OK done\r\n")
            elif verb == b"LOGOUT":
                conn.sendall(b"* BYE bye\r\n" + tag + b" OK bye\r\n")
                return False
            else:
                conn.sendall(tag + b" NO [PRIVACYREQUIRED] plaintext refused\r\n")
        elif proto == "pop3":
            verb = words[0].upper() if words else b""
            if verb == b"STLS" and offer:
                conn.sendall(b"+OK Begin TLS\r\n" + (INJECT["pop3"] if args.inject else b""))
                return True
            if verb == b"CAPA":
                conn.sendall(b"+OK\r\n" + (b"STLS\r\n" if offer else b"") + b"TOP\r\n.\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"+OK bye\r\n")
                return False
            else:
                conn.sendall(b"-ERR plaintext refused\r\n")
        else:
            verb = words[0].upper() if words else b""
            if verb == b"STARTTLS" and offer:
                conn.sendall(b"220 2.0.0 Ready to start TLS\r\n" + (INJECT["smtp"] if args.inject else b""))
                return True
            if verb in (b"EHLO", b"HELO"):
                conn.sendall(b"250-front.test\r\n250-PIPELINING\r\n" + (b"250-STARTTLS\r\n" if offer else b"")
                             + b"250 8BITMIME\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"221 bye\r\n")
                return False
            else:
                conn.sendall(b"530 5.7.0 Must issue a STARTTLS command first\r\n")


def swallow_greeting(up, proto):
    buf = b""
    while True:
        line, buf = readline(up, buf)
        if line is None:
            return None
        if proto != "smtp" or line[3:4] != b"-":
            return buf


def relay(a, b, first_to_a=b""):
    """a: the TLS side, b: the mock; until either side closes"""
    if first_to_a:
        a.sendall(first_to_a)
    socks = [a, b]
    while True:
        ready = [a] if a.pending() else select.select(socks, [], [], 600)[0]
        if not ready:
            return
        for s in ready:
            try:
                data = s.recv(65536)
            except (ssl.SSLError, OSError):
                return
            if not data:
                return
            (b if s is a else a).sendall(data)


def serve(raw, cid, ctx, args):
    conn = raw
    up = None
    try:
        raw.settimeout(30)
        if args.mode == "starttls":
            if not prelude(raw, cid, args):
                return
        # what the client sends first where TLS should begin (a ClientHello: 16 03 ..)
        first = raw.recv(3, socket.MSG_PEEK)
        record("%d FIRST %s" % (cid, first.hex(" ") if first else "EOF"))
        try:
            conn = ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as e:
            record("%d TLSFAIL %s" % (cid, str(e).replace("\n", " ")))
            return
        sni = getattr(conn, "sni_name", None) or "-"
        record("%d TLS %s %s sni=%s" % (cid, conn.version(), conn.cipher()[0], sni))
        peer = conn.getpeercert()
        if peer:
            cn = [v for rdn in peer.get("subject", ()) for (k, v) in rdn if k == "commonName"]
            record("%d PEER %s" % (cid, cn[0] if cn else "?"))
        conn.settimeout(None)
        up = socket.create_connection(("127.0.0.1", args.target), timeout=10)
        up.settimeout(None)
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rest = b""
        if args.mode == "starttls":
            rest = swallow_greeting(up, args.proto)
            if rest is None:
                return
        relay(conn, up, rest)
    except (ssl.SSLError, OSError):
        pass
    finally:
        for s in (up, conn):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        record("%d CLOSE" % cid)


def main():
    global rec
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", type=int, required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--record", required=True)
    ap.add_argument("--mode", choices=("implicit", "starttls"), default="implicit")
    ap.add_argument("--proto", choices=("imap", "pop3", "smtp"), default="imap")
    ap.add_argument("--no-starttls", action="store_true")
    ap.add_argument("--inject", action="store_true")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--client-ca", help="require a client certificate signed by this CA")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    rec = open(args.record, "a")

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(args.cert, args.key)
    if args.client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(args.client_ca)

    def on_sni(sslsock, name, _ctx):
        sslsock.sni_name = name
    ctx.sni_callback = on_sni

    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", args.port))
    srv.listen(64)
    record("READY %d" % srv.getsockname()[1])
    cid = 0
    while True:
        raw, _ = srv.accept()
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cid += 1
        record("CONNECT %d" % cid)
        threading.Thread(target=serve, args=(raw, cid, ctx, args), daemon=True).start()


if __name__ == "__main__":
    main()
