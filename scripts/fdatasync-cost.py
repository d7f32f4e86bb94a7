#!/usr/bin/env python3
"""What a durable log's record write and fdatasync cost on this disk: the
figures behind the durable journal's zeros written ahead (book ch. 10).

    scripts/fdatasync-cost.py [DIR]      (default /var/tmp)

Four ways to write 100-byte records, 64 per fdatasync (a group commit of
a pipe of depth 64): appended to the file; over zeros written ahead a MiB
at a time, then synced; the same zeros written a page at a time, not
synced (what the server does: the next record's sync covers them); and
over space only allocated (fallocate). Prints the p50 of each write and
the p50 and p90 of each fdatasync.
"""
import os
import statistics
import sys
import time

DIR = sys.argv[1] if len(sys.argv) > 1 else "/var/tmp"
REC, EVERY, N, AHEAD = 100, 64, 64 * 300, 1 << 20


def run(mode):
    path = os.path.join(DIR, f"fdatasync-cost-{os.getpid()}.bin")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        rec, pos, alloc, writes, syncs = b"x" * REC, 0, 0, [], []
        for i in range(N):
            if mode != "append" and pos + REC > alloc:
                if mode == "fallocate":
                    os.posix_fallocate(fd, alloc, AHEAD)
                elif mode == "zeros, a MiB, synced":
                    os.pwrite(fd, bytes(AHEAD), alloc)
                    os.fdatasync(fd)
                else:
                    page = bytes(4096)
                    for at in range(alloc, alloc + AHEAD, 4096):
                        os.pwrite(fd, page, at)
                alloc += AHEAD
            t = time.perf_counter()
            os.pwrite(fd, rec, pos)
            writes.append(time.perf_counter() - t)
            pos += REC
            if i % EVERY == EVERY - 1:
                t = time.perf_counter()
                os.fdatasync(fd)
                syncs.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        os.unlink(path)
    syncs.sort()
    print(f"{mode:24} write p50 {statistics.median(writes) * 1e6:5.1f} µs   "
          f"fdatasync p50 {statistics.median(syncs) * 1e6:5.0f} µs, "
          f"p90 {syncs[len(syncs) * 9 // 10] * 1e6:5.0f} µs")


for mode in ("append", "zeros, a MiB, synced", "zeros, by page", "fallocate"):
    run(mode)
