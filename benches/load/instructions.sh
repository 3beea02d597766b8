#!/usr/bin/env bash
# Instructions per forwarded request, counted by valgrind's callgrind: a deterministic A/B
# measure (±0.5 % run to run) where wall-clock CPU on a shared 2-core machine varies ±25 %.
#
#   bash benches/load/instructions.sh [BINARY] [REQUESTS]   # default: target/release/portcullis, 4000
#   bash benches/load/instructions.sh nginx [REQUESTS]      # the peer: nginx as the reverse proxy
#
# Starts an nginx origin (3-byte body, keep-alive) and the proxy under callgrind on free
# loopback ports, warms up with 500 requests, then counts user-space instructions over
# REQUESTS requests from `wrk -t1 -c16` (absolute-form). With `nginx` for BINARY, the same
# count for nginx as a reverse proxy to the same origin (one worker process, `master_process off`
# so callgrind sees it; upstream keep-alive; access log to a file, as the proxy's is on): the
# peer's figure for the same requests. Kernel time (the syscalls) is not
# counted: compare binaries with it, not with the load table. Bounded: at most 120 s of load.
# CONNS=N sets wrk's connections (16). CLOSE=1 sends `Connection: close`: a new client
# connection per request, what accepting and setting up a connection costs. KEEP=FILE keeps
# the callgrind profile (`callgrind_annotate FILE`). Needs nginx, wrk, valgrind; stops
# everything it started.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN=${1:-$HERE/../../target/release/portcullis}
N=${2:-4000}
CONNS=${CONNS:-16}
for tool in nginx wrk valgrind callgrind_control curl python3; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install nginx wrk valgrind curl)" >&2; exit 1; }
done
T=$(mktemp -d /tmp/portcullis-instr.XXXX)
read -r OP PP AP < <(python3 -c '
import socket
s = [socket.socket() for _ in range(3)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))')
NG="" PC=""
trap '[ -n "$NG" ] && kill $NG 2>/dev/null; [ -n "$PC" ] && kill $PC 2>/dev/null; sleep 0.5; rm -rf "$T"' EXIT
cat > "$T/o.conf" <<E2
worker_processes 1; daemon off; pid $T/o.pid; error_log $T/oe.log warn;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 100000000; keepalive_timeout 300s;
 client_body_temp_path $T/b; proxy_temp_path $T/p; fastcgi_temp_path $T/f; uwsgi_temp_path $T/u; scgi_temp_path $T/s;
 server { listen 127.0.0.1:$OP; location = / { default_type text/plain; return 200 "ok\n"; } } }
E2
nginx -e "$T/oe.log" -c "$T/o.conf" & NG=$!
cat > "$T/p.toml" <<E2
[proxy]
listen = "127.0.0.1:$PP"
admin_listen = "127.0.0.1:$AP"
client_idle_timeout = "300s"
[defaults]
allow_private = true
[[upstream]]
name = "origin"
hosts = ["127.0.0.1"]
ports = [$OP]
E2
if [ "$BIN" = nginx ]; then
    cat > "$T/n.conf" <<E2
master_process off; worker_processes 1; daemon off; pid $T/n.pid; error_log $T/ne.log warn;
events { worker_connections 4096; }
http { access_log $T/n-access.log; keepalive_requests 100000000; keepalive_timeout 300s;
 client_body_temp_path $T/nb; proxy_temp_path $T/np; fastcgi_temp_path $T/nf; uwsgi_temp_path $T/nu; scgi_temp_path $T/ns;
 upstream origin { server 127.0.0.1:$OP; keepalive 64; }
 server { listen 127.0.0.1:$PP;
  location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
E2
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$T/cg.out" \
        nginx -e "$T/ne.log" -c "$T/n.conf" > "$T/pc.out" 2> "$T/pc.err" & PC=$!
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PP/" && break; sleep 0.3; done
else
    RUST_LOG=${RUST_LOG:-info} valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$T/cg.out" "$BIN" --config "$T/p.toml" > "$T/pc.out" 2> "$T/pc.err" & PC=$!
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$AP/metrics" && break; sleep 0.3; done
fi
cat > "$T/count.lua" <<E2
wrk.path = "http://127.0.0.1:$OP/"
local n = 0
function response(status, headers, body)
  n = n + 1
  if n >= tonumber(os.getenv("NREQ")) then wrk.thread:stop() end
end
E2
HDR=()
[ -n "${CLOSE:-}" ] && HDR=(-H "Connection: close")
NREQ=500 wrk -t1 -c"$CONNS" -d60 "${HDR[@]}" -s "$T/count.lua" "http://127.0.0.1:$PP/" > /dev/null
sleep 0.5
callgrind_control -i on "$PC" > /dev/null
NREQ=$N wrk -t1 -c"$CONNS" -d120 "${HDR[@]}" -s "$T/count.lua" "http://127.0.0.1:$PP/" > "$T/wrk.out"
sleep 0.5
callgrind_control -d "$PC" > /dev/null
sleep 0.5
F=$(ls -t "$T"/cg.out* | head -1)
reqs=$(awk '/requests in/ { print $1 }' "$T/wrk.out")
ir=$(awk '/^summary:/ { print $2 }' "$F")
echo "requests=$reqs instructions=$ir per_request=$((ir / reqs))"
[ -n "${KEEP:-}" ] && cp "$F" "$KEEP"
true
