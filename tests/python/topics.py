"""Issue 3: a third-party 9P client against dchan's topic server, plain 9P2000.

Usage: topics.py HOST PORT (a fresh `dchan serve`, no topics yet).
Each scenario uses its own topic, so one failure does not cascade.
"""

import time

import p9fs
from py9p import py9p

from ninep import (
    HOST, PORT, Background, Conn, check, done, expect, expect_error, gone,
)

fs = p9fs.P9FileSystem(host=HOST, port=PORT, username="py9p", version="9P2000")
admin = Conn()


def status(path):
    """A ctl file's "key value" lines, as a dict."""
    text = admin.read_all(path).decode()
    return dict((line.split(None, 1) + [""])[:2] for line in text.splitlines() if line.strip())


def create(name, settings=""):
    admin.write_text("ctl", f"create {name} {settings}\n".replace(" \n", "\n"))


def push(topic, data, aname=""):
    c = Conn(aname)
    f = c.open(f"{topic}/data", py9p.OWRITE)
    n = f.write(data)
    f.close()
    c.close()
    return n


def join(topic, aname=""):
    """Make the group `aname` exist (an offset read does); its offset."""
    c = Conn(aname)
    text = c.read_all(f"{topic}/offset").decode()
    c.close()
    expect(text.endswith("\n") and text.strip().isdigit(), f"offset reads {text!r}")
    return int(text)


class Reader:
    """An open data file on a connection of its own, for group `aname`.

    Close it when done: a connection that drops before its reader read
    again or closed the file gives the last message back to the group (at
    least once delivery)."""

    def __init__(self, topic, aname=""):
        self.conn = Conn(aname)
        self.file = self.conn.open(f"{topic}/data")

    def read(self):
        return self.file.read(8192)

    def close(self):
        self.file.close()
        self.conn.close()


def wait_blocked(topic, n, who="readers"):
    """Wait (bounded) until `n` reads (or writes) of `topic` are blocked in
    the server, as its ctl file counts them."""
    for _ in range(3000):
        if status(f"{topic}/ctl").get(f"blocked_{who}") == str(n):
            return
        time.sleep(0.01)
    raise AssertionError(f"{topic}: never {n} blocked {who}: {status(topic + '/ctl')}")


def mkdir_topic():
    admin.create("jobs", py9p.DMDIR | 0o755).close()
    entries = sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in fs.ls("jobs"))
    expect(entries == ["ctl", "data", "offset"], f"ls jobs: {entries}")
    expect(fs.isdir("jobs"), "jobs is a directory")


def pull_blocks_until_push():
    r = Reader("jobs")
    pulled = Background(r.read)
    wait_blocked("jobs", 1)
    n = push("jobs", b"hello\n")
    expect(n == 6, f"push wrote {n}")
    got = pulled.result()
    r.close()
    expect(got == b"hello\n", f"pulled {got!r}")


def push_blocks_until_pull():
    pushed = Background(lambda: push("jobs", b"again\n"))
    wait_blocked("jobs", 1, "writers")
    r = Reader("jobs")
    got = r.read()
    r.close()
    expect(got == b"again\n", f"pulled {got!r}")
    expect(pushed.result() == 6, "push returned its count")


def topic_ctl():
    st = status("jobs/ctl")
    expect(st.get("capacity") == "0", f"capacity in {st}")
    admin.write_text("jobs/ctl", "capacity 5\n")
    st = status("jobs/ctl")
    expect(st.get("capacity") == "5", f"capacity after write: {st}")
    for bad in ["bogus\n", "capacity lots\n", "framing sideways\n"]:
        err = expect_error(lambda: admin.write_text("jobs/ctl", bad), f"ctl {bad!r}")
        expect(err, f"error text for {bad!r}")
    expect(status("jobs/ctl") == st, "bad commands changed nothing")


def root_ctl():
    st = status("ctl")
    for key in ["topics", "connections"]:
        expect(key in st, f"{key} in root ctl: {st}")
    expect(int(st["connections"]) >= 1, f"connections {st['connections']}")
    create("made", "capacity=3 framing=write")
    expect(status("made/ctl").get("capacity") == "3", "created with capacity 3")
    expect_error(lambda: admin.write_text("ctl", "frobnicate x\n"), "unknown root command")


def offset_replay():
    create("replay", "capacity=10")
    first = join("replay", "holder")  # holds the messages for the replay
    join("replay")
    for m in [b"a\n", b"b\n", b"c\n"]:
        push("replay", m)
    r = Reader("replay")
    expect(r.read() == b"a\n", "first read a")
    r.close()
    c = Conn()
    expect(c.read_all("replay/offset") == f"{first + 1}\n".encode(), "offset moved past a")
    c.write_text("replay/offset", f"{first}\n")
    expect(c.read_all("replay/offset") == f"{first}\n".encode(), "offset moved back")
    r2 = Reader("replay")
    got = [r2.read() for _ in range(3)]
    r2.close()
    expect(got == [b"a\n", b"b\n", b"c\n"], f"replayed {got}")
    expect_error(lambda: c.write_text("replay/offset", "99999\n"), "offset out of range")
    expect_error(lambda: c.write_text("replay/offset", "minus one\n"), "offset not a number")
    expect(c.read_all("replay/offset") == f"{first + 3}\n".encode(), "bad offsets changed nothing")


def groups_fan_out():
    create("fan", "capacity=10")
    join("fan", "g1")
    join("fan", "g2")
    sent = [b"x\n", b"y\n", b"z\n"]
    for m in sent:
        push("fan", m)
    for g in ["g1", "g2"]:
        r = Reader("fan", g)
        got = [r.read() for _ in sent]
        r.close()
        expect(got == sent, f"group {g} got {got}")


def flushed_read_takes_nothing():
    create("flushme", "capacity=10")
    join("flushme")
    r = Reader("flushme")
    client = r.conn.client
    tread = py9p.Fcall(py9p.Tread, tag=7)
    tread.fid, tread.offset, tread.count = r.file.fid, 0, 8192
    client.fd.send(tread)
    wait_blocked("flushme", 1)
    # The library's own _flush() sends oldtag = its own tag (a bug), so the
    # Tflush is built here from its message type and sent by its marshaller.
    tflush = py9p.Fcall(py9p.Tflush, tag=8)
    tflush.oldtag = 7
    client.fd.send(tflush)
    reply = client.fd.recv()
    expect((reply.type, reply.tag) == (py9p.Rflush, 8), f"got {py9p.cmdName[reply.type]} tag {reply.tag}")
    # The next reply on this connection must be for the next request: no
    # late Rread for the flushed tag 7 (py9p checks the tag).
    r.conn.client._stat(r.file.fid)
    push("flushme", b"m\n")
    r.close()
    r = Reader("flushme")
    got = r.read()
    r.close()
    expect(got == b"m\n", f"next reader got {got!r}")


def close_ends_reads():
    create("closing", "capacity=10")
    join("closing")
    push("closing", b"last\n")
    r = Reader("closing")
    admin.write_text("closing/ctl", "close\n")
    expect_error(lambda: push("closing", b"more\n"), "push to a closed topic")
    expect(r.read() == b"last\n", "drains what is held")
    expect(r.read() == b"", "then reads 0 bytes")
    r.close()


def close_wakes_blocked_reader():
    create("closing2")
    r = Reader("closing2")
    pulled = Background(r.read)
    wait_blocked("closing2", 1)
    admin.write_text("closing2/ctl", "close\n")
    expect(pulled.result() == b"", "a blocked read returns 0 bytes")
    r.close()


def rmdir_topic():
    fs.rmdir("jobs")
    expect(gone(fs, "jobs"), "jobs gone")


check("mkdir topic", mkdir_topic)
check("pull blocks until push", pull_blocks_until_push)
check("push blocks until pull", push_blocks_until_pull)
check("topic ctl read/write, bad commands fail", topic_ctl)
check("root ctl", root_ctl)
check("offset read, write, replay", offset_replay)
check("two groups (anames) each get every message", groups_fan_out)
check("flushed blocked read takes nothing", flushed_read_takes_nothing)
check("close drains then reads 0 bytes", close_ends_reads)
check("close wakes a blocked reader", close_wakes_blocked_reader)
check("rmdir topic", rmdir_topic)
done()
