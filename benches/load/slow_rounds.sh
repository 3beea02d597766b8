#!/usr/bin/env bash
# The 2 s origin with many clients, split by round: where a proxy's p99 comes from.
#
#   bash benches/load/slow_rounds.sh [BINARY]     # default: target/release/portcullis; as root
#
# run.sh's big 2 s origin cell (wrk -cCONNS for 10 s against benches/load/slow_origin.rs, every
# request answered 2 s after it arrived) holds about four rounds of CONNS requests. Through a
# proxy, the first round also pays for CONNS upstream connections dialed after wrk's clock
# started (direct, wrk connects before it sends). This runs, for direct, portcullis and nginx
# (reverse proxy, 2 workers), each fresh, three cells:
#   first round  a 4 s run: one request on each connection, all of them answered (a run of
#                3 s left out the slowest ones, those still unanswered when it stopped);
#   warm         the same on a proxy that has just served one such run and kept every upstream
#                connection (max_idle / keepalive = CONNS): the first round without the dials;
#   all rounds   a 10 s run, upstream pool of 64 idle.
# Each prints wrk's p50 / p90 / p99 ms, requests and errors. CONNS (default 9750, or what the
# descriptor limit allows). PIN=1 runs wrk and the origin on CPU 0 and the proxy on CPU 1
# (taskset), direct too: how the proxy does with a core of its own, as a shared egress service
# has, instead of sharing two with the client and the origin. Loopback only, ports from the
# kernel, about 2 minutes; everything started here is stopped on exit.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN=${1:-$HERE/../../target/release/portcullis}
AB_TOOLS="nginx wrk python3" AB_TMP=portcullis-slow
# shellcheck source=benches/load/ab_lib.sh
. "$HERE/ab_lib.sh"
SLOW_ORIGIN=${SLOW_ORIGIN:-$(dirname "$BIN")/examples/slow_origin}
[ -x "$SLOW_ORIGIN" ] || { echo "needs $SLOW_ORIGIN (cargo build --release --example slow_origin)" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)"
CONNS=${CONNS:-9750}
cap=$((($(ulimit -n) - 500) / 2))
[ "$CONNS" -gt "$cap" ] && CONNS=$cap
read -r SP PP AP NP < <(free_ports 4)
ON0=() ON1=()
[ "${PIN:-0}" = 1 ] && ON0=(taskset -c 0) ON1=(taskset -c 1)

${ON0[@]+"${ON0[@]}"} "$SLOW_ORIGIN" "127.0.0.1:$SP" 2000 >"$T/origin.out" &
PIDS+=("$!")
wait_port "$SP"

configs() { # configs SUFFIX IDLE: $T/pSUFFIX.toml and $T/nSUFFIX.conf, each keeping IDLE upstream connections idle
    cat >"$T/p$1.toml" <<EOF
[proxy]
listen = "127.0.0.1:$PP"
admin_listen = "127.0.0.1:$AP"
max_client_connections = 30000
client_idle_timeout = "300s"
[defaults]
max_connections = 12000
max_idle = $2
acquire_timeout = "30s"
allow_private = true
[[upstream]]
name = "origin"
hosts = ["127.0.0.1"]
ports = [$SP]
EOF
    cat >"$T/n$1.conf" <<EOF
worker_processes 2; daemon off; pid $T/n.pid; error_log $T/ne.log warn; worker_rlimit_nofile 100000;
events { worker_connections 50000; }
http { access_log off; keepalive_requests 100000000; keepalive_timeout 300s;
 client_body_temp_path $T/nb; proxy_temp_path $T/np; fastcgi_temp_path $T/nf; uwsgi_temp_path $T/nu; scgi_temp_path $T/ns;
 upstream slow { server 127.0.0.1:$SP; keepalive $2; keepalive_requests 100000000; }
 server { listen 127.0.0.1:$NP backlog=65535;
  location / { proxy_pass http://slow; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
}
configs "" 64
configs -warm "$CONNS"

start() { # start NAME [-warm]: the proxy fresh (-warm: it keeps CONNS idle); sets URL and ARGS
    case "$1" in
    direct) URL="http://127.0.0.1:$SP/" ARGS=() ;;
    portcullis)
        RUST_LOG=warn ${ON1[@]+"${ON1[@]}"} "$BIN" --config "$T/p${2:-}.toml" >"$T/p.out" 2>"$T/p.err" &
        PIDS+=("$!") PROXY=$!
        wait_port "$PP"
        URL="http://127.0.0.1:$PP/" ARGS=(-s "$HERE/absolute.lua")
        ;;
    nginx)
        ${ON1[@]+"${ON1[@]}"} nginx -e "$T/ne.log" -c "$T/n${2:-}.conf" >/dev/null 2>&1 &
        PIDS+=("$!") PROXY=$!
        wait_port "$NP"
        URL="http://127.0.0.1:$NP/" ARGS=()
        ;;
    esac
}
stop() {
    [ -n "${PROXY:-}" ] && { kill "$PROXY" 2>/dev/null || true; wait "$PROXY" 2>/dev/null || true; }
    PROXY=""
    sleep 1
}

run_wrk() { # run_wrk SECS: wrk against URL; prints "p50 / p90 / p99 ms, requests, errors"
    ${ON0[@]+"${ON0[@]}"} wrk -t1 -c"$CONNS" -d"$1s" --timeout 10s --latency ${ARGS[@]+"${ARGS[@]}"} "$URL" \
        ${ARGS[@]+-- "127.0.0.1:$SP"} >"$T/w.txt" 2>&1 || true
    read -r reqs _ p50 p99 errs < <(python3 "$HERE/tools.py" wrk "$T/w.txt")
    p90=$(awk '$1 == "90%" { v = $2 + 0; u = $2; sub(/^[0-9.]+/, "", u)
        printf "%.0f", u == "s" ? v * 1000 : u == "us" ? v / 1000 : v }' "$T/w.txt")
    printf '%.0f / %s / %.0f ms, %s, %s err' "$p50" "$p90" "$p99" "$reqs" "$errs"
}

echo "wrk -c$CONNS to the 2 s origin: p50 / p90 / p99 ms, requests, errors"
printf '%-11s | %-36s | %-36s | %-36s\n' target "first round (4 s run)" "warm: first round, no dials" \
    "all rounds (10 s run)"
for name in direct portcullis nginx; do
    start "$name"
    first=$(run_wrk 4)
    stop
    sleep 2
    start "$name" -warm
    run_wrk 4 >/dev/null
    sleep 1
    warm=$(run_wrk 4)
    stop
    sleep 2
    start "$name"
    all=$(run_wrk 10)
    stop
    sleep 2
    printf '%-11s | %-36s | %-36s | %-36s\n' "$name" "$first" "$warm" "$all"
done
