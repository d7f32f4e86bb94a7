#!/bin/sh
# The Linux-mount forms in the header comments of examples/*.sh, as written,
# run in the QEMU guest against a `dchan serve` on the host, by
# tests/examples.rs (mount_forms_on_linux_*). By hand:
#     dchan serve --listen 'tcp!127.0.0.1!0' &       # note its PORT
#     scripts/guest run --kernel 6.12 --script tests/guest/examples.sh --env PORT=PORT
# Each check prints `CHECK <name> ok` or `CHECK <name> FAIL <detail>`, and
# the exit status is 1 if any failed. Workers and producers are on
# separate mounts where several readers share one, as the headers say.
S=${SERVER:-10.0.2.2}
P=$PORT
failed=0
ok() { echo "CHECK examples.$1 ok ${2:-}"; }
fail() { echo "CHECK examples.$1 FAIL ${2:-}"; failed=1; }
mkdir -p /n/dchan /n/p /n/billing /n/audit
mount -t 9p -o trans=tcp,port=$P $S /n/dchan || { fail mount; exit 1; }
mount -t 9p -o trans=tcp,port=$P $S /n/p || { fail mount; exit 1; }

# work queue: producer on /n/p ("one machine"), workers on /n/dchan
mkdir /n/dchan/jobs
echo capacity 2 >> /n/dchan/jobs/ctl
seq 1 30 | sed 's/^/job-/' >> /n/p/jobs/data &
prod=$!
i=0   # wait (at most 15 s) for the producer to block
until grep -qx 'blocked_writers 1' /n/dchan/jobs/ctl || [ $i -ge 150 ]; do sleep 0.1; i=$((i + 1)); done
st=$(grep -E '^(pending|blocked_writers) ' /n/dchan/jobs/ctl | tr '\n' ' ')
[ "$st" = "pending 2 blocked_writers 1 " ] && ok wq.blocked "$st" || fail wq.blocked "$st"
( while read -r job; do echo "did $job"; done < /n/dchan/jobs/data > /tmp/w1; echo "rc $?" > /tmp/w1.rc ) &
( while read -r job; do echo "did $job"; done < /n/dchan/jobs/data > /tmp/w2; echo "rc $?" > /tmp/w2.rc ) &
( cat /n/dchan/jobs/data > /tmp/w3; echo "rc $?" > /tmp/w3.rc ) &
wait $prod
echo close >> /n/dchan/jobs/ctl
wait
n=$(cat /tmp/w1 /tmp/w2 /tmp/w3 | sed 's/did //' | sort -u | wc -l); t=$(cat /tmp/w1 /tmp/w2 /tmp/w3 | wc -l)
rcs=$(cat /tmp/w1.rc /tmp/w2.rc /tmp/w3.rc | tr '\n' ' ')
[ "$n" = 30 ] && [ "$t" = 30 ] && [ "$rcs" = "rc 0 rc 0 rc 0 " ] && ok workqueue "$(wc -l < /tmp/w1) $(wc -l < /tmp/w2) $(wc -l < /tmp/w3)" || fail workqueue "$n unique of $t; $rcs"

# fanout as in the header
mount -t 9p -o trans=tcp,port=$P,aname=billing $S /n/billing
mount -t 9p -o trans=tcp,port=$P,aname=audit $S /n/audit
mkdir /n/dchan/orders
cat /n/billing/orders/offset /n/audit/orders/offset
( cat /n/billing/orders/data > /tmp/b1; echo "rc $?" > /tmp/b1.rc ) &
( cat /n/billing/orders/data > /tmp/b2; echo "rc $?" > /tmp/b2.rc ) &
( cat /n/audit/orders/data > /tmp/a; echo "rc $?" > /tmp/a.rc ) &
seq 1 20 | sed 's/^/order-/' >> /n/dchan/orders/data
echo close >> /n/dchan/orders/ctl
wait
seq 1 20 | sed 's/^/order-/' > /tmp/exp
rcs=$(cat /tmp/b1.rc /tmp/b2.rc /tmp/a.rc | tr '\n' ' ')
[ "$(sort /tmp/b1 /tmp/b2)" = "$(sort /tmp/exp)" ] && ok fanout.billing "$(wc -l < /tmp/b1) + $(wc -l < /tmp/b2)" || fail fanout.billing "$(cat /tmp/b1 /tmp/b2 | tr '\n' ' ')"
cmp -s /tmp/a /tmp/exp && ok fanout.audit || fail fanout.audit "$(tr '\n' ' ' < /tmp/a)"
[ "$rcs" = "rc 0 rc 0 rc 0 " ] && ok fanout.rc || fail fanout.rc "$rcs"

# pipeline as in the header, one mount
mkdir /n/dchan/numbers /n/dchan/squares
{ seq 1 20 >> /n/dchan/numbers/data; echo close >> /n/dchan/numbers/ctl; } &
{ while read -r n; do echo "$n $((n * n))"; done < /n/dchan/numbers/data \
      >> /n/dchan/squares/data; echo close >> /n/dchan/squares/ctl; } &
cat /n/dchan/squares/data > /tmp/sq
rc=$?
wait
seq 1 20 | while read -r n; do echo "$n $((n * n))"; done > /tmp/sqexp
cmp -s /tmp/sq /tmp/sqexp && [ $rc = 0 ] && ok pipeline || fail pipeline "rc $rc $(tr '\n' ' ' < /tmp/sq)"
exit $failed
