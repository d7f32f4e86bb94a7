#!/bin/sh
# pipeline.sh: `stage1 | stage2 | stage3` where each `|` is a topic, so each
# stage can run on another machine (give each the same $DCHAN_ADDR).
# stage1 emits the numbers 1..N; stage2 turns each n into "n n*n"; stage3
# collects the lines. When a stage's input ends it closes its output topic,
# so end of stream flows down the pipeline and every stage exits by itself.
# The topics have capacity 0: each push waits for the next stage to take it,
# like an unbuffered pipe.
#
# Run it against a server:
#     dchan serve &
#     examples/pipeline.sh
# It talks to $DCHAN_ADDR (default tcp!127.0.0.1!5640) with the dchan CLI
# only, no right to mount. It exits 0 when stage3 got every line, in order,
# with the right squares, 1 otherwise.
#
# The same with a Linux mount (mount -t 9p -o trans=tcp,port=5640 127.0.0.1 /n/dchan),
# each line on any machine that mounts the server:
#     mkdir /n/dchan/numbers /n/dchan/squares
#     { seq 1 20 >> /n/dchan/numbers/data; echo close >> /n/dchan/numbers/ctl; } &      # stage1
#     { while read -r n; do echo "$n $((n * n))"; done < /n/dchan/numbers/data \
#           >> /n/dchan/squares/data; echo close >> /n/dchan/squares/ctl; } &         # stage2
#     cat /n/dchan/squares/data                                                       # stage3
# Write with >>, not >: on Linux >= 6.8 a truncating open (>) of data waits
# for as long as another process on the same mount is blocked reading it.
# (Here each topic has one reader, which reads all that was written, so one
# mount will do; with several readers on a mount, see work-queue.sh.)

set -eu

: "${DCHAN_ADDR:=tcp!127.0.0.1!5640}"
export DCHAN_ADDR
N=20
NUMBERS="pipeline-$$-numbers"
SQUARES="pipeline-$$-squares"
dir=$(mktemp -d)
pids=""

fail() {
	echo "pipeline: FAIL: $*" >&2
	exit 1
}

# On any exit: stop our own background jobs, remove the topics and the files.
cleanup() {
	for p in $pids; do kill "$p" 2>/dev/null || :; done
	dchan rm "$NUMBERS" 2>/dev/null || :
	dchan rm "$SQUARES" 2>/dev/null || :
	rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

echo "server $DCHAN_ADDR"
dchan ls -q >/dev/null || fail "no server at $DCHAN_ADDR (start one with: dchan serve &)"

echo "create $NUMBERS and $SQUARES (capacity 0)"
dchan create "$NUMBERS"
dchan create "$SQUARES"

# stage1: emit 1..N into NUMBERS, then close it.
stage1() {
	seq 1 "$N" | dchan push "$NUMBERS"
	echo "stage1: pushed $N numbers; close $NUMBERS"
	dchan close "$NUMBERS"
}

# stage2: NUMBERS -> "n n*n" -> SQUARES, until NUMBERS is closed; then close SQUARES.
stage2() {
	dchan pull --follow "$NUMBERS" | while IFS= read -r n; do
		echo "$n $((n * n))"
	done | dchan push "$SQUARES"
	echo "stage2: input ended; close $SQUARES"
	dchan close "$SQUARES"
}

# stage3: collect SQUARES until it is closed.
stage3() {
	dchan pull --follow "$SQUARES" | while IFS= read -r line; do
		echo "stage3: $line"
		echo "$line" >>"$dir/out"
	done
	echo "stage3: end of stream"
}

: >"$dir/out"
stage3 &
pids="$pids $!"
stage2 &
pids="$pids $!"
stage1 &
pids="$pids $!"
for p in $pids; do wait "$p" || fail "a stage failed"; done
pids=""

# Check: every n from 1 to N, in order, with its square.
seq 1 "$N" | while read -r n; do echo "$n $((n * n))"; done >"$dir/expected"
cmp -s "$dir/expected" "$dir/out" || fail "stage3 got $(wc -l <"$dir/out" | tr -d ' ') lines, not the $N expected in order"
echo "ok: $N numbers went through 3 stages over 2 topics, in order, none lost"
