# Shared by the A/B scripts (ab.sh, connect.sh, syscalls.sh, slow_rounds.sh); sourced, not run. Sets up, after `set -euo pipefail`:
#   T      a temp dir, removed on exit
#   PIDS   processes to stop on exit (TERM, then KILL): append what you start
#   NAMES, BINS   from the arguments, each `NAME=BINARY` or `BINARY` (named by its file name)
# and defines wait_port PORT and free_ports N (N free loopback ports, one line).
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
