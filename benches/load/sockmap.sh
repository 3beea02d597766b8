#!/usr/bin/env bash
# CONNECT throughput: portcullis' splice relay against a BPF sockmap relay, the design change
# that would take the proxy's thread out of a tunnel's data path.
#
#   bash benches/load/sockmap.sh [BINARY]    # default: target/release/portcullis; as root
#
# Builds benches/load/sockmap_relay.c (a prototype, one tunnel at a time: see its head) with
# cc, then runs connect.sh with portcullis and the prototype side by side: 100 MiB downloads
# through each and direct, interleaved round by round (ROUNDS, default 11). A failed download
# counts as 0 MB/s. Needs cc, the kernel headers (linux-libc-dev), CAP_BPF and CAP_NET_ADMIN;
# everything it starts is stopped on exit (connect.sh's cleanup).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN=${1:-$HERE/../../target/release/portcullis}
command -v cc >/dev/null || { echo "needs cc (apt-get install gcc linux-libc-dev)" >&2; exit 1; }
D=$(mktemp -d /tmp/portcullis-sockmap.XXXX)
trap 'rm -rf "$D"' EXIT
cc -O2 -Wall -o "$D/relay" "$HERE/sockmap_relay.c"
# connect.sh starts each binary as `BINARY --config FILE`: take the two ports from that file.
cat >"$D/relay.sh" <<EOS
#!/usr/bin/env bash
listen=\$(sed -n 's/^listen = "127.0.0.1:\([0-9]*\)"/\1/p' "\$2")
origin=\$(sed -n 's/^ports = \[\([0-9]*\)\]/\1/p' "\$2")
exec "$D/relay" "\$listen" "\$origin"
EOS
chmod +x "$D/relay.sh"
ROUNDS=${ROUNDS:-11} bash "$HERE/connect.sh" portcullis="$BIN" sockmap="$D/relay.sh"
