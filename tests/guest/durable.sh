# Issue 9 in the guest, sourced by linux.sh when DURABLE_PORT is set: a
# `dchan serve --data DIR` on the host that the host kills with SIGKILL
# and starts again on the same DIR and port when the guest asks (a
# "restart" pushed to the topic durable-restart on TOPIC_PORT; the host
# answers "up" on durable-up). What `>>` wrote and `cat` did not take
# before the crash is read through a new mount after it.

durable() {
    C=durable D=/mnt/dur DW=/mnt/dur-w S=/mnt/dur-sig
    if ! mount9p $D $DURABLE_PORT 9p2000.L 2> /tmp/e || ! mount9p $DW $DURABLE_PORT 9p2000.L w 2>> /tmp/e \
        || ! mount9p $S $TOPIC_PORT 9p2000.L 2>> /tmp/e; then
        fail $C.mount "$(cat /tmp/e)"; return
    fi
    mkdir -p $S/durable-restart $S/durable-up
    mkdir $D/dur-t $D/dur-idle && echo "capacity 100" >> $D/dur-t/ctl && cat $D/dur-t/offset > /dev/null
    bg w pushn $DW/dur-t/data 10 m
    waitfor $WAIT ended w
    got=$(timeout $WAIT head -n 3 $D/dur-t/data 2> /tmp/e | tr '\n' ' ')
    if [ "$(rc w)" = 0 ] && [ "$got" = "m1 m2 m3 " ]; then ok $C.before-crash
    else fail $C.before-crash "push rc $(rc w) $(err w), head got '$got' $(cat /tmp/e)"; fi
    # A reader blocked on the server when it dies.
    bg r pull $D/dur-idle/data
    sleep $BLOCK
    bg sig push $S/durable-restart/data restart
    up=$(timeout 60 head -n 1 $S/durable-up/data 2> /tmp/e)
    if [ "$up" != up ]; then fail $C.restart "the host did not restart the server: '$up' $(cat /tmp/e)"; return; fi
    if waitfor $WAIT ended r && [ "$(rc r)" != 0 ]; then ok $C.blocked-read-fails "cat rc $(rc r): $(err r)"
    else fail $C.blocked-read-fails "cat rc $(rc r) $(err r)"; fi
    stop r; stop sig
    umount -l $D; umount -l $DW
    if ! mount9p $D $DURABLE_PORT 9p2000.L 2> /tmp/e || ! mount9p $DW $DURABLE_PORT 9p2000.L w 2>> /tmp/e; then
        fail $C.remount "$(cat /tmp/e)"; return
    fi
    got=$(timeout $WAIT head -n 7 $D/dur-t/data 2> /tmp/e | tr '\n' ' ')
    if [ "$got" = "m4 m5 m6 m7 m8 m9 m10 " ]; then ok $C.after-crash-cat
    else fail $C.after-crash-cat "got '$got' $(cat /tmp/e)"; fi
    bg w push $DW/dur-t/data after
    got=$(timeout $WAIT head -n 1 $D/dur-t/data 2> /tmp/e)
    waitfor $WAIT ended w
    if [ "$got" = after ] && [ "$(rc w)" = 0 ]; then ok $C.after-crash-push
    else fail $C.after-crash-push "got '$got' $(cat /tmp/e), push rc $(rc w) $(err w)"; fi
    umount $D; umount $DW; umount $S
}

durable
