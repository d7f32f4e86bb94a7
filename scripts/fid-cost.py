#!/usr/bin/env python3
"""What a fid costs the server: start `dchan serve` with room for the fids,
make TOPICS topics five levels deep (n/a/b/c/tK), then hold N fids on one
raw 9P2000 connection, each walked to one of their files (as 9pfuse keeps
one for every file it has looked up), and print the server's resident
memory before and after.

    scripts/fid-cost.py [N [TOPICS]]      (N: 1000000, TOPICS: 10000)

DCHAN names the binary (default target/release/dchan, else target/debug).
Python's standard library only."""

import os, re, socket, struct, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
topics = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
dchan = os.environ.get("DCHAN") or next(
    p for p in (f"{ROOT}/target/release/dchan", f"{ROOT}/target/debug/dchan") if os.path.exists(p))

tmp = tempfile.mkdtemp()
with open(f"{tmp}/dchan.toml", "w") as f:
    f.write(f"[limits]\nmax_fids = {n + 16}\n")
log = open(f"{tmp}/serve.log", "w+")
server = subprocess.Popen([dchan, "serve", "--config", f"{tmp}/dchan.toml", "--listen", "tcp!127.0.0.1!0"],
                          stdout=log, stderr=subprocess.STDOUT)
try:
    for _ in range(100):
        log.seek(0)
        m = re.search(r"127\.0\.0\.1[!:](\d+)", log.read())
        if m:
            break
        time.sleep(0.1)
    port = int(m.group(1))
    addr = f"tcp!127.0.0.1!{port}"
    names = [f"n/a/b/c/t{t}" for t in range(topics)]
    for i in range(0, topics, 10_000):
        subprocess.run([dchan, "create", "--addr", addr, *names[i:i + 10_000]], check=True)

    def rss():
        with open(f"/proc/{server.pid}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))  # KiB

    def s(x):
        b = x.encode()
        return struct.pack("<H", len(b)) + b

    def msg(ty, tag, body):
        return struct.pack("<IBH", 7 + len(body), ty, tag) + body

    sock = socket.create_connection(("127.0.0.1", port))
    rd = sock.makefile("rb")

    def reply():
        size, ty, _tag = struct.unpack("<IBH", rd.read(7))
        body = rd.read(size - 7)
        if ty == 107:
            sys.exit(f"Rerror: {body[2:].decode()}")

    sock.sendall(msg(100, 0xFFFF, struct.pack("<I", 65536) + s("9P2000")))
    reply()
    sock.sendall(msg(104, 1, struct.pack("<II", 0, 0xFFFFFFFF) + s("bench") + s("")))
    reply()
    files = ("data", "ctl", "offset")

    def walk(i):
        path = ["n", "a", "b", "c", f"t{i % topics}", files[(i // topics) % 3]]
        body = struct.pack("<IIH", 0, i + 1, len(path)) + b"".join(s(x) for x in path)
        return msg(110, i % 60000, body)

    time.sleep(0.5)
    before = rss()
    for start in range(0, n, 2000):
        end = min(n, start + 2000)
        sock.sendall(b"".join(walk(i) for i in range(start, end)))
        for _ in range(start, end):
            reply()
    time.sleep(0.5)
    after = rss()
    print(f"{n} fids on one connection ({topics} topics): server RSS {before} KiB before, "
          f"{after} KiB after: {(after - before) * 1024 / n:.0f} bytes per fid")
finally:
    server.kill()
