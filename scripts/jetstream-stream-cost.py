#!/usr/bin/env python3
# What a JetStream stream per dchan topic would cost (issue 16): create N
# memory streams (interest retention, one subject each: the per-topic
# mapping of literate/07-scaling.md) through one raw NATS connection, 64
# requests in flight, and report the creation rate and the server's
# resident memory per stream. Compare with `dchan bench topics`.
#
#   nats-server -a 127.0.0.1 -p 17961 -js -sd "$(mktemp -d)" &
#   scripts/jetstream-stream-cost.py 17961 3000 $!
#
# Needs only Python 3 and a nats-server started with -js; reads the
# server's RSS from /proc/PID/status (the server must run on this machine).
import json, socket, sys, time
port, n, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"): return int(l.split()[1]) * 1024
s = socket.create_connection(("127.0.0.1", port))
f = s.makefile("rb")
f.readline()  # INFO
s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB _R.* 1\r\nPING\r\n')
while f.readline().strip() != b"PONG": pass
def replies(k):
    got = 0
    while got < k:
        line = f.readline()
        if line.startswith(b"MSG"):
            size = int(line.split()[-1]); body = f.read(size + 2)
            if b'"error"' in body: print("error:", body[:200]); sys.exit(1)
            got += 1
        elif line.startswith(b"PING"): s.sendall(b"PONG\r\n")
before = rss(); t = time.time(); window = 64; i = 0
while i < n:
    k = min(window, n - i); buf = b""
    for j in range(i, i + k):
        cfg = json.dumps({"name": f"dchan_t{j}", "subjects": [f"dchan.t{j}"], "storage": "memory", "retention": "interest"}).encode()
        buf += b"PUB $JS.API.STREAM.CREATE.dchan_t%d _R.%d %d\r\n%s\r\n" % (j, j, len(cfg), cfg)
    s.sendall(buf); replies(k); i += k
secs = time.time() - t; after = rss()
print(f"{n} streams: {n/secs:.0f}/s, {(after-before)/n:.0f} bytes of server RSS per stream")
