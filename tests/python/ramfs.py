"""Issue 2: a third-party 9P client against `dchan serve --ramfs`, plain 9P2000.

Drives the server through p9fs's fsspec file system (P9FileSystem, the
`py9p` port underneath): ls, mkdir, write a file, read it back, rm.
Usage: ramfs.py HOST PORT [VERSION] (9P2000, the default; 9P2000.u; 9P2000.L)
"""

import sys

import p9fs

from ninep import HOST, PORT, check, done, expect, gone

VERSION = sys.argv[3] if len(sys.argv) > 3 else "9P2000"
fs = p9fs.P9FileSystem(host=HOST, port=PORT, username="py9p", version=VERSION)
TEXT = b"hello from py9p\n"


def names(path):
    return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(path, detail=True))


def ls_root():
    expect(isinstance(fs.ls(""), list), "ls of the root is a list")


def mkdir():
    fs.mkdir("pydir", create_parents=False)
    expect(fs.isdir("pydir"), "pydir is a directory")
    expect("pydir" in names(""), f"pydir in ls: {names('')}")


def write_file():
    fs.pipe_file("pydir/f", TEXT)
    expect(names("pydir") == ["f"], f"ls pydir: {names('pydir')}")
    expect(fs.info("pydir/f")["size"] == len(TEXT), f"size: {fs.info('pydir/f')}")


def read_back():
    got = fs.cat_file("pydir/f")
    expect(got == TEXT, f"read back {got!r}")


def rm():
    fs.rm("pydir/f")
    expect(gone(fs, "pydir/f"), "pydir/f gone")
    fs.rmdir("pydir")
    expect(gone(fs, "pydir"), "pydir gone")
    expect("pydir" not in names(""), f"pydir not in ls: {names('')}")


check("ls", ls_root)
check("mkdir", mkdir)
check("write", write_file)
check("read back", read_back)
check("rm", rm)
done()
