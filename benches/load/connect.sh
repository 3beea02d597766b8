#!/usr/bin/env bash
# CONNECT tunnel throughput, A/B: 100 MiB downloads through each binary's tunnel and direct,
# interleaved round by round, so that a noisy minute on a shared machine spoils one sample of
# each, not every sample of one.
#
#   bash benches/load/connect.sh [NAME=]BINARY...     # e.g. base=/tmp/a new=target/release/portcullis
#
# Measured as benches/load/run.sh measures its CONNECT column: `curl -p -x` against an nginx
# origin serving a 100 MiB file (sendfile on), one untimed download first (page cache, and each
# proxy once). Then ROUNDS rounds (default 7) of: direct, then every binary in turn. Prints per
# target the median MB/s, its share of the direct median, the CPU (utime+stime, mean over the
# rounds) per 100 MiB download of the proxy, the nginx worker and curl, and the samples. Loopback only, ports from the kernel, at most
# ~10 s per download; everything started here is stopped on exit.
# PIN=1 pins curl to CPU 0 and nginx and the proxies to CPU 1 (taskset): a diagnosis of how
# much the scheduler's placement of three busy tasks on two cores costs, not the measurement.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROUNDS=${ROUNDS:-7}
[ $# -ge 1 ] || { sed -n 2,13p "$0" >&2; exit 2; }
AB_TOOLS="nginx curl python3" AB_TMP=portcullis-connect
# shellcheck source=benches/load/ab_lib.sh
. "$HERE/ab_lib.sh"
ON0=() ON1=()
[ "${PIN:-0}" = 1 ] && ON0=(taskset -c 0) ON1=(taskset -c 1)
# One origin port, then a listen and an admin port per binary.
read -r -a PORTS < <(free_ports $((1 + 2 * ${#BINS[@]})))
OP=${PORTS[0]}
ORIGIN="127.0.0.1:$OP"

truncate -s 100M "$T/big.bin"
cat >"$T/o.conf" <<EOF
worker_processes 1; daemon off; user root; pid $T/o.pid; error_log $T/oe.log warn;
events { worker_connections 1024; }
http { access_log off; keepalive_timeout 300s; sendfile on;
 client_body_temp_path $T/b; proxy_temp_path $T/p; fastcgi_temp_path $T/f; uwsgi_temp_path $T/u; scgi_temp_path $T/s;
 server { listen 127.0.0.1:$OP; location = / { return 200 "ok\n"; } location = /big { alias $T/big.bin; } } }
EOF
${ON1[@]+"${ON1[@]}"} nginx -e "$T/oe.log" -c "$T/o.conf" >/dev/null 2>&1 &
PIDS+=("$!")
wait_port "$OP"

PPIDS=()
for i in "${!BINS[@]}"; do
    pp=${PORTS[$((1 + 2 * i))]} ap=${PORTS[$((2 + 2 * i))]}
    cat >"$T/p$i.toml" <<EOF
[proxy]
listen = "127.0.0.1:$pp"
admin_listen = "127.0.0.1:$ap"
[defaults]
tunnel_idle_timeout = "300s"
allow_private = true
[[upstream]]
name = "origin"
hosts = ["127.0.0.1"]
ports = [$OP]
EOF
    RUST_LOG=info ${ON1[@]+"${ON1[@]}"} "${BINS[$i]}" --config "$T/p$i.toml" >"$T/p$i.out" 2>"$T/p$i.err" &
    PIDS+=("$!") PPIDS+=("$!")
    wait_port "$pp"
done

ticks() { # ticks PID: utime+stime in clock ticks
    awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}
get() { # get PROXY_PORT|"": one download, its speed in B/s
    local via=()
    [ -n "$1" ] && via=(-p -x "http://127.0.0.1:$1")
    ${ON0[@]+"${ON0[@]}"} curl -s -m 10 ${via[@]+"${via[@]}"} "http://$ORIGIN/big" -o /dev/null -w '%{speed_download}' || echo 0
}

kids_ms() { # KIDS=CPU of this shell's finished children (the curls), in ms
    times >"$T/times" # not in a subshell: that one's children are not ours
    KIDS=$(awk 'NR == 2 { for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] } printf "%d", t * 1000 }' "$T/times")
}
NGW=$(pgrep -P "${PIDS[0]}" | head -1)
echo "nginx worker $NGW" >&2
measure() { # measure KEY PROXY_PORT PROXY_PID|"": one timed download, its samples appended
    local p0=0 n0 c0
    [ -n "$3" ] && p0=$(ticks "$3")
    kids_ms
    n0=$(ticks "$NGW") c0=$KIDS
    S[$1]+=" $(get "$2")"
    [ -n "$3" ] && C[$1]+=" $(($(ticks "$3") - p0))"
    N[$1]+=" $(($(ticks "$NGW") - n0))"
    kids_ms
    K[$1]+=" $((KIDS - c0))"
}

get "" >/dev/null
for i in "${!BINS[@]}"; do get "${PORTS[$((1 + 2 * i))]}" >/dev/null; done
declare -A S C N K
for r in $(seq "$ROUNDS"); do
    measure direct "" ""
    for i in "${!BINS[@]}"; do measure "$i" "${PORTS[$((1 + 2 * i))]}" "${PPIDS[$i]}"; done
    echo "round $r done" >&2
done

median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
mb() { awk -v b="$1" 'BEGIN { printf "%d", b / 1e6 }'; }
hz=$(getconf CLK_TCK)
mean_ms() { # mean_ms TICKS|MS SAMPLES...: mean of the samples in ms (ticks converted when TICKS)
    local unit=$1 t=0 n=0
    shift
    for x in "$@"; do t=$((t + x)) n=$((n + 1)); done
    [ "$unit" = TICKS ] && t=$((t * 1000 / hz))
    echo $((t / n))
}
# The sample lists are split into words on purpose.
# shellcheck disable=SC2086
direct=$(median ${S[direct]})
printf '%-12s %6s %5s  %-34s %s\n' target "MB/s" "%" "CPU ms/download: proxy nginx curl" "samples (MB/s)"
row() { # row NAME KEY
    local m proxy=- all
    # shellcheck disable=SC2086
    m=$(median ${S[$2]})
    # shellcheck disable=SC2086
    [ -n "${C[$2]:-}" ] && proxy=$(mean_ms TICKS ${C[$2]})
    # shellcheck disable=SC2086
    all="$proxy $(mean_ms TICKS ${N[$2]}) $(mean_ms MS ${K[$2]})"
    printf '%-12s %6s %5s  %-34s %s\n' "$1" "$(mb "$m")" \
        "$(awk -v a="$m" -v b="$direct" 'BEGIN { printf "%.0f", 100 * a / b }')" "$all" \
        "$(for s in ${S[$2]}; do printf '%s ' "$(mb "$s")"; done)"
}
row direct direct
for i in "${!BINS[@]}"; do row "${NAMES[$i]}" "$i"; done
