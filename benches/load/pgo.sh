#!/usr/bin/env bash
# A profile-guided release build of portcullis: the binary the Dockerfile ships and the one
# benches/load/RESULTS.md measures from 2026-12-07 (night) on.
#
#   bash benches/load/pgo.sh        # prints the path of the binary it built
#
# 1. builds the training programs as usual (examples pgo_train, intercept_bench, tls_bench);
# 2. builds the proxy instrumented (-Cprofile-generate), in its own target directory;
# 3. runs it through the training programs: keep-alive GETs and POSTs at 16 and 128
#    connections, a new connection per request, refused destinations, bulk CONNECT tunnels,
#    /metrics (pgo_train); TLS origination, interception and tunnels of TLS (intercept_bench);
#    the TLS listener with and without client certificates (tls_bench). Loopback only, in-process
#    origins, SECS seconds per cell (default 3; about a minute in all), each proxy stopped by
#    SIGTERM so that it writes its profile;
# 4. merges the profiles (llvm-profdata from rustup's llvm-tools, added if missing) and builds
#    the proxy again with -Cprofile-use, in a third target directory.
#
# Paths a training run never reaches are laid out as cold, not removed: they work as before,
# at most slower. Needs Rust (rustup) only. Takes about three release builds' time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
SECS=${SECS:-3}
TARGET=${CARGO_TARGET_DIR:-target}
case "$TARGET" in /*) ;; *) TARGET="$PWD/$TARGET" ;; esac
HOST=$(rustc -vV | sed -n 's/^host: //p')
DATA="$TARGET/pgo-data"

profdata() {
    local sysroot
    sysroot=$(rustc --print sysroot)
    # No match is no output, not a failure: under `set -e` and `pipefail` a failing `ls` here
    # ended the script silently on a machine without llvm-tools instead of adding them.
    ls "$sysroot"/lib/rustlib/*/bin/llvm-profdata 2>/dev/null | head -n 1 || true
}
PROFDATA=$(profdata)
if [ -z "$PROFDATA" ]; then
    rustup component add llvm-tools >&2
    PROFDATA=$(profdata)
fi
[ -n "$PROFDATA" ] || { echo "pgo.sh: no llvm-profdata (rustup component add llvm-tools)" >&2; exit 1; }

cargo build --release --locked --example pgo_train --example intercept_bench --example tls_bench >&2
EXAMPLES="$TARGET/release/examples"

# --target: the flags then reach the target's code only, not build scripts or proc macros.
rm -rf "$DATA"
mkdir -p "$DATA/raw"
RUSTFLAGS="-Cprofile-generate=$DATA/raw" \
    cargo build --release --locked --bin portcullis --target "$HOST" --target-dir "$TARGET/pgo-generate" >&2
INSTRUMENTED="$TARGET/pgo-generate/$HOST/release/portcullis"

"$EXAMPLES/pgo_train" "$INSTRUMENTED" "$SECS" >&2
"$EXAMPLES/intercept_bench" "$INSTRUMENTED" "$SECS" >&2
"$EXAMPLES/tls_bench" "$INSTRUMENTED" "$SECS" 200 >&2
ls "$DATA"/raw/*.profraw >/dev/null 2>&1 || { echo "pgo.sh: the training runs wrote no profile" >&2; exit 1; }
"$PROFDATA" merge -o "$DATA/merged.profdata" "$DATA"/raw/*.profraw
# Named by its content: cargo reads the flags, not the file, to decide what to rebuild, so a new
# profile must change the flags for the dependencies to be built with it as well.
PROFILE="$DATA/portcullis-$(sha256sum "$DATA/merged.profdata" | cut -c1-16).profdata"
mv "$DATA/merged.profdata" "$PROFILE"

RUSTFLAGS="-Cprofile-use=$PROFILE" \
    cargo build --release --locked --bin portcullis --target "$HOST" --target-dir "$TARGET/pgo-use" >&2
echo "$TARGET/pgo-use/$HOST/release/portcullis"
