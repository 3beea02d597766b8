#!/usr/bin/env bash
# Forwarding A/B: binaries against each other and against nginx, interleaved round by round.
#
#   bash benches/load/ab.sh [NAME=]BINARY...   # e.g. base=/tmp/a new=target/release/portcullis
#
# The cut of run.sh's throughput columns, for one question at a time: an nginx origin (one
# worker, 3-byte body, keep-alive), each binary as a forward proxy (access log on, to a file)
# and nginx as a reverse proxy with upstream keepalive 64 (2 workers, access log on), each
# started fresh per cell, `wrk -t1 -cC` for SECS seconds after a 1 s warm-up. Per cell: req/s,
# user and system CPU µs per request (/proc utime and stime of the proxy's processes over the
# timed run) and wrk's p99. ROUNDS rounds (default 5) of every target in turn at each of
# CONNS (default "16 128"), so a noisy minute spoils one sample of each; the medians are
# printed per target and concurrency. CLOSE=1 sends every request with `Connection: close`: a
# new client connection per request, the cost of accepting. Loopback only, ports from the
# kernel, bounded by ROUNDS × targets × (SECS + 3) s per concurrency; everything started here
# is stopped on exit.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROUNDS=${ROUNDS:-5} SECS=${SECS:-4} CONNS=${CONNS:-16 128}
[ $# -ge 1 ] || { sed -n 2,16p "$0" >&2; exit 2; }
AB_TOOLS="nginx wrk python3" AB_TMP=portcullis-ab
# shellcheck source=benches/load/ab_lib.sh
. "$HERE/ab_lib.sh"
NAMES+=(nginx)
read -r OP PP AP NP < <(free_ports 4)
forward_setup

ticks() { # ticks PID...: user and system clock ticks, summed
    local u=0 s=0 p a b
    for p in "$@"; do
        read -r a b < <(awk '{ sub(/.*\) /, ""); print $12, $13 }' "/proc/$p/stat")
        u=$((u + a)) s=$((s + b))
    done
    echo "$u $s"
}
hz=$(getconf CLK_TCK)
cell() { # cell INDEX CONNS: start the target, warm up, measure, stop; prints "rps user sys p99ms"
    local i=$1 c=$2 url args=() pid pids
    if [ "${NAMES[$i]}" = nginx ]; then
        nginx -e "$T/ne.log" -c "$T/n.conf" >/dev/null 2>&1 &
        pid=$! url="http://127.0.0.1:$NP/"
        wait_port "$NP"
        pids="$pid $(pgrep -P "$pid" | tr '\n' ' ')"
    else
        RUST_LOG=info "${BINS[$i]}" --config "$T/p.toml" >"$T/p.out" 2>"$T/p.log" &
        pid=$! url="http://127.0.0.1:$PP/"
        args=(-s "$HERE/absolute.lua" "$url" -- "127.0.0.1:$OP")
        wait_port "$PP"
        pids=$pid
    fi
    PIDS+=("$pid")
    [ ${#args[@]} = 0 ] && args=("$url")
    [ -n "${CLOSE:-}" ] && args=(-H "Connection: close" "${args[@]}")
    wrk -t1 -c"$c" -d1s "${args[@]}" >/dev/null
    local before after
    # shellcheck disable=SC2086 # a list of pids
    before=$(ticks $pids)
    wrk -t1 -c"$c" -d"${SECS}s" --latency "${args[@]}" >"$T/wrk.out"
    # shellcheck disable=SC2086
    after=$(ticks $pids)
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    awk -v b="$before" -v a="$after" -v hz="$hz" -v secs="$SECS" '
        /requests in/ { n = $1 }
        / 99%/ { p = $2; if (p ~ /us$/) p = p / 1000; else if (p ~ /ms$/) p = p + 0; else p = p * 1000 }
        END { split(b, x, " "); split(a, y, " ")
              printf "%d %.1f %.1f %.2f\n", n / secs, (y[1] - x[1]) * 1e6 / hz / n, (y[2] - x[2]) * 1e6 / hz / n, p }' "$T/wrk.out"
}

median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
for c in $CONNS; do
    declare -A R=() U=() S=() P=()
    for r in $(seq "$ROUNDS"); do
        for i in "${!NAMES[@]}"; do
            cell "$i" "$c" >"$T/cell" # not in a subshell: what it starts is in PIDS
            read -r rps user sys p99 <"$T/cell"
            R[$i]+=" $rps" U[$i]+=" $user" S[$i]+=" $sys" P[$i]+=" $p99"
        done
        echo "c=$c round $r done" >&2
    done
    echo "c=$c, medians of $ROUNDS rounds of ${SECS} s (wrk -t1):"
    printf '  %-12s %9s %8s %8s %8s   %s\n' target req/s "user µs" "sys µs" "p99 ms" "p99 samples"
    for i in "${!NAMES[@]}"; do
        # shellcheck disable=SC2086 # sample lists
        printf '  %-12s %9s %8s %8s %8s  %s\n' "${NAMES[$i]}" "$(median ${R[$i]})" \
            "$(median ${U[$i]})" "$(median ${S[$i]})" "$(median ${P[$i]})" "${P[$i]}"
    done
    unset R U S P
done
