"""Issue 11: access rules seen by a third-party client over plain 9P2000.

Usage: access.py HOST PORT, against a `dchan serve` whose rules give alice
everything on billing/* and bob only read there (tests/python_client.rs).
The user is the attach's uname, which this client asserts.
"""

from py9p import py9p

from ninep import Conn, check, done, expect, expect_error

alice = Conn(user="alice")
bob = Conn(user="bob")


def denied(fn, what):
    text = expect_error(fn, what)
    expect(text.startswith("permission denied"), f"{what}: {text!r}")


def setup():
    alice.write_text("ctl", "create billing/eu capacity=5\n")
    f = alice.open("billing/eu/data", py9p.OWRITE)
    f.write(b"one\n")
    f.close()


def bob_cannot_push():
    denied(lambda: bob.open("billing/eu/data", py9p.OWRITE), "bob opens data to write")


def bob_cannot_administer():
    denied(lambda: bob.open("billing/eu/ctl", py9p.OWRITE), "bob opens ctl to write")
    denied(lambda: bob.write_text("ctl", "remove billing/eu\n"), "bob removes a topic")
    denied(lambda: bob.write_text("ctl", "create billing/us\n"), "bob creates a topic")
    denied(lambda: bob.create("billing/us", py9p.DMDIR | 0o755), "bob mkdirs a topic")


def bob_reads():
    f = bob.open("billing/eu/data")
    expect(f.read() == b"one\n", "bob pulls what alice pushed")
    f.close()
    status = bob.read_all("billing/eu/ctl").decode()
    expect("pending" in status, status)


def nothing_changed():
    text = alice.read_all("ctl").decode()
    expect("topics 1" in text, text)


check("setup", setup)
check("bob_cannot_push", bob_cannot_push)
check("bob_cannot_administer", bob_cannot_administer)
check("bob_reads", bob_reads)
check("nothing_changed", nothing_changed)
done()
