# Issue 8 in the guest, sourced by linux.sh when JS_A_PORT is set: two
# `dchan serve --nats` servers on the host (JS_A_PORT, JS_B_PORT) share
# their topics through one NATS JetStream. The kernel mounts both at once;
# what is made, written or closed on one mount is seen on the other.

jetstream() {
    V=9p2000.L C=js
    A=/mnt/js-a AW=/mnt/js-a-w B=/mnt/js-b
    for mp in "$A $JS_A_PORT" "$AW $JS_A_PORT w" "$B $JS_B_PORT"; do
        set -- $mp
        if ! mount9p $1 $2 $V "${3:-}" 2> /tmp/e; then fail $C.mount "$1: $(cat /tmp/e)"; return; fi
    done
    ok $C.mount

    # A topic made on A is a directory on B.
    if mkdir $A/js-t 2> /tmp/e && waitfor $WAIT test -e $B/js-t/data; then ok $C.mkdir-a-seen-on-b
    else fail $C.mkdir-a-seen-on-b "$(cat /tmp/e); B lists: $(ls $B | tr '\n' ' ')"; return; fi

    # `>>` on A's mount is read by `cat` on B's (a rendezvous: capacity 0).
    bg w push $AW/js-t/data hello
    got=$(timeout $WAIT head -n 1 $B/js-t/data 2> /tmp/e)
    waitfor $WAIT ended w
    if [ "$got" = hello ] && [ "$(rc w)" = 0 ]; then ok $C.a-to-b
    else fail $C.a-to-b "B read '$got' $(cat /tmp/e), push rc $(rc w) $(err w)"; fi
    stop w

    # Two cats of one group, one per mount, split the messages; close on
    # A ends the reader on B.
    mkdir $A/js-split && echo "capacity 100" >> $A/js-split/ctl
    waitfor $WAIT test -e $B/js-split/data
    bg r1 pull $A/js-split/data
    bg r2 pull $B/js-split/data
    sleep $BLOCK
    bg w pushn $AW/js-split/data 40 m
    waitfor 60 ended w
    # Let both readers take what they will before the close.
    waitfor $WAIT sh -c "[ \$(cat /tmp/r1.out /tmp/r2.out | wc -l) -ge 40 ]"
    echo close >> $A/js-split/ctl
    waitfor $WAIT ended r1; waitfor $WAIT ended r2
    n1=$(out r1 | wc -l) n2=$(out r2 | wc -l)
    all=$( (out r1; out r2) | sort | tr '\n' ' ')
    want=$(seqlines m 40 | sort | tr '\n' ' ')
    if [ "$all" = "$want" ] && [ $n1 -gt 0 ] && [ $n2 -gt 0 ] && [ "$(rc w)" = 0 ] && [ "$(rc r1)" = 0 ] && [ "$(rc r2)" = 0 ]; then
        ok $C.split-across-servers "($n1 on A + $n2 on B)"
    else
        fail $C.split-across-servers "A got $n1, B got $n2, union same: $([ "$all" = "$want" ] && echo yes || echo no); push rc $(rc w) $(err w); cat rc $(rc r1) $(rc r2) $(err r1) $(err r2)"
    fi
    stop w; stop r1; stop r2

    # The CLI against A and against B agree: the same topics, and a line
    # pushed through A is pulled through B.
    if command -v dchan > /dev/null; then
        la=$(DCHAN_ADDR="tcp!$SERVER!$JS_A_PORT" timeout $WAIT dchan ls 2> /tmp/e | awk 'NR > 1 { print $1 }' | tr '\n' ' ')
        lb=$(DCHAN_ADDR="tcp!$SERVER!$JS_B_PORT" timeout $WAIT dchan ls 2>> /tmp/e | awk 'NR > 1 { print $1 }' | tr '\n' ' ')
        echo "capacity 5" >> $A/js-t/ctl
        echo from-cli | DCHAN_ADDR="tcp!$SERVER!$JS_A_PORT" timeout $WAIT dchan push js-t 2>> /tmp/e
        got=$(DCHAN_ADDR="tcp!$SERVER!$JS_B_PORT" timeout $WAIT dchan pull js-t -n 1 2>> /tmp/e)
        if [ -n "$la" ] && [ "$la" = "$lb" ] && [ "$got" = from-cli ]; then ok $C.cli-a-and-b "$la"
        else fail $C.cli-a-and-b "ls A '$la', ls B '$lb', pulled '$got' $(cat /tmp/e)"; fi
    fi

    # rmdir on B removes the topic everywhere.
    if rmdir $B/js-split 2> /tmp/e && waitfor $WAIT sh -c "! test -e $A/js-split"; then ok $C.rmdir-b-gone-on-a
    else fail $C.rmdir-b-gone-on-a "$(cat /tmp/e)"; fi
    umount $A; umount $AW; umount $B
}

jetstream
