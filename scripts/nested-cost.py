#!/usr/bin/env python3
"""What the server spends on the requests a mount makes in a tree of nested
topics, with few topics and with many: for each size, a fresh `dchan serve`
with that many topics five levels deep (l0n0/l1n0/l2n0/l3n0/l4n0, ..., as
scripts/many-topics-mount makes them), then on one raw 9P2000 connection
REPS walks of the last topic's `data` from the root (five levels and the
file) with a Tstat and a Tclunk, and REPS/2 directory listings (Topen, Treads
to the end, Tclunk) of a level-3 directory (ten children) and of a topic
(its three files). Prints the server's own mean time per request type, from
its /metrics histograms (the time from a request's arrival to its reply),
for each size and the ratio of the largest to the smallest.

    scripts/nested-cost.py [SIZES [REPS]]      (SIZES: 1000,100000; REPS: 2000)

DCHAN names the binary (default target/release/dchan, else target/debug).
Python's standard library only."""

import os, re, socket, struct, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sizes = [int(n) for n in (sys.argv[1] if len(sys.argv) > 1 else "1000,100000").split(",")]
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
dchan = os.environ.get("DCHAN") or next(
    p for p in (f"{ROOT}/target/release/dchan", f"{ROOT}/target/debug/dchan") if os.path.exists(p))
TYPES = ("Twalk", "Tstat", "Tclunk", "Topen", "Tread")


def name(i):
    return f"l0n{i // 10000}/l1n{i // 1000 % 10}/l2n{i // 100 % 10}/l3n{i // 10 % 10}/l4n{i % 10}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s(x):
    b = x.encode()
    return struct.pack("<H", len(b)) + b


def measure(n):
    """{request type: server µs mean} with n topics."""
    tmp = tempfile.mkdtemp()
    with open(f"{tmp}/dchan.toml", "w") as f:
        f.write(f"[limits]\nmax_topics = {max(n, 100000)}\n")
    log = open(f"{tmp}/serve.log", "w+")
    metrics = free_port()
    server = subprocess.Popen([dchan, "serve", "--config", f"{tmp}/dchan.toml", "--listen", "tcp!127.0.0.1!0",
                               "--metrics", f"tcp!127.0.0.1!{metrics}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            log.seek(0)
            m = re.search(r"127\.0\.0\.1[!:](\d+)", log.read())
            if m:
                break
            time.sleep(0.1)
        port = int(m.group(1))
        names = [name(i) for i in range(n)]
        for i in range(0, n, 10_000):
            subprocess.run([dchan, "create", "--addr", f"tcp!127.0.0.1!{port}", *names[i:i + 10_000]], check=True)
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rd = sock.makefile("rb")

        def rpc(ty, body, tag=1):
            sock.sendall(struct.pack("<IBH", 7 + len(body), ty, tag) + body)
            size, rty, _ = struct.unpack("<IBH", rd.read(7))
            data = rd.read(size - 7)
            if rty == 107:
                sys.exit(f"Rerror: {data[2:].decode()}")
            return data

        def walk(path):
            parts = path.split("/")
            rpc(110, struct.pack("<IIH", 0, 1, len(parts)) + b"".join(s(p) for p in parts))

        def listing():
            rpc(112, struct.pack("<IB", 1, 0))
            offset = 0
            while count := struct.unpack("<I", rpc(116, struct.pack("<IQI", 1, offset, 8192))[:4])[0]:
                offset += count

        rpc(100, struct.pack("<I", 65536) + s("9P2000"), 0xFFFF)
        rpc(104, struct.pack("<II", 0, 0xFFFFFFFF) + s("u") + s(""))
        last = names[-1]
        for _ in range(reps):
            walk(f"{last}/data")
            rpc(124, struct.pack("<I", 1))
            rpc(120, struct.pack("<I", 1))
        for _ in range(reps // 4):
            for d in ("/".join(last.split("/")[:3]), last):
                walk(d)
                listing()
                rpc(120, struct.pack("<I", 1))
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics").read().decode()
        means = {}
        for ty in TYPES:
            total = re.search(r'request_duration_seconds_sum\{[^}]*"%s"[^}]*\} (\S+)' % ty, text)
            count = re.search(r'request_duration_seconds_count\{[^}]*"%s"[^}]*\} (\S+)' % ty, text)
            means[ty] = 1e6 * float(total[1]) / float(count[1])
        return means
    finally:
        server.kill()
        server.wait()


results = {n: measure(n) for n in sizes}
print(f"server µs per request (mean, {dchan}), topics five levels deep:")
print(f"{'topics':>10} " + " ".join(f"{t:>7}" for t in TYPES))
for n, means in results.items():
    print(f"{n:>10} " + " ".join(f"{means[t]:7.1f}" for t in TYPES))
first, last = results[sizes[0]], results[sizes[-1]]
print(f"{'ratio':>10} " + " ".join(f"{last[t] / first[t]:7.2f}" for t in TYPES))
