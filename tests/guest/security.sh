# Issue 11 in the guest, sourced by linux.sh when SECURE_PORT is set:
# - SECURE_PORT: a server whose access rules give alice everything on
#   sec-* and bob only read there; the kernel mounts it as uname=alice and
#   uname=bob and gets EACCES exactly where the rules say.
# - TUNNEL_PORT: `dchan tunnel` on the host, carrying plaintext 9P to a
#   TLS listener with client certificates; the mount's uname (mallory) is
#   not who the server sees: the tunnel's certificate (alice) is.

# app FILE TEXT: append TEXT to FILE; the shell's own error (a refused
# open) goes to this command's stderr.
app() { sh -c 'printf "%s\n" "$2" >> "$1"' app "$1" "$2"; }

# The kernel's default for 9p2000.L and .u (access=user) attaches once
# per local uid with an empty uname and the numeric uid; access=any keeps
# the one attach with the mount's uname, the user the rules name.
secure() {
    V=$1; C=sec.$V; A=/mnt/sec-a-$V; B=/mnt/sec-b-$V; T=sec-$V
    if ! mount9p $A $SECURE_PORT $V "" uname=alice,access=any 2> /tmp/e || ! mount9p $B $SECURE_PORT $V "" uname=bob,access=any 2>> /tmp/e; then
        fail $C.mount "$(cat /tmp/e)"; return
    fi
    if mkdir $A/$T 2> /tmp/e && app $A/$T/ctl "capacity 5" 2>> /tmp/e && app $A/$T/data one 2>> /tmp/e
    then ok $C.alice-admin-push; else fail $C.alice-admin-push "$(cat /tmp/e)"; fi
    if app $B/$T/data two 2> /tmp/e; then fail $C.bob-push "bob's push went through"
    elif grep -q "Permission denied" /tmp/e; then ok $C.bob-push "EACCES"
    else fail $C.bob-push "$(cat /tmp/e)"; fi
    if rmdir $B/$T 2> /tmp/e; then fail $C.bob-rmdir "bob removed the topic"
    elif grep -q "Permission denied" /tmp/e && [ -d $A/$T ]; then ok $C.bob-rmdir "EACCES"
    else fail $C.bob-rmdir "$(cat /tmp/e)"; fi
    if app $B/$T/ctl reset 2> /tmp/e; then fail $C.bob-reset "bob reset the topic"
    elif grep -q "Permission denied" /tmp/e; then ok $C.bob-reset "EACCES"
    else fail $C.bob-reset "$(cat /tmp/e)"; fi
    if mkdir $B/other-$V 2> /tmp/e; then fail $C.bob-mkdir "bob made a topic"
    elif grep -q "Permission denied" /tmp/e; then ok $C.bob-mkdir "EACCES"
    else fail $C.bob-mkdir "$(cat /tmp/e)"; fi
    got=$(timeout $WAIT head -n 1 $B/$T/data 2> /tmp/e)
    if [ "$got" = one ]; then ok $C.bob-pull; else fail $C.bob-pull "got '$got' $(cat /tmp/e)"; fi
    modes="$(stat -c %a $A/$T/data) $(stat -c %a $B/$T/data) $(stat -c %a $B/$T/ctl)"
    if [ "$modes" = "666 444 444" ]; then ok $C.modes "$modes"; else fail $C.modes "alice data, bob data, bob ctl: $modes"; fi
    umount $A; umount $B
}

tunneled() {
    V=$1; C=tunnel.$V; M=/mnt/tun-$V; T=tun-$V
    if ! mount9p $M $TUNNEL_PORT $V "" uname=mallory,access=any 2> /tmp/e; then fail $C.mount "$(cat /tmp/e)"; return; fi
    ok $C.mount
    if mkdir $M/$T 2> /tmp/e && app $M/$T/ctl "capacity 5" 2>> /tmp/e; then ok $C.mkdir; else fail $C.mkdir "$(cat /tmp/e)"; return; fi
    bg w pushn $M/$T/data 3 m
    waitfor $WAIT ended w
    got=$(timeout $WAIT head -n 3 $M/$T/data 2> /tmp/e | tr '\n' ' ')
    if [ "$(rc w)" = 0 ] && [ "$got" = "m1 m2 m3 " ]; then ok $C.push-pull
    else fail $C.push-pull "push rc $(rc w) $(err w), pulled '$got' $(cat /tmp/e)"; fi
    umount $M
}

for V in 9p2000.L 9p2000.u; do secure $V; done
if [ -n "${TUNNEL_PORT:-}" ]; then
    for V in 9p2000.L 9p2000.u; do tunneled $V; done
fi
