#!/usr/bin/env bash
# System calls and context switches per forwarded request: each binary and nginx, same load.
#
#   bash benches/load/syscalls.sh [NAME=]BINARY...    # e.g. base=/tmp/a new=target/release/portcullis
#
# The setup of ab.sh (an nginx origin, 3-byte body, keep-alive; each binary as a forward proxy
# with its access log on, to a file; nginx as a reverse proxy with upstream keepalive 64, two
# workers, access log on), one target at a time, each started fresh: a 1 s warm-up, then
# `perf stat` on the proxy's processes over a `wrk -t1 -cC` run of SECS seconds, with a
# tracepoint per system call that matters. Prints per target the count of each per request
# (`write` of 8 bytes to an eventfd is how one tokio runtime wakes another; `fcntl` is how a
# pooled connection moves between workers). The counts are exact, the CPU figure is not (the
# tracepoints slow every system call): compare counts with it, and CPU with ab.sh.
# CONNS (default 128), SECS (default 4). Needs nginx, wrk, perf; loopback only, ports from
# the kernel; everything started here is stopped on exit.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONNS=${CONNS:-128} SECS=${SECS:-4}
[ $# -ge 1 ] || { sed -n 2,15p "$0" >&2; exit 2; }
AB_TOOLS="nginx wrk perf python3" AB_TMP=portcullis-syscalls
# shellcheck source=benches/load/ab_lib.sh
. "$HERE/ab_lib.sh"
NAMES+=(nginx)
read -r OP PP AP NP < <(free_ports 4)
forward_setup

CALLS="read write recvfrom sendto readv writev epoll_wait epoll_ctl futex accept4 close fcntl setsockopt getsockopt"
EVENTS="task-clock,context-switches"
for s in $CALLS; do EVENTS+=",syscalls:sys_enter_$s"; done
printf '%-12s %9s %8s %8s' target requests "CPU µs" switches
for s in $CALLS; do printf ' %10s' "$s"; done
echo
for i in "${!NAMES[@]}"; do
    if [ "${NAMES[$i]}" = nginx ]; then
        nginx -e "$T/ne.log" -c "$T/n.conf" >/dev/null 2>&1 &
        pid=$!
        wait_port "$NP"
        sleep 0.3 # its workers
        pids="$(pgrep -P "$pid" | tr '\n' ',')$pid"
        args=("http://127.0.0.1:$NP/")
    else
        RUST_LOG=info "${BINS[$i]}" --config "$T/p.toml" >"$T/p.out" 2>"$T/p.log" &
        pid=$!
        wait_port "$PP"
        pids=$pid
        args=(-s "$HERE/absolute.lua" "http://127.0.0.1:$PP/" -- "127.0.0.1:$OP")
    fi
    PIDS+=("$pid")
    wrk -t1 -c"$CONNS" -d1s "${args[@]}" >/dev/null
    perf stat -x, -e "$EVENTS" -p "$pids" -o "$T/stat" &
    stat=$!
    sleep 0.2
    wrk -t1 -c"$CONNS" -d"${SECS}s" "${args[@]}" >"$T/wrk.out"
    kill -INT "$stat"
    wait "$stat" || true
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    n=$(awk '/requests in/ { print $1 }' "$T/wrk.out")
    # perf's CSV: value,unit,event,...; task-clock in ms.
    awk -F, -v n="$n" -v name="${NAMES[$i]}" -v calls="$CALLS" '
        /^[0-9.]+,/ { v[$3] = $1 }
        END {
            printf "%-12s %9d %8.1f %8.3f", name, n, v["task-clock"] * 1000 / n, v["context-switches"] / n
            k = split(calls, c, " ")
            for (j = 1; j <= k; j++) printf " %10.3f", v["syscalls:sys_enter_" c[j]] / n
            printf "\n"
        }' "$T/stat"
done
