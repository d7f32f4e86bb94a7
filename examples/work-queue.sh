#!/bin/sh
# work-queue.sh: a work queue. One producer pushes jobs into a topic; three
# workers in the same (default) reader group share them, so each job is done
# exactly once, by whichever worker was waiting first. The topic holds at
# most 2 jobs nobody has taken: past that, the producer waits (it is shown
# blocked before the workers start). Nothing is dropped to make room.
#
# Run it against a server:
#     dchan serve &
#     examples/work-queue.sh
# It talks to $DCHAN_ADDR (default tcp!127.0.0.1!5640), e.g.
#     DCHAN_ADDR='tcp!queue.example!5640' examples/work-queue.sh
# It needs only the dchan CLI on $PATH, no right to mount. It exits 0 when
# every job was done exactly once, 1 otherwise.
#
# The same with Linux mounts (mount -t 9p -o trans=tcp,port=5640 HOST /n/dchan),
# the producer on one machine, the workers on others:
#     mkdir /n/dchan/jobs
#     echo capacity 2 >> /n/dchan/jobs/ctl
#     seq 1 30 | sed 's/^/job-/' >> /n/dchan/jobs/data    # the producer: waits at 2 pending
#     cat /n/dchan/jobs/ctl                                 # pending 2, blocked_writers 1
#     while read -r job; do echo "did $job"; done < /n/dchan/jobs/data   # a worker; start 3
#     echo close >> /n/dchan/jobs/ctl      # once the producer is done: workers drain, then end
# (`cat /n/dchan/jobs/data` is the simplest worker: it prints each job it takes.)
# Write with >>, not >: on Linux >= 6.8 a truncating open (>) of data waits
# for as long as another process on the same mount is blocked reading it.
# Give writers a mount of their own (another machine, or a second mount):
# on Linux >= 6.8 what a process writes to data raises the file's size as
# that mount sees it, and a reader there whose offset is below that size
# gets several messages in one read(2), and "No data available" instead of
# end of file once the topic is closed (every message still arrives).

set -eu

: "${DCHAN_ADDR:=tcp!127.0.0.1!5640}"
export DCHAN_ADDR
JOBS=30
WORKERS=3
CAPACITY=2
TOPIC="work-queue-$$"
dir=$(mktemp -d)
pids=""

fail() {
	echo "work-queue: FAIL: $*" >&2
	exit 1
}

# On any exit: stop our own background jobs, remove the topic and the files.
cleanup() {
	for p in $pids; do kill "$p" 2>/dev/null || :; done
	dchan rm "$TOPIC" 2>/dev/null || :
	rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

# A short pause for polling loops (fractional sleep where there is one).
pause() { sleep 0.1 2>/dev/null || sleep 1; }

echo "server $DCHAN_ADDR"
dchan ls -q >/dev/null || fail "no server at $DCHAN_ADDR (start one with: dchan serve &)"

echo "create $TOPIC with capacity $CAPACITY"
dchan create "$TOPIC" --capacity "$CAPACITY"

echo "producer: push job-1 .. job-$JOBS"
seq 1 "$JOBS" | sed 's/^/job-/' | dchan push "$TOPIC" &
producer=$!
pids="$pids $producer"

# With no worker yet, the producer pushes $CAPACITY jobs and then waits.
tries=0
until dchan stat "$TOPIC" | grep -qx 'blocked_writers 1'; do
	tries=$((tries + 1))
	[ "$tries" -le 300 ] || fail "the producer never blocked"
	pause
done
pending=$(dchan stat "$TOPIC" | sed -n 's/^pending //p')
kill -0 "$producer" 2>/dev/null || fail "the producer finished instead of waiting"
echo "producer is blocked: $pending jobs pending (capacity $CAPACITY), no worker yet"
[ "$pending" = "$CAPACITY" ] || fail "pending is $pending, not $CAPACITY"

# Each worker takes one job at a time, as long as the topic is open.
worker() {
	dchan pull --follow "$TOPIC" | while IFS= read -r job; do
		echo "worker $1: $job"
		echo "$job" >>"$dir/done.$1"
	done
}
w=1
while [ "$w" -le "$WORKERS" ]; do
	: >"$dir/done.$w"
	worker "$w" &
	pids="$pids $!"
	w=$((w + 1))
done
echo "started $WORKERS workers"

wait "$producer" || fail "the producer failed"
echo "producer done; close $TOPIC so the workers end once it is drained"
dchan close "$TOPIC"
for p in $pids; do
	[ "$p" = "$producer" ] && continue
	wait "$p" || fail "a worker failed"
done
pids=""

# Check: every job done, none twice.
seq 1 "$JOBS" | sed 's/^/job-/' | sort >"$dir/expected"
cat "$dir"/done.* | sort >"$dir/done"
dups=$(uniq -d "$dir/done")
[ -z "$dups" ] || fail "done twice: $dups"
cmp -s "$dir/expected" "$dir/done" || fail "jobs lost: $(comm -23 "$dir/expected" "$dir/done" | tr '\n' ' ')"
w=1
while [ "$w" -le "$WORKERS" ]; do
	echo "worker $w did $(wc -l <"$dir/done.$w" | tr -d ' ') jobs"
	w=$((w + 1))
done
echo "ok: $JOBS jobs, each done exactly once by $WORKERS workers"
