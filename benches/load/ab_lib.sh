# Shared by the A/B scripts (ab.sh, connect.sh, syscalls.sh, slow_rounds.sh); sourced, not run. Sets up, after `set -euo pipefail`:
#   T      a temp dir, removed on exit
#   PIDS   processes to stop on exit (TERM, then KILL): append what you start
#   NAMES, BINS   from the arguments, each `NAME=BINARY` or `BINARY` (named by its file name)
# and defines wait_port PORT, free_ports N (N free loopback ports, one line), temp_paths PREFIX
# and forward_setup (the forwarding setup ab.sh and syscalls.sh measure).
# Needs the tools named in $AB_TOOLS (checked here) and $AB_TMP (the temp dir's prefix).
export PATH="$PATH:/usr/sbin"
for tool in $AB_TOOLS; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install nginx wrk curl)" >&2; exit 1; }
done
T=$(mktemp -d "/tmp/$AB_TMP.XXXX")
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.3
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

NAMES=() BINS=()
for arg in "$@"; do
    case "$arg" in
    *=*) NAMES+=("${arg%%=*}") BINS+=("${arg#*=}") ;;
    *) NAMES+=("$(basename "$arg")") BINS+=("$arg") ;;
    esac
done

wait_port() { # wait_port PORT: until something accepts on it (10 s at most)
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listening on $1 (see $T)" >&2
    exit 1
}

free_ports() { # free_ports N: N loopback ports the kernel gives out, on one line
    python3 -c '
import socket, sys
s = [socket.socket() for _ in range(int(sys.argv[1]))]
for x in s: x.bind(("127.0.0.1", 0))
ports = [x.getsockname()[1] for x in s]
# Close before printing: a reader of `< <(free_ports N)` goes on at the newline, and a
# port still bound here would make its first bind fail.
for x in s: x.close()
print(*ports, flush=True)' "$1"
}

temp_paths() { # temp_paths PREFIX: nginx's temp paths under $T/PREFIX-*
    local d
    for d in client_body proxy fastcgi uwsgi scgi; do printf '%s_temp_path %s/%s-%s; ' "$d" "$T" "$1" "$d"; done
}

# forward_setup: with OP PP AP NP set (free ports), start an nginx origin on OP (one worker,
# 3-byte body, keep-alive) and write $T/p.toml (portcullis as a forward proxy on PP, admin on
# AP, max_idle 64) and $T/n.conf (nginx as a reverse proxy on NP: a worker per core, upstream
# keepalive 64, access log on).
forward_setup() {
    cat >"$T/o.conf" <<EOF
worker_processes 1; daemon off; user root; pid $T/o.pid; error_log $T/oe.log warn;
worker_rlimit_nofile 10000; events { worker_connections 5000; }
http { access_log off; keepalive_timeout 300s; keepalive_requests 100000000; $(temp_paths o)
 server { listen 127.0.0.1:$OP backlog=4096; location = / { default_type text/plain; return 200 "ok\n"; } } }
EOF
    nginx -e "$T/oe.log" -c "$T/o.conf" >/dev/null 2>&1 &
    PIDS+=("$!")
    wait_port "$OP"
    cat >"$T/p.toml" <<EOF
[proxy]
listen = "127.0.0.1:$PP"
admin_listen = "127.0.0.1:$AP"
max_client_connections = 30000
client_idle_timeout = "300s"
[defaults]
max_idle = 64
allow_private = true
[[upstream]]
name = "origin"
hosts = ["127.0.0.1"]
ports = [$OP]
EOF
    cat >"$T/n.conf" <<EOF
worker_processes auto; daemon off; user root; pid $T/n.pid; error_log $T/ne.log warn;
worker_rlimit_nofile 10000; events { worker_connections 5000; }
http { access_log $T/n-access.log; keepalive_timeout 300s; keepalive_requests 100000000; $(temp_paths n)
 upstream origin { server 127.0.0.1:$OP; keepalive 64; keepalive_requests 100000000; }
 server { listen 127.0.0.1:$NP backlog=4096;
  location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
}
