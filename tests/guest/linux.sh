#!/bin/sh
# The real Linux 9P client against dchan, run inside the QEMU guest by
# tests/linux_client.rs through scripts/guest (busybox sh; bash is
# /bin/bash). The host's dchan servers are at $SERVER (10.0.2.2):
#   RAMFS_PORT  `dchan serve --ramfs`: issue 2's ls, mkdir, echo, cat, rm
#   TOPIC_PORT  `dchan serve`: issue 3's topic contract
#   JS_A_PORT, JS_B_PORT  two `dchan serve --nats` sharing one JetStream
#               (issue 8: tests/guest/jetstream.sh)
#   DURABLE_PORT  `dchan serve --data`, killed and restarted by the host on
#               the guest's request (issue 9: tests/guest/durable.sh)
# for each dialect: 9p2000.L, 9p2000.u, and plain 9p2000 with the
# `:linux` aname override that turns on the Linux read loop rule.
# Each check prints one line, `CHECK <name> ok` or `CHECK <name> FAIL ...`.
. ./lib.sh
KERNEL=$(uname -r)
DIALECTS="9p2000.L 9p2000.u 9p2000"

# ---- issue 2: the RAM tree ---------------------------------------------------

ramfs() {
    V=$1 M=/mnt/ramfs-$1 C=ramfs.$1
    if ! mount9p $M "$RAMFS_PORT" $V 2> /tmp/mount.err; then
        fail $C.mount "$(cat /tmp/mount.err)"
        return
    fi
    ok $C.mount
    if ls -la $M > /tmp/ls.out 2>&1; then ok $C.ls; else fail $C.ls "$(cat /tmp/ls.out)"; fi
    if mkdir $M/dir-$V 2> /tmp/e; then ok $C.mkdir; else fail $C.mkdir "$(cat /tmp/e)"; fi
    if echo hello > $M/dir-$V/f 2> /tmp/e; then ok $C.write; else fail $C.write "$(cat /tmp/e)"; fi
    got=$(timeout $WAIT cat $M/dir-$V/f 2> /tmp/e)
    if [ "$got" = hello ]; then ok $C.cat; else fail $C.cat "got '$got' $(cat /tmp/e)"; fi
    if ls $M/dir-$V | grep -qx f; then ok $C.ls-dir; else fail $C.ls-dir "f not listed: $(ls $M/dir-$V 2>&1)"; fi
    if rm $M/dir-$V/f 2> /tmp/e && ! test -e $M/dir-$V/f; then ok $C.rm; else fail $C.rm "$(cat /tmp/e)"; fi
    if rmdir $M/dir-$V 2> /tmp/e && ! test -e $M/dir-$V; then ok $C.rmdir; else fail $C.rmdir "$(cat /tmp/e)"; fi
    if umount $M 2> /tmp/e; then ok $C.umount; else fail $C.umount "$(cat /tmp/e)"; fi
}

# ---- issue 3: topics ---------------------------------------------------------

# Each check gets a fresh topic, named after the dialect and the check; $T
# is its directory on the default-group mount $M, $G1 and $G2 the same topic
# seen by groups g1 and g2, $W on the writers' mount. Writers use a mount of
# their own because on 6.8+ (netfs) the kernel grows its cached size of
# data with every write through that mount, and then takes a read that
# ends before that size as a short read to be continued: one read(2) of a
# reader on the writers' mount returns several messages, or none at all
# (see c_size_limit).
topic() {
    T=$M/$V.$1 G1=$M1/$V.$1 G2=$M2/$V.$1 W=$MW/$V.$1
    mkdir $T 2> /tmp/mkdir.err || echo "mkdir $T failed: $(cat /tmp/mkdir.err)"
}
# ctl CMD: writes one command to the topic's ctl; its exit status.
ctl() { echo "$1" >> $T/ctl; }
# A check's leftovers: close the topic (wakes what still waits) and kill
# what still runs.
cleanup() {
    ctl close 2>/dev/null
    for n in "$@"; do stop $n; done
}

# `echo hello >> data` blocks until `cat data` reads it; cat prints it at once.
# And `echo hello > data` (on the writers' mount: see c_kernel_limit).
c_rendezvous() {
    _rendezvous rendezvous push
    _rendezvous rendezvous-trunc push_trunc
}
_rendezvous() {
    topic $1
    bg w $2 $W/data hello
    sleep $BLOCK
    if ended w; then fail $C.$1 "push ended before any reader: rc $(rc w) $(err w)"; cleanup w; return; fi
    bg r pull $T/data
    if ! waitfor $WAIT has r hello; then fail $C.$1 "cat printed '$(out r)' $(err r)"; cleanup w r; return; fi
    if ! waitfor $WAIT ended w || [ "$(rc w)" != 0 ]; then fail $C.$1 "push: rc $(rc w) $(err w)"; cleanup w r; return; fi
    if ended r; then fail $C.$1 "cat ended: rc $(rc r)"; cleanup r; return; fi
    ok $C.$1
    cleanup r
}

# `head -n 1 data` takes exactly one message.
c_head() {
    topic head
    bg w pushn $W/data 3 m
    a=$(timeout $WAIT head -n 1 $T/data 2> /tmp/e)
    b=$(timeout $WAIT head -n 1 $T/data 2>> /tmp/e)
    c=$(timeout $WAIT head -n 1 $T/data 2>> /tmp/e)
    waitfor $WAIT ended w
    if [ "$a $b $c" = "m1 m2 m3" ] && [ "$(rc w)" = 0 ]; then ok $C.head-n-1
    else fail $C.head-n-1 "three head -n 1 gave '$a $b $c', push rc $(rc w) $(cat /tmp/e)"; fi
    cleanup w
}

# `while read line` with busybox sh (reads 1 byte at a time) and bash (reads
# a chunk and seeks back) sees every message.
c_whileread() {
    for sh in sh bash; do
        topic whileread-$sh
        bg w pushn $W/data 5 line
        got=$(timeout $WAIT $sh -c 'n=0; while read line; do echo "$line"; n=$((n + 1)); [ $n = 5 ] && break; done < "$1"' sh $T/data 2> /tmp/e | tr '\n' ' ')
        waitfor $WAIT ended w
        if [ "$got" = "line1 line2 line3 line4 line5 " ] && [ "$(rc w)" = 0 ]; then ok $C.while-read-$sh
        else fail $C.while-read-$sh "got '$got', push rc $(rc w) $(cat /tmp/e)"; fi
        cleanup w
    done
}

# Messages of 65512 and 100000 bytes (newline included) come out whole from
# one read(2) of 1 MiB.
c_big() {
    for size in 65512 100000; do
        topic big-$size
        bg w sh -c 'exec 3>> "$1"; head -c $(($2 - 1)) /dev/zero | tr "\0" x >&3; echo >&3' sh $W/data $size
        timeout $WAIT dd if=$T/data of=/tmp/big bs=1048576 count=1 2> /tmp/e
        got=$(wc -c < /tmp/big)
        waitfor $WAIT ended w
        if [ "$got" = $size ] && [ "$(tr -d x < /tmp/big)" = "" ] && [ "$(rc w)" = 0 ]; then ok $C.big-$size
        else fail $C.big-$size "one read(2) gave $got bytes, push rc $(rc w) $(err w) $(cat /tmp/e)"; fi
        cleanup w
    done
}

# With capacity 2 the third push blocks until a read.
c_capacity() {
    topic capacity
    ctl "capacity 2" || fail $C.capacity-2 "capacity 2 refused"
    cat $T/offset > /dev/null   # the default group exists from here on
    for m in m1 m2; do
        if ! timeout $WAIT sh -c 'echo $1 >> $2' sh $m $W/data 2> /tmp/e; then
            fail $C.capacity-2 "push $m did not complete: $(cat /tmp/e)"; cleanup; return
        fi
    done
    bg w push $W/data m3
    sleep $BLOCK
    if ended w; then fail $C.capacity-2 "third push did not block: rc $(rc w) $(err w)"; cleanup w; return; fi
    first=$(timeout $WAIT head -n 1 $T/data)
    if ! waitfor $WAIT ended w || [ "$(rc w)" != 0 ]; then fail $C.capacity-2 "third push after a read: rc $(rc w) $(err w)"; cleanup w; return; fi
    rest=$(timeout $WAIT head -n 1 $T/data; timeout $WAIT head -n 1 $T/data)
    if [ "$first" = m1 ] && [ "$(echo $rest)" = "m2 m3" ]; then ok $C.capacity-2
    else fail $C.capacity-2 "read '$first' then '$(echo $rest)'"; fi
    cleanup w
}

# Two readers of the default group split 100 messages, none lost or duplicated.
c_split() {
    topic split
    bg r1 pull $T/data
    bg r2 pull $T/data
    sleep $BLOCK
    bg w pushn $W/data 100 m
    waitfor 60 ended w
    ctl close
    waitfor $WAIT ended r1; waitfor $WAIT ended r2
    n1=$(out r1 | wc -l) n2=$(out r2 | wc -l)
    all=$( (out r1; out r2) | sort | tr '\n' ' ')
    want=$(seqlines m 100 | sort | tr '\n' ' ')
    if [ "$all" = "$want" ] && [ "$(rc w)" = 0 ] && [ "$(rc r1)" = 0 ] && [ "$(rc r2)" = 0 ]; then
        ok $C.split-100 "($n1 + $n2)"
    else
        fail $C.split-100 "readers got $n1 + $n2 lines, sorted union differs: $(echo "$all" | cut -c1-200); push rc $(rc w) $(err w), cat rc $(rc r1) $(rc r2)"
    fi
    cleanup w r1 r2
}

# Two groups (two mounts with anames g1 and g2) each get all 100, in order.
c_groups() {
    topic groups
    cat $G1/offset $G2/offset > /dev/null 2> /tmp/e || { fail $C.groups-100 "offset: $(cat /tmp/e)"; return; }
    bg r1 pull $G1/data
    bg r2 pull $G2/data
    bg w pushn $W/data 100 m
    waitfor 60 ended w
    ctl close
    waitfor $WAIT ended r1; waitfor $WAIT ended r2
    want=$(seqlines m 100 | tr '\n' ' ')
    g1=$(out r1 | tr '\n' ' ') g2=$(out r2 | tr '\n' ' ')
    if [ "$g1" = "$want" ] && [ "$g2" = "$want" ] && [ "$(rc w)" = 0 ]; then ok $C.groups-100
    else fail $C.groups-100 "g1 got $(out r1 | wc -l), g2 got $(out r2 | wc -l), in order: $([ "$g1" = "$want" ] && echo yes || echo no)/$([ "$g2" = "$want" ] && echo yes || echo no); push rc $(rc w) $(err w)"; fi
    cleanup w r1 r2
}

# Writing offset moves the group back over held messages: they are read again.
# (Group g1 holds them: it has not read.)
c_offset() {
    topic replay
    ctl "capacity 10"
    o0=$(cat $T/offset); cat $G1/offset > /dev/null
    timeout $WAIT sh -c 'printf "a\nb\nc\n" >> $1' sh $W/data || { fail $C.offset-replay "push failed"; cleanup; return; }
    a=$(timeout $WAIT head -n 1 $T/data) b=$(timeout $WAIT head -n 1 $T/data)
    o2=$(cat $T/offset)
    if ! echo "$o0" > $T/offset 2> /tmp/e; then fail $C.offset-replay "writing offset $o0: $(cat /tmp/e)"; cleanup; return; fi
    o3=$(cat $T/offset)
    again=$(timeout $WAIT head -n 1 $T/data; timeout $WAIT head -n 1 $T/data; timeout $WAIT head -n 1 $T/data)
    if [ "$a$b" = ab ] && [ "$o2" = $((o0 + 2)) ] && [ "$o3" = "$o0" ] && [ "$(echo $again)" = "a b c" ]; then ok $C.offset-replay
    else fail $C.offset-replay "read $a$b, offset $o0 -> $o2, wrote $o0 -> $o3, then read '$(echo $again)'"; fi
    cleanup
}

# reset fails a blocked writer (its echo exits non-zero) and empties the topic.
c_reset() {
    topic reset
    ctl "capacity 1"
    cat $T/offset > /dev/null
    timeout $WAIT sh -c 'echo held >> $1' sh $W/data || { fail $C.reset "first push failed"; cleanup; return; }
    bg w push $W/data blocked
    sleep $BLOCK
    if ended w; then fail $C.reset "second push did not block (capacity 1): rc $(rc w)"; cleanup w; return; fi
    if ! ctl reset 2> /tmp/e; then fail $C.reset "reset refused: $(cat /tmp/e)"; cleanup w; return; fi
    if ! waitfor $WAIT ended w; then fail $C.reset "blocked push still blocked after reset"; cleanup w; return; fi
    if [ "$(rc w)" = 0 ]; then fail $C.reset "blocked push exited 0 after reset"; cleanup w; return; fi
    werr=$(err w)
    bg w2 push $W/data after
    got=$(timeout $WAIT head -n 1 $T/data)
    if [ "$got" = after ]; then ok $C.reset "(writer: $werr)"
    else fail $C.reset "after reset and a push of 'after', a read gave '$got'"; fi
    cleanup w2
}

# close ends cat (after the rest is drained); pushes then fail.
c_close() {
    topic close
    bg r pull $T/data
    bg w push $W/data last
    waitfor $WAIT has r last
    ctl close
    if ! waitfor $WAIT ended r; then fail $C.close "cat still running after close"; cleanup r w; return; fi
    if echo more >> $W/data 2> /tmp/e; then fail $C.close "push after close succeeded"; cleanup r w; return; fi
    if [ "$(rc r)" = 0 ] && has r last; then ok $C.close "(push after close: $(cat /tmp/e))"
    else fail $C.close "cat rc $(rc r), printed '$(out r)' $(err r)"; fi
    cleanup r w
}

# A cat killed while blocked leaves the next message for the next reader.
c_killed() {
    topic killed
    bg r pull $T/data
    sleep $BLOCK
    stop r
    bg w push $W/data next
    got=$(timeout $WAIT head -n 1 $T/data 2> /tmp/e)
    waitfor $WAIT ended w
    if [ "$got" = next ] && [ -z "$(out r)" ] && [ "$(rc w)" = 0 ]; then ok $C.killed-reader
    else fail $C.killed-reader "next reader got '$got' $(cat /tmp/e), killed cat printed '$(out r)', push rc $(rc w)"; fi
    cleanup w
}

# Bad ctl commands and offsets give errors and change nothing.
c_bad() {
    topic bad
    ctl "capacity 3"
    cat $T/offset > /dev/null
    before=$(cat $T/ctl; cat $T/offset)
    bad=""
    for cmd in bogus "capacity" "capacity x" "capacity -1" "framing bogus" "timeout forever" "forget"; do
        ctl "$cmd" 2> /dev/null && bad="$bad [ctl '$cmd' accepted]"
    done
    for o in abc -1 99999999; do
        echo "$o" > $T/offset 2> /dev/null && bad="$bad [offset '$o' accepted]"
    done
    after=$(cat $T/ctl; cat $T/offset)
    [ "$before" = "$after" ] || bad="$bad [state changed: $(echo $before) -> $(echo $after)]"
    if [ -z "$bad" ]; then ok $C.bad-commands; else fail $C.bad-commands "$bad"; fi
    cleanup
}

# rmdir of a topic with a blocked reader and a blocked writer wakes both.
# (The writer waits for group g1, which never reads; the default group's
# reader takes the message and blocks again.) The reader fails; the writer
# succeeds, because a group took its message (issue 14.5: a writer told
# "failed" would push it again).
c_rmdir() {
    topic rmdir
    cat $G1/offset > /dev/null
    bg r pull $T/data
    bg w push $W/data m
    waitfor $WAIT has r m
    sleep $BLOCK
    if ended w || ended r; then fail $C.rmdir-wakes "not blocked before rmdir: push rc $(rc w), cat rc $(rc r) '$(out r)'"; cleanup r w; return; fi
    if ! rmdir $T 2> /tmp/e; then fail $C.rmdir-wakes "rmdir: $(cat /tmp/e)"; cleanup r w; return; fi
    waitfor $WAIT ended w; waitfor $WAIT ended r
    if [ "$(rc w)" = 0 ] && [ "$(rc r)" != 0 ] && [ "$(rc r)" != running ] && ! test -e $T; then
        ok $C.rmdir-wakes "(push: $(err w); cat: $(err r))"
    else
        fail $C.rmdir-wakes "after rmdir: push rc $(rc w) $(err w), cat rc $(rc r) $(err r), dir exists: $(test -e $T && echo yes || echo no)"
    fi
    stop r; stop w
}

# `timeout 1s` makes a blocked read fail, with ETIMEDOUT.
c_timeout() {
    topic timeout
    if ! ctl "timeout 1s" 2> /tmp/e; then fail $C.timeout "timeout 1s refused: $(cat /tmp/e)"; cleanup; return; fi
    bg r pull $T/data
    if ! waitfor $WAIT ended r; then fail $C.timeout "read still blocked"; cleanup r; return; fi
    if [ "$(rc r)" != 0 ] && err r | grep -qi "timed out"; then ok $C.timeout "($(err r))"
    else fail $C.timeout "cat rc $(rc r): $(err r)"; fi
    cleanup r
}

# The kernel limit (6.8+, netfs): on one mount a truncating open (`>`) waits
# while another process is blocked reading the same data; `>>` does not.
# Both behaviours are checked, `>>` first (a waiting `>` would hold back any
# later writer on that file too), and on 6.1 that `>` does not wait either.
c_kernel_limit() {
    topic limit
    bg r pull $T/data
    sleep $BLOCK
    bg wa push $T/data append
    if ! waitfor $WAIT has r append || ! waitfor $WAIT ended wa || [ "$(rc wa)" != 0 ]; then
        fail $C.kernel-limit "'>>' on the reader's mount: rc $(rc wa) $(err wa), cat printed '$(out r)'"
        cleanup r wa; return
    fi
    bg wt push_trunc $T/data trunc
    sleep $BLOCK
    case $KERNEL in
    6.1.*)
        if waitfor $WAIT grep -q trunc /tmp/r.out && waitfor $WAIT ended wt && [ "$(rc wt)" = 0 ]; then ok $C.kernel-limit "(6.1: neither '>>' nor '>' waits)"
        else fail $C.kernel-limit "6.1: '>' push rc $(rc wt), cat printed '$(out r)'"; fi
        ;;
    *)
        if ended wt || grep -q trunc /tmp/r.out; then
            fail $C.kernel-limit "'>' was not held back by the blocked reader: rc $(rc wt), cat printed '$(out r)'"
        else
            stop r   # the reader goes: the '>' writer opens and pushes
            bg r2 pull $T/data
            if waitfor $WAIT has r2 trunc && waitfor $WAIT ended wt && [ "$(rc wt)" = 0 ]; then
                ok $C.kernel-limit "('>>' passes a blocked reader on its mount, '>' waits for it)"
            else
                fail $C.kernel-limit "'>' after the reader left: rc $(rc wt) $(err wt), next reader printed '$(out r2)'"
            fi
        fi
        ;;
    esac
    cleanup r r2 wt wa
}

# The other kernel limit of 6.8+ (netfs): writes through a mount grow that
# mount's cached size of data (while the file stays open there), and a read
# that ends before that size is taken as short and continued, so one read(2)
# on the writers' mount returns every message up to that size. 6.1 returns
# one message.
c_size_limit() {
    topic size
    ctl "capacity 10"
    cat $T/offset > /dev/null
    # The writer keeps data open, so the kernel keeps the inode and its size.
    bg w sh -c 'exec 3>> "$1"; printf "m1\nm2\nm3\n" >&3; exec sleep 60' sh $T/data
    sleep $BLOCK
    got=$(timeout $WAIT dd if=$T/data bs=4096 count=1 2> /dev/null | tr '\n' ' ')
    case $KERNEL in
    6.1.*) want="m1 " note="(6.1: one read(2) on the writers' mount, one message)" ;;
    *) want="m1 m2 m3 " note="(one read(2) on the writers' mount returns all three messages)" ;;
    esac
    if [ "$got" = "$want" ]; then ok $C.kernel-size-limit "$note"
    else fail $C.kernel-size-limit "one read(2) gave '$got', want '$want'"; fi
    cleanup w
}

# Issue 14.2: a reader that opened data with O_NONBLOCK (9P2000.L: the
# server sees it in Tlopen) gets each message, then EAGAIN (11), never a
# false end of file. (tests/guest/nb.c; plain 9P2000 and .u opens carry no
# O_NONBLOCK.)
c_nonblock() {
    [ $V = 9p2000.L ] || return 0
    topic nonblock
    ctl "capacity 10"
    cat $T/offset > /dev/null
    printf 'one\ntwo\n' >> $W/data
    got=$(timeout $WAIT ./nb read $T/data 3 | tr '\n' ' ')
    want='data one\n data two\n errno 11 '
    if [ "$got" = "$want" ]; then ok $C.nonblock-read
    else fail $C.nonblock-read "got '$got', want '$want'"; fi
    cleanup
}

# What a write(2) refused by the server returns (issues 14.1, 14.3), on
# 9P2000.L: 6.1 passes the errno (EMSGSIZE 90 for a message over
# max_message, ETIMEDOUT 110 for a timeout); 6.12's netfs write path turns
# every error into a write(2) that returns 0 (and retries EAGAIN: see
# c_nonblock_write). Nothing is pushed either way.
c_write_errors() {
    [ $V = 9p2000.L ] || return 0
    topic write-errors
    ctl "capacity 10"
    ctl "max_message 4"
    ctl "timeout 1s"
    cat $T/offset > /dev/null
    long=$(timeout $WAIT ./nb bwrite $W/data "12345
" | head -n 1)
    ctl "capacity 0"
    slow=$(timeout $WAIT ./nb bwrite $W/data "ab
" | head -n 1)
    case $KERNEL in
    6.1.*) want_long="errno 90" want_slow="errno 110" ;;
    *) want_long="wrote 0" want_slow="wrote 0" ;;
    esac
    pending=$(grep '^pending' $T/ctl)
    if [ "$long" = "$want_long" ] && [ "$slow" = "$want_slow" ] && [ "$pending" = "pending 0" ]; then
        ok $C.write-errors "(too long: $long; timed out: $slow)"
    else
        fail $C.write-errors "too long: '$long' (want '$want_long'), timed out: '$slow' (want '$want_slow'), $pending"
    fi
    cleanup
}

# Issue 14.1: a non-blocking write(2) that would block, on 9P2000.L
# (capacity 0, no reader). 6.1 passes the server's EAGAIN (11). 6.12 retries
# a write answered EAGAIN for ever, unkillable; the server answers EBUSY once
# the same open file's refusals come fast and many in a row, and 6.12 turns
# that into a write(2) that returns 0. Nothing is pushed. Should the write
# still hang (a regression), closing the topic ends it (a D-state process
# ignores `kill`), so the check fails instead of wedging the guest.
c_nonblock_write() {
    [ $V = 9p2000.L ] || return 0
    topic nonblock-write
    ctl "capacity 0"
    cat $T/offset > /dev/null
    bg w ./nb write $W/data "nb
"
    if ! waitfor $WAIT ended w; then
        ctl close
        waitfor $WAIT ended w
        fail $C.nonblock-write "write(2) still waiting after ${WAIT}s; ended by a close: $(out w | tr '\n' ' ')"
        cleanup w
        return
    fi
    got=$(out w | head -n 1)
    case $KERNEL in
    6.1.*) want="errno 11" ;;
    *) want="wrote 0" ;;
    esac
    status=$(grep -E '^(pending|blocked_writers)' $T/ctl | tr '\n' ' ')
    if [ "$got" = "$want" ] && [ "$status" = "pending 0 blocked_writers 0 " ]; then
        ok $C.nonblock-write "($got)"
    else
        fail $C.nonblock-write "got '$got' (want '$want'), $status"
    fi
    cleanup w
}

# Issue 14.4: a line left without its newline is pushed when the file is
# closed, and the close waits for a reader like a write (capacity 0).
c_partial() {
    topic partial
    bg w sh -c 'printf abc >> "$1"' sh $W/data
    sleep $BLOCK
    if ended w; then fail $C.partial-close "the close returned before any reader: rc $(rc w)"; cleanup w; return; fi
    bg r pull $T/data
    if waitfor $WAIT has r abc && waitfor $WAIT ended w && [ "$(rc w)" = 0 ]; then ok $C.partial-close
    else fail $C.partial-close "cat printed '$(out r)', writer rc $(rc w) $(err w)"; fi
    cleanup r w
}

# The CLI and a mount agree: tests/linux_client.rs, on the host, pushes
# "from the cli" with `dchan push` to $V.cli-in as soon as the topic exists,
# and pulls $V.cli-out with `dchan pull`, where the mount pushes "from the
# mount". (The host reports its side as its own checks.)
c_cli() {
    topic cli-in
    got=$(timeout 60 head -n 1 $T/data 2> /tmp/e)
    if [ "$got" = "from the cli" ]; then ok $C.cli-to-mount
    else fail $C.cli-to-mount "head got '$got' $(cat /tmp/e)"; fi
    topic cli-out
    bg w push $W/data "from the mount"
    if waitfor 60 ended w && [ "$(rc w)" = 0 ]; then ok $C.mount-to-cli
    else fail $C.mount-to-cli "push: rc $(rc w) $(err w)"; cleanup w; fi
}

# Issue 12: a mount attached as GROUP:batch ($MB, the default group) gets
# every whole message there in one read(2): dd's one read of 64 KiB takes
# three lines pushed before it, and returns at once; O_NONBLOCK reads get
# the batch, then EAGAIN; a batch reader killed while blocked (Tflush)
# leaves the next message to the next reader; 500 lines come out whole, in
# order, and cat ends at close. The default mount still takes one message
# per read(2) (c_head).
c_batch() {
    topic batch
    TB=$MB/$V.batch
    ctl "capacity 1000"
    cat $TB/offset > /dev/null
    printf 'a\nb\nc\n' >> $W/data
    got=$(timeout $WAIT dd if=$TB/data bs=65536 count=1 2> /tmp/e | tr '\n' ' ')
    if [ "$got" = "a b c " ]; then ok $C.batch-one-read
    else fail $C.batch-one-read "one read(2) gave '$got' $(cat /tmp/e)"; fi
    if [ $V = 9p2000.L ]; then
        printf 'one\ntwo\n' >> $W/data
        got=$(timeout $WAIT ./nb read $TB/data 2 | tr '\n' ' ')
        want='data one\ntwo\n errno 11 '
        if [ "$got" = "$want" ]; then ok $C.batch-nonblock
        else fail $C.batch-nonblock "got '$got', want '$want'"; fi
    fi
    bg r pull $TB/data
    sleep $BLOCK
    stop r
    printf 'next\n' >> $W/data
    got=$(timeout $WAIT head -n 1 $TB/data 2> /tmp/e)
    if [ "$got" = next ] && [ -z "$(out r)" ]; then ok $C.batch-killed-reader
    else fail $C.batch-killed-reader "next reader got '$got' $(cat /tmp/e), killed cat printed '$(out r)'"; fi
    seqlines n 500 > /tmp/want
    cat /tmp/want >> $W/data
    bg r pull $TB/data
    waitfor $WAIT has r "$(cat /tmp/want)"
    ctl close
    if waitfor $WAIT ended r && [ "$(rc r)" = 0 ] && [ "$(out r)" = "$(cat /tmp/want)" ]; then ok $C.batch-all-in-order
    else fail $C.batch-all-in-order "cat: rc $(rc r), $(out r | wc -l) lines $(err r)"; fi
    cleanup r
}

topics() {
    V=$1 C=topic.$1
    M=/mnt/$V M1=/mnt/$V-g1 M2=/mnt/$V-g2 MW=/mnt/$V-w MB=/mnt/$V-b
    # Plain 9P2000 sessions get stream reads unless the aname asks for
    # the Linux read loop rule.
    sfx=""; [ $V = 9p2000 ] && sfx=":linux"
    for mp in "$M $sfx" "$M1 g1$sfx" "$M2 g2$sfx" "$MW w$sfx" "$MB $sfx:batch"; do
        set -- $mp
        if ! mount9p $1 "$TOPIC_PORT" $V "${2:-}" 2> /tmp/mount.err; then
            fail $C.mount "$1 (aname '${2:-}'): $(cat /tmp/mount.err)"
            return
        fi
    done
    ok $C.mount
    c_rendezvous; c_head; c_whileread; c_big; c_capacity; c_split; c_groups
    c_offset; c_reset; c_close; c_killed; c_bad; c_rmdir; c_timeout; c_kernel_limit; c_size_limit; c_nonblock; c_write_errors; c_nonblock_write; c_partial; c_cli; c_batch
    for mp in $M $M1 $M2 $MW $MB; do
        umount $mp 2> /tmp/e || { fail $C.umount "$mp: $(cat /tmp/e)"; return; }
    done
    ok $C.umount
}

# ---- issue 13: the kernel's cache modes ---------------------------------------

# Users mount with cache=loose or cache=mmap out of habit: the tour's
# commands (rendezvous with cat and `>>`, `>`, head, while-read, reset,
# close, a killed reader, bad commands) work there as with the default
# (cache=none), and a ctl read shows a change made just before; but for
# cache=loose on 6.1 (c_loose_61).
c_ctl_fresh() {
    topic ctl-fresh
    a=$(cat $T/ctl | grep '^capacity')
    ctl "capacity 7"
    b=$(cat $T/ctl | grep '^capacity')
    cat $T/offset > /dev/null
    bg w push $W/data one
    waitfor $WAIT sh -c 'grep -qx "pending 1" $1' sh $T/ctl
    c=$(grep '^pending' $T/ctl)
    got=$(timeout $WAIT head -n 1 $T/data)
    o=$(cat $T/offset)
    if [ "$a" = "capacity 0" ] && [ "$b" = "capacity 7" ] && [ "$c" = "pending 1" ] && [ "$got" = one ] && [ "$o" = 1 ]
    then ok $C.ctl-fresh
    else fail $C.ctl-fresh "ctl read '$a' then '$b' after capacity 7, '$c' after a push; head '$got', offset '$o'"; fi
    cleanup w
}

# 6.1's cache=loose keeps writes in the page cache and reads from it: a
# push returns with no reader, a bad ctl command seems accepted, reads see
# end of file. Unsupported there (README); this check shows it still is.
c_loose_61() {
    topic loose-61
    if ctl bogus 2> /tmp/e; then
        ok $C.unsupported-on-6.1 "(the page cache takes writes: a bad ctl command is 'accepted')"
    else
        fail $C.unsupported-on-6.1 "a bad ctl command was refused ($(cat /tmp/e)): does cache=loose work on $KERNEL now? run the full checks"
    fi
}

cachemode() {
    CM=$1 V=$1 C=cache.$1
    M=/mnt/$CM M1=/mnt/$CM-g1 M2=/mnt/$CM-g2 MW=/mnt/$CM-w
    for mp in "$M" "$M1 g1" "$M2 g2" "$MW w"; do
        set -- $mp
        if ! mount9p $1 "$TOPIC_PORT" 9p2000.L "${2:-}" "cache=$CM" 2> /tmp/mount.err; then
            fail $C.mount "$1: $(cat /tmp/mount.err)"
            return
        fi
    done
    ok $C.mount
    case "$KERNEL:$CM" in
    6.1.*:loose) c_loose_61 ;;
    *) c_rendezvous; c_head; c_whileread; c_groups; c_reset; c_close; c_killed; c_bad; c_ctl_fresh ;;
    esac
    for mp in $M $M1 $M2 $MW; do
        umount $mp 2> /tmp/e || { fail $C.umount "$mp: $(cat /tmp/e)"; return; }
    done
    ok $C.umount
}

# ---- issue 13: `dchan mount` as root: the kernel's 9P client -------------------

mounthelper() {
    C=mount-helper
    H=/mnt/helper HW=/mnt/helper-w HG=/mnt/helper-g
    if ! command -v dchan > /dev/null; then fail $C.mount "no dchan in the guest"; return; fi
    export DCHAN_ADDR="tcp!$SERVER!$TOPIC_PORT"
    if ! timeout $WAIT dchan mount $H --writers $HW 2> /tmp/e || ! timeout $WAIT dchan mount --group g $HG 2>> /tmp/e; then
        fail $C.mount "$(cat /tmp/e)"; return
    fi
    types=$(for d in $H $HW $HG; do awk -v d=$d '$2 == d { print $3 }' /proc/mounts; done | tr '\n' ' ')
    if [ "$types" = "9p 9p 9p " ]; then ok $C.mount; else fail $C.mount "mounted as '$types'"; fi
    T=$H/helper
    mkdir $T && cat $HG/helper/offset > /dev/null
    bg w push $HW/helper/data hello
    a=$(timeout $WAIT head -n 1 $T/data 2> /tmp/e)
    b=$(timeout $WAIT head -n 1 $HG/helper/data 2>> /tmp/e)
    waitfor $WAIT ended w
    if [ "$a $b" = "hello hello" ] && [ "$(rc w)" = 0 ]; then ok $C.read-write
    else fail $C.read-write "default group got '$a', group g '$b', push rc $(rc w) $(cat /tmp/e)"; fi
    ctl close 2> /dev/null; stop w
    if dchan umount $H && dchan umount $HW && dchan umount $HG 2> /tmp/e && ! grep -q helper /proc/mounts
    then ok $C.umount; else fail $C.umount "$(cat /tmp/e) $(grep helper /proc/mounts)"; fi
}

# ---- issue 16: many nested topics ---------------------------------------------

# MANY_PORT serves MANY_LEAVES topics five levels deep (made by the host,
# tests/linux_client.rs): `ls -R` and `find` list them all, and the root's
# `topics` file has a line for each.
many() {
    M=/mnt/many C=many
    if ! mount9p $M "$MANY_PORT" 9p2000.L 2> /tmp/mount.err; then
        fail $C.mount "$(cat /tmp/mount.err)"; return
    fi
    n=$(timeout 900 ls -R $M 2> /tmp/e | grep -cx data)
    if [ "$n" = "$MANY_LEAVES" ]; then ok $C.ls-R "$n topics"
    else fail $C.ls-R "ls -R shows $n data files of $MANY_LEAVES: $(cat /tmp/e)"; fi
    n=$(timeout 900 find $M -name data 2> /tmp/e | wc -l)
    if [ "$n" = "$MANY_LEAVES" ]; then ok $C.find "$n topics"
    else fail $C.find "find shows $n data files of $MANY_LEAVES: $(cat /tmp/e)"; fi
    n=$(timeout 300 cat $M/topics 2> /tmp/e | wc -l)
    if [ "$n" = "$((MANY_LEAVES + 1))" ]; then ok $C.topics-file
    else fail $C.topics-file "the topics file has $n lines for $MANY_LEAVES topics: $(cat /tmp/e)"; fi
    umount $M
}

# ---- issue 10: a shell loop on the mount as a pipeline stage -----------------

# tests/linux_client.rs runs `dchan run --name gpipe --replicas 2=0 'cat |
# tr a-z A-Z'` on the host: stage 2 has no copy there, and this loop is its
# only one. It reads gpipe/2 as the stage's group ("pipeline"), writes
# gpipe/3 from a writers' mount, holds gpipe/2.copies open while it works
# (a process holding it, so it counts as a live copy) and, as the last
# copy, closes gpipe/3.
# The host checks what came out (host.pipeline).
pipeline() {
    C=pipeline P=/mnt/pipe PW=/mnt/pipe-w
    if ! mount9p $P "$TOPIC_PORT" 9p2000.L pipeline 2> /tmp/e || ! mount9p $PW "$TOPIC_PORT" 9p2000.L w 2>> /tmp/e; then
        fail $C.mount "$(cat /tmp/e)"; return
    fi
    if ! waitfor 120 test -e $P/gpipe/2/data; then fail $C.stage "no gpipe/2 from the host"; return; fi
    sleep 100000 < $P/gpipe/2.copies/data & holder=$!   # a live copy while it runs
    timeout 120 sh -c 'while read l; do echo "$l" | tr a-z A-Z; done < $1/gpipe/2/data >> $2/gpipe/3/data' sh $P $PW 2> /tmp/e
    rc=$?
    kill $holder; wait $holder 2> /dev/null
    waitfor 10 grep -qx 'readers 0' $P/gpipe/2.copies/ctl
    copies=$(grep '^readers' $P/gpipe/2.copies/ctl)
    if [ $rc = 0 ]; then ok $C.stage; else fail $C.stage "loop rc $rc $(cat /tmp/e)"; fi
    # (Once closed, the host's run ends and removes the topics.)
    if [ "$copies" = "readers 0" ] && echo close >> $PW/gpipe/3/ctl 2> /tmp/e; then ok $C.close
    else fail $C.close "gpipe/2.copies had '$copies' after the loop; close: $(cat /tmp/e)"; fi
    umount $P; umount $PW
}

echo "kernel $KERNEL"
if [ -n "${RAMFS_PORT:-}" ]; then
    for V in $DIALECTS; do ramfs $V; done
fi
if [ -n "${TOPIC_PORT:-}" ]; then
    for V in ${TOPIC_DIALECTS:-$DIALECTS}; do topics $V; done
    for mode in ${CACHE_MODES-loose mmap}; do cachemode $mode; done
    mounthelper
    pipeline
fi
if [ -n "${MANY_PORT:-}" ]; then
    many
fi
if [ -n "${SECURE_PORT:-}" ]; then
    . ./security.sh
fi
if [ -n "${JS_A_PORT:-}" ]; then
    . ./jetstream.sh
fi
if [ -n "${DURABLE_PORT:-}" ]; then
    . ./durable.sh
fi
echo "CHECKS-DONE"
