#!/bin/sh
# fanout.sh: a fan-out with reader groups. Every group gets every message of
# a topic; the readers inside one group share that group's copy. Here group
# "billing" has two readers (they split the orders between them) and group
# "audit" has one (it sees every order, in order). Both groups are made to
# exist before the first push (reading the group's offset does that), since
# a group starts at the oldest message still held and a message is held only
# until every group then existing has taken it.
#
# Run it against a server:
#     dchan serve &
#     examples/fanout.sh
# It talks to $DCHAN_ADDR (default tcp!127.0.0.1!5640) with the dchan CLI
# only, no right to mount. It exits 0 when billing did each order exactly
# once and audit saw every order in order, 1 otherwise.
#
# The same with Linux mounts, one per group (the group is the attach name),
# and one for the producer:
#     mount -t 9p -o trans=tcp,port=5640,aname=billing 127.0.0.1 /n/billing
#     mount -t 9p -o trans=tcp,port=5640,aname=audit 127.0.0.1 /n/audit
#     mount -t 9p -o trans=tcp,port=5640 127.0.0.1 /n/dchan
#     mkdir /n/dchan/orders
#     cat /n/billing/orders/offset /n/audit/orders/offset    # both groups exist now
#     cat /n/billing/orders/data & cat /n/billing/orders/data & cat /n/audit/orders/data &
#     seq 1 20 | sed 's/^/order-/' >> /n/dchan/orders/data
#     echo close >> /n/dchan/orders/ctl                       # every cat ends
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
ORDERS=20
TOPIC="fanout-$$"
dir=$(mktemp -d)
pids=""

fail() {
	echo "fanout: FAIL: $*" >&2
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

echo "server $DCHAN_ADDR"
dchan ls -q >/dev/null || fail "no server at $DCHAN_ADDR (start one with: dchan serve &)"

echo "create $TOPIC with capacity 5 (a group may lag 5 orders behind)"
dchan create "$TOPIC" --capacity 5

echo "groups billing and audit start at offset" \
	"$(dchan offset "$TOPIC" --group billing) and $(dchan offset "$TOPIC" --group audit)"

# A reader: every message its group gets, until the topic is closed.
reader() { # GROUP NAME
	dchan pull --follow --group "$1" "$TOPIC" | while IFS= read -r msg; do
		echo "$2: $msg"
		echo "$msg" >>"$dir/$2"
	done
}
for r in billing-1 billing-2 audit; do
	: >"$dir/$r"
	reader "${r%-*}" "$r" &
	pids="$pids $!"
done

echo "push order-1 .. order-$ORDERS"
seq 1 "$ORDERS" | sed 's/^/order-/' | dchan push "$TOPIC"
echo "close $TOPIC: the readers drain it and end"
dchan close "$TOPIC"
for p in $pids; do wait "$p" || fail "a reader failed"; done
pids=""

# Check: billing (two readers) did each order once; audit saw all, in order.
seq 1 "$ORDERS" | sed 's/^/order-/' >"$dir/expected"
sort "$dir/expected" >"$dir/expected.sorted"
sort "$dir/billing-1" "$dir/billing-2" >"$dir/billing"
dups=$(uniq -d "$dir/billing")
[ -z "$dups" ] || fail "billing got twice: $dups"
cmp -s "$dir/expected.sorted" "$dir/billing" || fail "billing missed: $(comm -23 "$dir/expected.sorted" "$dir/billing" | tr '\n' ' ')"
cmp -s "$dir/expected" "$dir/audit" || fail "audit did not get every order in order"
echo "billing-1 took $(wc -l <"$dir/billing-1" | tr -d ' '), billing-2 took $(wc -l <"$dir/billing-2" | tr -d ' ')"
echo "ok: $ORDERS orders, billing got each once (split over 2 readers), audit got all $ORDERS in order"
