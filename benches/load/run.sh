#!/usr/bin/env bash
# Load benchmark: portcullis side by side with a direct client, nginx (reverse proxy with
# upstream keepalive), squid and tinyproxy, all on loopback, in one run.
#
#   bash benches/load/run.sh            # as root; about 10 minutes; prints one markdown table
#
# req/s, latency and CPU are medians of ROUNDS rounds; in each round every proxy is measured in
# turn, so a noisy minute on a shared machine spoils one sample of each proxy, not every sample
# of one (single runs moved by ±25 %).
#
# Knobs (environment): ROUNDS=3, DURATION=5 (seconds per wrk cell and round; the 2 s origin test
# runs 2 × DURATION), IDLE_CONNS=5000, SLOW_CONC=1000,
# SLOW_CONC_BIG=10000 (direct, portcullis and nginx only; 0 skips), PROXIES="direct portcullis portcullis-quiet
# portcullis-1worker nginx squid tinyproxy", KEEP=1 keeps the temp dir with every config, log and wrk output,
# PGO=1 measures the profile-guided build the Dockerfile ships (benches/load/pgo.sh; adds about
# ten minutes of building) instead of `cargo build --release`'s, PORTCULLIS_BIN=PATH a binary
# already built (one pgo.sh printed, say).
# Progress goes to stderr, the table to stdout. Everything started here is stopped on exit.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-5}"
IDLE_CONNS="${IDLE_CONNS:-5000}"
SLOW_CONC="${SLOW_CONC:-1000}"
SLOW_CONC_BIG="${SLOW_CONC_BIG:-10000}"
PROXIES="${PROXIES:-direct portcullis portcullis-quiet portcullis-1worker nginx squid tinyproxy}"
PY="${PYTHON:-python3}"

# Free loopback ports picked by the kernel: fixed ones may belong to someone else's server.
read -r ORIGIN_PORT SLOW_PORT PC_PORT PC_ADMIN NGX_PORT NGX_SLOW_PORT SQUID_PORT TINY_PORT < <(
    "$PY" -c '
import socket
socks = [socket.socket() for _ in range(8)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
ORIGIN="127.0.0.1:$ORIGIN_PORT" SLOW="127.0.0.1:$SLOW_PORT"

log() { printf '[load] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (installs packages, raises the descriptor limit)"

# --- packages -------------------------------------------------------------------------------
missing=()
for pair in nginx:nginx squid:squid tinyproxy:tinyproxy wrk:wrk curl:curl python3:python3 ss:iproute2; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || missing+=("${pair#*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    # Keep the packages' services from starting: we run our own instances on high ports.
    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        created_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
export PATH="$PATH:/usr/sbin:/sbin"

# --- build ----------------------------------------------------------------------------------
log "cargo build --release"
(cd "$ROOT" && cargo build --release --bin portcullis --example slow_origin >&2)
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
PORTCULLIS="$TARGET_DIR/release/portcullis"
if [ -n "${PORTCULLIS_BIN:-}" ]; then
    [ -x "$PORTCULLIS_BIN" ] || die "PORTCULLIS_BIN=$PORTCULLIS_BIN is not an executable"
    PORTCULLIS=$PORTCULLIS_BIN
elif [ "${PGO:-0}" = 1 ]; then
    log "profile-guided build (benches/load/pgo.sh)"
    PORTCULLIS=$(bash "$HERE/pgo.sh")
fi
SLOW_ORIGIN="$TARGET_DIR/release/examples/slow_origin"

# 5 000 idle clients and 10 000 slow requests need far more than the default 1 024 descriptors.
# Go to the hard limit; a proxy holds two descriptors per slow request (client + upstream), so
# where the hard limit is lower than that needs, the big slow test is scaled down and labelled so.
ulimit -n "$(ulimit -Hn)" || die "cannot raise the descriptor limit"
fd_cap=$((($(ulimit -n) - 500) / 2))
if [ "$SLOW_CONC_BIG" -gt "$fd_cap" ]; then
    log "descriptor hard limit $(ulimit -Hn): 2 s origin test with $fd_cap instead of $SLOW_CONC_BIG"
    SLOW_CONC_BIG=$fd_cap
fi
[ "$IDLE_CONNS" -gt "$fd_cap" ] && IDLE_CONNS=$fd_cap

# --- lifecycle ------------------------------------------------------------------------------
T="$(mktemp -d /tmp/portcullis-load.XXXXXX)"
chmod 0777 "$T" # squid and tinyproxy drop to unprivileged users and write their logs here
STARTED=()
cleanup() {
    local pid
    for pid in "${STARTED[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do
        local alive=0
        for pid in "${STARTED[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${STARTED[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    if [ "${KEEP:-0}" = 1 ]; then log "kept $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start() { # start NAME CMD...: run in the background, remember its pid
    local name="$1"
    shift
    "$@" >"$T/$name.out" 2>"$T/$name.err" &
    STARTED+=("$!")
    LAST_PID=$!
}

stop() { # stop PID: TERM, wait up to 5 s, then KILL
    kill -TERM "$1" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
}

wait_port() { # wait_port PORT PID: our process PID (or one of its children) listens on PORT
    local state="still not listening after 30 s"
    for _ in $(seq 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            local p
            for p in $($PY "$HERE/tools.py" tree "$2"); do
                ss -Hltnp "sport = :$1" | grep -q "pid=$p," && return 0
            done
            die "port $1 is taken by another process"
        fi
        kill -0 "$2" 2>/dev/null || { state="exited"; break; }
        sleep 0.1
    done
    # The temp dir goes when the script exits (unless KEEP=1): say here what its logs say.
    local f
    for f in $(find "$T" -maxdepth 1 \( -name '*.err' -o -name '*.log' \) -newermt '-40 seconds'); do
        [ -s "$f" ] && { log "--- tail of $f:"; tail -n 5 "$f" >&2; }
    done
    die "nothing listening on port $1: process $2 $state"
}

# --- origins --------------------------------------------------------------------------------
truncate -s 100M "$T/big.bin"
cat >"$T/origin.conf" <<EOF
worker_processes 1;
daemon off;
user root;
pid $T/origin.pid;
error_log $T/origin-error.log warn;
worker_rlimit_nofile 100000;
events { worker_connections 50000; }
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path $T/origin-body;
    proxy_temp_path $T/origin-proxy;
    fastcgi_temp_path $T/origin-fcgi;
    uwsgi_temp_path $T/origin-uwsgi;
    scgi_temp_path $T/origin-scgi;
    sendfile on;
    server {
        listen 127.0.0.1:$ORIGIN_PORT reuseport backlog=65535;
        location = / { default_type text/plain; return 200 "ok\n"; }
        location = /big { alias $T/big.bin; }
    }
}
EOF
start origin nginx -e "$T/origin-error.log" -c "$T/origin.conf"
ORIGIN_PID=$LAST_PID
wait_port "$ORIGIN_PORT" "$ORIGIN_PID"
start slow-origin "$SLOW_ORIGIN" "$SLOW" 2000
wait_port "$SLOW_PORT" "$LAST_PID"

# --- proxies --------------------------------------------------------------------------------
start_proxy() { # start_proxy NAME: sets PID, ADDR, MODE, SLOW_ADDR
    case "$1" in
    direct)
        PID=$ORIGIN_PID ADDR=$ORIGIN MODE=direct SLOW_ADDR=$SLOW
        ;;
    portcullis | portcullis-quiet | portcullis-1worker)
        cat >"$T/portcullis.toml" <<EOF
[proxy]
listen = "127.0.0.1:$PC_PORT"
admin_listen = "127.0.0.1:$PC_ADMIN"
max_client_connections = 30000
client_idle_timeout = "300s"

[defaults]
max_connections = 12000
# As nginx's keepalive 64 below: what churns above it (SPEC §5 surplus) shows in the table.
max_idle = 64
acquire_timeout = "30s"
tunnel_idle_timeout = "300s"
allow_private = true

[[upstream]]
name = "origin"
hosts = ["127.0.0.1"]
ports = [$ORIGIN_PORT, $SLOW_PORT]
EOF
        # The access log (INFO) goes to a file, as an operator would run it.
        local envs=(RUST_LOG=info)
        [ "$1" = portcullis-quiet ] && envs=(RUST_LOG=warn)
        [ "$1" = portcullis-1worker ] && envs+=(TOKIO_WORKER_THREADS=1)
        start "$1" env "${envs[@]}" "$PORTCULLIS" --config "$T/portcullis.toml"
        PID=$LAST_PID ADDR="127.0.0.1:$PC_PORT" MODE=forward SLOW_ADDR=$ADDR
        wait_port "$PC_PORT" "$PID"
        ;;
    nginx)
        cat >"$T/nginx.conf" <<EOF
worker_processes auto;
daemon off;
user root;
pid $T/nginx.pid;
error_log $T/nginx-error.log warn;
worker_rlimit_nofile 100000;
events { worker_connections 50000; }
http {
    access_log $T/nginx-access.log;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path $T/nginx-body;
    proxy_temp_path $T/nginx-proxy;
    fastcgi_temp_path $T/nginx-fcgi;
    uwsgi_temp_path $T/nginx-uwsgi;
    scgi_temp_path $T/nginx-scgi;
    upstream origin { server $ORIGIN; keepalive 64; keepalive_requests 100000000; }
    upstream slow { server $SLOW; keepalive 64; keepalive_requests 100000000; }
    server {
        listen 127.0.0.1:$NGX_PORT backlog=65535;
        location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
    server {
        listen 127.0.0.1:$NGX_SLOW_PORT backlog=65535;
        location / { proxy_pass http://slow; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
EOF
        start nginx nginx -e "$T/nginx-error.log" -c "$T/nginx.conf"
        PID=$LAST_PID ADDR="127.0.0.1:$NGX_PORT" MODE=reverse SLOW_ADDR="127.0.0.1:$NGX_SLOW_PORT"
        wait_port "$NGX_PORT" "$PID"
        ;;
    squid)
        cat >"$T/squid.conf" <<EOF
http_port 127.0.0.1:$SQUID_PORT
http_access allow all
cache deny all
cache_mem 8 MB
workers 1
max_filedescriptors 100000
access_log stdio:$T/squid-access.log
cache_log $T/squid-cache.log
cache_store_log none
pid_filename $T/squid.pid
coredump_dir $T
logfile_rotate 0
shutdown_lifetime 1 seconds
client_idle_pconn_timeout 300 seconds
pconn_timeout 300 seconds
icp_port 0
EOF
        start squid squid -N -f "$T/squid.conf"
        PID=$LAST_PID ADDR="127.0.0.1:$SQUID_PORT" MODE=forward SLOW_ADDR=$ADDR
        wait_port "$SQUID_PORT" "$PID"
        ;;
    tinyproxy)
        : >"$T/tinyproxy.log"
        chmod 0666 "$T/tinyproxy.log"
        cat >"$T/tinyproxy.conf" <<EOF
User nobody
Group nogroup
Port $TINY_PORT
Listen 127.0.0.1
Timeout 600
MaxClients 6000
LogFile "$T/tinyproxy.log"
LogLevel Info
EOF
        start tinyproxy tinyproxy -d -c "$T/tinyproxy.conf"
        PID=$LAST_PID ADDR="127.0.0.1:$TINY_PORT" MODE=forward SLOW_ADDR=$ADDR
        wait_port "$TINY_PORT" "$PID"
        ;;
    *) die "unknown proxy $1" ;;
    esac
}

run_wrk() { # run_wrk OUT CONNS ADDR TARGET SECONDS: absolute-form through forward proxies
    local out=$1 conns=$2 addr=$3 target=$4 secs=$5
    if [ "$MODE" = forward ]; then
        wrk -t1 -c"$conns" -d"${secs}s" --timeout 10s --latency -s "$HERE/absolute.lua" \
            "http://$addr/" -- "$target" >"$out" 2>&1 || true
    else
        wrk -t1 -c"$conns" -d"${secs}s" --timeout 10s --latency "http://$addr/" >"$out" 2>&1 || true
    fi
}

restart_proxy() { # restart_proxy NAME: stop the proxy under test and start it afresh
    stop "$PID"
    sleep 1 # its listening port is free again once the process is gone
    start_proxy "$1"
}

fmt_int() { printf '%s' "${1%.*}" | rev | sed 's/[0-9]\{3\}/& /g' | rev | sed 's/^ //'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }
TICK=$(getconf CLK_TCK)

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# --- throughput, in interleaved rounds ------------------------------------------------------
# Samples per "proxy,concurrency": space-separated req/s, p50, p99, CPU µs/req; errors summed;
# the proxy's peak RSS under wrk is the largest of its rounds.
declare -A S_RPS=() S_P50=() S_P99=() S_CPU=() S_ERR=() S_HWM=() S_NEW=()
# portcullis's upstream connections opened so far (its /metrics), or nothing for the others.
opened() {
    case "$1" in
    portcullis*) curl -s "http://127.0.0.1:$PC_ADMIN/metrics" |
        awk '/^portcullis_upstream_connections_opened_total/ { n += $2 } END { print n + 0 }' ;;
    esac
}
for round in $(seq "$ROUNDS"); do
    for name in $PROXIES; do
        log "== $name, round $round of $ROUNDS"
        start_proxy "$name"
        run_wrk "$T/$name-warm.txt" 16 "$ADDR" "$ORIGIN" 1
        for c in 16 128; do
            k="$name,$c"
            # Warmed up at this concurrency too: the c=16 cell leaves 16 upstream connections,
            # and dialing the other 112 inside the c=128 cell was counted as churn (112 dials
            # a cell whatever the host's speed: 0.029 % of requests at 77 k req/s, 0.115 % at
            # 19 k). After this warm-up a proxy that keeps its connections opens none.
            [ "$c" = 16 ] || run_wrk "$T/$name-warm$c.txt" "$c" "$ADDR" "$ORIGIN" 1
            o0=$(opened "$name")
            t0=$($PY "$HERE/tools.py" cpu "$PID")
            run_wrk "$T/$name-c$c-r$round.txt" "$c" "$ADDR" "$ORIGIN" "$DURATION"
            t1=$($PY "$HERE/tools.py" cpu "$PID")
            o1=$(opened "$name")
            read -r reqs rps p50 p99 errs < <($PY "$HERE/tools.py" wrk "$T/$name-c$c-r$round.txt")
            if [ -n "$o0" ] && [ "$c" = 128 ]; then
                # New upstream connections per request, after warm-up (max_idle 64 at c=128).
                S_NEW[$name]="${S_NEW[$name]:-} $(awk -v d=$((o1 - o0)) -v n="$reqs" \
                    'BEGIN { if (n > 0) printf "%.3f", d * 100 / n; else print "nan" }')"
            fi
            us=$(awk -v d=$((t1 - t0)) -v n="$reqs" -v hz="$TICK" \
                'BEGIN { if (n > 0) printf "%.1f", d * 1e6 / hz / n; else print "nan" }')
            S_RPS[$k]="${S_RPS[$k]:-} $rps"
            S_P50[$k]="${S_P50[$k]:-} $p50"
            S_P99[$k]="${S_P99[$k]:-} $p99"
            S_CPU[$k]="${S_CPU[$k]:-} $us"
            S_ERR[$k]=$((${S_ERR[$k]:-0} + errs))
            log "c=$c: $rps req/s, p50/p99 $p50 / $p99 ms, $us µs/req, $errs errors"
        done
        if [ "$MODE" != direct ]; then
            hwm=$($PY "$HERE/tools.py" mem "$PID" VmHWM)
            [ "$hwm" -gt "${S_HWM[$name]:-0}" ] && S_HWM[$name]=$hwm
            stop "$PID"
        fi
        sleep 1 # let TIME_WAIT sockets and the origin settle between proxies
    done
done

# --- everything else, one proxy at a time ---------------------------------------------------
ROWS=()
for name in $PROXIES; do
    log "== $name"
    start_proxy "$name"
    declare -A rate=() lat=() cpu=()
    for c in 16 128; do
        k="$name,$c"
        # The sample lists are split into words on purpose.
        rps=$(median ${S_RPS[$k]})
        cpu[$c]=$(median ${S_CPU[$k]})
        lat[$c]="$(median ${S_P50[$k]}) / $(median ${S_P99[$k]})"
        rate[$c]=$(fmt_int "$rps")
        [ "${S_ERR[$k]}" != 0 ] && rate[$c]="${rate[$c]} (${S_ERR[$k]} err)"
        log "c=$c, median of $ROUNDS: $rps req/s (samples:${S_RPS[$k]}), ${cpu[$c]} µs/req (samples:${S_CPU[$k]})"
    done
    if [ "$MODE" = direct ]; then
        cpu_cell="–" rss_cell="–"
    else
        cpu_cell="${cpu[16]} / ${cpu[128]}"
        rss_cell=$(mib "${S_HWM[$name]}")
    fi
    new_cell="–"
    # The sample list is split into words on purpose.
    [ -n "${S_NEW[$name]:-}" ] && new_cell="$(median ${S_NEW[$name]}) %"

    # CONNECT: median of five 100 MiB downloads through a tunnel (direct: no proxy), after one
    # untimed download: the first read of the file fills the page cache and runs at a fraction
    # of the speed, which only the first row measured (direct) would otherwise pay.
    connect_cell="n/a"
    if [ "$MODE" != reverse ]; then
        speeds=()
        for i in 0 1 2 3 4 5; do
            if [ "$MODE" = forward ]; then
                s=$(curl -s -p -x "http://$ADDR" "http://$ORIGIN/big" -o /dev/null -w '%{speed_download}' || echo 0)
            else
                s=$(curl -s "http://$ORIGIN/big" -o /dev/null -w '%{speed_download}' || echo 0)
            fi
            [ "$i" = 0 ] || speeds+=("$s")
        done
        connect_cell=$(fmt_int "$(printf '%s\n' "${speeds[@]}" | sort -g | sed -n 3p |
            awk '{ printf "%d", $1 / 1e6 }')")
        log "CONNECT 100 MiB: ${speeds[*]} B/s"
    fi

    # Idle clients and idle tunnels: RSS growth per connection held open, each probe in a
    # freshly started proxy, so that heap left over from the wrk runs does not absorb it.
    idle_cell="–" tunnel_cell="–"
    if [ "$MODE" != direct ]; then
        restart_proxy "$name"
        read -r per held errs < <($PY "$HERE/tools.py" idle "$PID" "$MODE" "$ADDR" "$ORIGIN" "$IDLE_CONNS")
        idle_cell="$per"
        [ "$errs" != 0 ] && idle_cell="$per ($held held)"
        log "idle clients: $per KiB each, $held held, $errs failed"
        if [ "$MODE" = forward ]; then
            restart_proxy "$name"
            read -r per held errs < <($PY "$HERE/tools.py" idle "$PID" tunnel "$ADDR" "$ORIGIN" "$IDLE_CONNS")
            tunnel_cell="$per"
            [ "$errs" != 0 ] && tunnel_cell="$per ($held held)"
            log "idle tunnels: $per KiB each, $held held, $errs failed"
        fi
    fi

    # The 2 s origin: every request holds an upstream connection for two seconds.
    slow_cell() { # slow_cell CONNS
        local out="$T/$name-slow$1.txt" base=0
        [ "$MODE" != direct ] && base=$($PY "$HERE/tools.py" mem "$PID" VmRSS)
        run_wrk "$out" "$1" "$SLOW_ADDR" "$SLOW" "$((2 * DURATION))"
        read -r reqs rps p50 p99 errs < <($PY "$HERE/tools.py" wrk "$out")
        local cell
        cell=$(awk -v p="$p99" 'BEGIN { printf "%.3f s", p / 1000 }')" / $errs"
        if [ "$MODE" != direct ]; then
            # Peak RSS, and its growth over the idle process per request in flight.
            local hwm
            hwm=$($PY "$HERE/tools.py" mem "$PID" VmHWM)
            cell="$cell / $(mib "$hwm") / $(awk -v h="$hwm" -v b="$base" -v n="$1" \
                'BEGIN { printf "%.1f", (h - b) / n }')"
        fi
        log "2 s origin x$1: $reqs requests, p99 $p99 ms, $errs errors"
        printf '%s' "$cell"
    }
    # Afresh again: the peak RSS reported is this test's, not the idle probes'.
    [ "$MODE" != direct ] && restart_proxy "$name"
    slow1=$(slow_cell "$SLOW_CONC")
    slow2="–"
    if { [ "$name" = portcullis ] || [ "$name" = direct ] || [ "$name" = nginx ]; } && [ "$SLOW_CONC_BIG" != 0 ]; then
        sleep 2
        slow2=$(slow_cell "$SLOW_CONC_BIG")
    fi

    label=$name
    case "$name" in
    direct) label="direct to origin" ;;
    portcullis) label="**portcullis** (access log on, to a file)" ;;
    portcullis-quiet) label="**portcullis** (RUST_LOG=warn: no access log)" ;;
    portcullis-1worker) label="**portcullis** (access log on, TOKIO_WORKER_THREADS=1)" ;;
    nginx) label="nginx $(nginx -v 2>&1 | sed 's|.*/||') reverse proxy, upstream keepalive" ;;
    squid) label="squid $(squid -v | sed -n '1s/.*Version //p') forward" ;;
    tinyproxy) label="tinyproxy $(tinyproxy -v | awk '{print $2}')" ;;
    esac
    ROWS+=("| $label | ${rate[16]} | ${rate[128]} | ${lat[16]} | ${lat[128]} | $cpu_cell | $new_cell | $rss_cell | $connect_cell | $idle_cell | $tunnel_cell | $slow1 | $slow2 |")
    [ "$MODE" != direct ] && stop "$PID"
    unset rate lat cpu
    sleep 2 # let TIME_WAIT sockets and the origin settle between proxies
done

cat <<EOF

Load benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, wrk -t1, req/s, latency and CPU the median of $ROUNDS interleaved rounds of ${DURATION} s per cell, loopback; origin: nginx (1 worker, 3-byte body, keep-alive).

| | req/s c=16 | req/s c=128 | p50 / p99 ms c=16 | p50 / p99 ms c=128 | proxy CPU µs/req c=16 / c=128 | new upstream conns per request c=128 (max_idle 64) | peak RSS MiB (wrk) | CONNECT MB/s (100 MiB) | KiB per idle client conn ($IDLE_CONNS) | KiB per idle tunnel ($IDLE_CONNS) | 2 s origin ×$(fmt_int "$SLOW_CONC"): p99 / errors / peak RSS MiB / KiB per request above idle | 2 s origin ×$(fmt_int "$SLOW_CONC_BIG"): p99 / errors / peak RSS MiB / KiB per request above idle |
|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|
EOF
printf '%s\n' "${ROWS[@]}"
