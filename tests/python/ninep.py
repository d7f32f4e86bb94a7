"""Shared helpers for the Python 9P client tests of dchan.

The client is the `py9p` module that PyPI's `p9fs` (0.0.4) bundles: a
Python 3 port of py9p. PyPI's own `py9p` 1.0.8 is Python 2 code (`0xffL`
literals) and does not import on Python 3.11, and `aio9p` 0.3.3's client
is broken (its open and create send Twalk and Twrite). The port speaks
9P2000, 9P2000.u and 9P2000.L; these tests use plain 9P2000.

Each script takes HOST PORT as arguments, prints one line per check
("ok NAME" or "FAIL NAME: why") and exits 1 if any check failed.
The py9p client is synchronous, one request at a time per connection, so
concurrency comes from several connections in several threads. Every
socket has a generous timeout, so a wedged server fails a check instead
of hanging the test.
"""

import socket
import sys
import threading
import traceback

from py9p import py9p

HOST = sys.argv[1]
PORT = int(sys.argv[2])
TIMEOUT = 30.0

_failures = []


def check(name, fn):
    """Run one check; print its result line."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - any failure is a failed check
        _failures.append(name)
        print(f"FAIL {name}: {e!r}", flush=True)
        traceback.print_exc(file=sys.stderr)
    else:
        print(f"ok {name}", flush=True)


def done():
    """Exit with the verdict."""
    if _failures:
        print(f"{len(_failures)} check(s) failed: {', '.join(_failures)}", flush=True)
        sys.exit(1)
    sys.exit(0)


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def expect_error(fn, what):
    """`fn` must fail with a 9P error (Rerror); returns its text."""
    try:
        fn()
    except py9p.RpcError as e:
        text = e.args[0]
        return text.decode() if isinstance(text, bytes) else str(text)
    raise AssertionError(f"{what}: no error")


def gone(fs, path):
    """Whether `path` is absent, by a walk to it. (p9fs's own exists()
    only knows the error texts "file not found" and ENOENT, not Plan 9's
    "file does not exist".)"""
    parts = [p for p in path.split("/") if p]
    fid = fs.fids.acquire()
    try:
        r = fs.client._walk(fs.client.ROOT, fid.fid, parts)
    except py9p.RpcError:
        return True
    finally:
        fs.fids.release(fid)
    if len(r.wqid) == len(parts):
        fs.client._clunk(fid.fid)
        return False
    return True


class Conn:
    """One 9P2000 connection: Tversion, Tattach with `aname`, then files
    opened by path from the root."""

    def __init__(self, aname="", user="py9p"):
        sock = socket.create_connection((HOST, PORT), timeout=TIMEOUT)
        self.client = py9p.Client(
            sock,
            py9p.Credentials(user=user),
            ver=py9p.Version.v9P2000,
            msize=8192,
            aname=aname,
        )
        self._next_fid = 100

    def _fid(self):
        self._next_fid += 1
        return self._next_fid

    def walk(self, path):
        fid = self._fid()
        names = [n for n in path.split("/") if n]
        r = self.client._walk(self.client.ROOT, fid, names)
        if len(r.wqid) != len(names):
            self.client._clunk(fid)
            raise py9p.RpcError(b"file not found")
        return fid

    def open(self, path, mode=py9p.OREAD):
        fid = self.walk(path)
        try:
            self.client._open(fid, mode)
        except Exception:
            self.client._clunk(fid)
            raise
        return File(self, fid)

    def create(self, path, perm, mode=py9p.OREAD):
        parent, _, name = path.rpartition("/")
        fid = self.walk(parent)
        try:
            self.client._create(fid, name, perm, mode)
        except Exception:
            self.client._clunk(fid)
            raise
        return File(self, fid)

    def read_all(self, path):
        f = self.open(path)
        try:
            out = b""
            while True:
                b = f.read(8192)
                if not b:
                    return out
                out += b
        finally:
            f.close()

    def write_text(self, path, text):
        f = self.open(path, py9p.OWRITE)
        try:
            return f.write(text.encode())
        finally:
            f.close()

    def close(self):
        self.client.fd.close()


class File:
    """An open fid; reads and writes move its own offset."""

    def __init__(self, conn, fid):
        self.conn = conn
        self.fid = fid
        self.pos = 0

    def read(self, count=8192, offset=None):
        r = self.conn.client._read(self.fid, self.pos if offset is None else offset, count)
        self.pos += len(r.data)
        return r.data

    def write(self, data):
        n = self.conn.client._write(self.fid, self.pos, data).count
        self.pos += n
        return n

    def close(self):
        self.conn.client._clunk(self.fid)


class Background:
    """Runs `fn` in a thread; `result()` waits (bounded) for its value."""

    def __init__(self, fn):
        self._value = None
        self._error = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn):
        try:
            self._value = fn()
        except BaseException as e:  # noqa: BLE001 - handed to result()
            self._error = e

    def running(self):
        return self._thread.is_alive()

    def result(self, timeout=TIMEOUT):
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"still blocked after {timeout}s")
        if self._error is not None:
            raise self._error
        return self._value
