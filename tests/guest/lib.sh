# Helpers for the checks that run inside the QEMU guest (busybox sh).
# Sourced by linux.sh. Every check prints exactly one line:
#   CHECK <name> ok [note]      or      CHECK <name> FAIL <detail>
# Nothing here asserts on time: waits only bound how long a check may hang
# before it fails (WAIT), and BLOCK is how long a process must stay blocked
# before we call it blocked.

WAIT=${WAIT:-15}      # seconds before a wait that should succeed gives up
BLOCK=${BLOCK:-1}     # seconds a push or pull must stay blocked
SERVER=${SERVER:-10.0.2.2}

ok() { echo "CHECK $1 ok${2:+ $2}"; }
fail() { n=$1; shift; echo "CHECK $n FAIL $(echo "$*" | tr '\n' ' ' | cut -c1-400)"; }

# waitfor SECONDS CMD...: runs CMD every 0.1 s until it succeeds; false
# if it has not after SECONDS.
waitfor() {
    _t=$(($1 * 10)); shift
    while ! "$@"; do
        _t=$((_t - 1))
        [ $_t -gt 0 ] || return 1
        sleep 0.1
    done
}

# bg NAME CMD...: runs CMD (a command or function; functions exec or use
# builtins, so that the process doing the I/O is the one we track) in the
# background under a hard timeout. Its stdout, stderr, pid and, once it
# has ended, its exit status land in /tmp/NAME.{out,err,pid,rc}.
bg() {
    _n=$1; shift
    rm -f /tmp/$_n.out /tmp/$_n.err /tmp/$_n.pid /tmp/$_n.rc
    (
        "$@" > /tmp/$_n.out 2> /tmp/$_n.err &
        echo $! > /tmp/$_n.pid
        wait $!
        echo $? > /tmp/$_n.rc
    ) 2> /dev/null &   # (no "Killed" notices from the shell)
    waitfor 5 test -s /tmp/$_n.pid
}
ended() { test -e /tmp/$1.rc; }
running() { ! test -e /tmp/$1.rc; }
rc() { cat /tmp/$1.rc 2>/dev/null || echo running; }
out() { cat /tmp/$1.out 2>/dev/null; }
err() { tr '\n' ' ' < /tmp/$1.err 2>/dev/null; }
# stop NAME: kills a background process that is still running (a blocked
# read or write gets a Tflush) and waits for its status.
stop() {
    if running $1; then
        kill -9 "$(cat /tmp/$1.pid)" 2>/dev/null
        waitfor $WAIT ended $1
    fi
}
# has NAME TEXT: NAME's output is exactly TEXT (plus the newline).
has() { test "$(out $1)" = "$2"; }

# The processes checks run in the background (they exec, so the pid is
# the process that blocks in read or write).
pull() { exec cat "$1"; }
pull1() { exec head -n 1 "$1"; }
push() { exec sh -c 'printf "%s\n" "$1" >> "$2"' push "$2" "$1"; }
push_trunc() { exec sh -c 'printf "%s\n" "$1" > "$2"' push "$2" "$1"; }
# pushn FILE N PREFIX: N messages PREFIX1..PREFIXN through one open file.
pushn() { exec sh -c 'i=1; while [ $i -le $2 ]; do echo "$3$i"; i=$((i + 1)); done >> "$1"' pushn "$@"; }

# seqlines PREFIX N: the lines PREFIX1..PREFIXN, sorted as sort(1) does.
seqlines() { i=1; while [ $i -le $2 ]; do echo "$1$i"; i=$((i + 1)); done; }

# mount9p MOUNTPOINT PORT VERSION [ANAME [MORE-OPTIONS]]
mount9p() {
    mkdir -p "$1"
    _o="trans=tcp,port=$2,version=$3"
    [ -n "${4:-}" ] && _o="$_o,aname=$4"
    [ -n "${5:-}" ] && _o="$_o,$5"
    timeout $WAIT mount -t 9p -o "$_o" "$SERVER" "$1"
}
