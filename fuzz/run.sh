#!/usr/bin/env bash
# Builds the fuzz targets once, runs each for SECONDS (default 60), and exits 1 if any crashed.
#
#   fuzz/run.sh [SECONDS] [TARGET...]      e.g. fuzz/run.sh 20, fuzz/run.sh 3600 config_load
#
# Environment:
#   FUZZ_SANITIZER   none (default) or address. none builds on plain stable Rust and runs
#                    7-15x more inputs per second; address (ASan) also catches memory
#                    errors in dependencies' unsafe code: use it for occasional long runs.
#   FUZZ_TARGET_DIR  cargo target dir for the fuzz build (default fuzz/target); point it
#                    outside the clone to keep the build between CI runs.
#
# Works on stable Rust: with a sanitizer, RUSTC_BOOTSTRAP=1 lets stable rustc take the
# -Zsanitizer flag cargo fuzz passes. Installs cargo-fuzz from crates.io if missing.
# The corpus grows in fuzz/corpus/<target> and crashes land in fuzz/artifacts/<target>
# (both ignored by git); a crash worth keeping goes to fuzz/regressions/<target>/.
set -euo pipefail

cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=(target_parse host_match config_load http1_head request_target response_head)
fi
sanitizer=${FUZZ_SANITIZER:-none}
if [ "$sanitizer" != none ]; then
    export RUSTC_BOOTSTRAP=1
fi
build_args=(--sanitizer "$sanitizer")
if [ -n "${FUZZ_TARGET_DIR:-}" ]; then
    build_args+=(--target-dir "$FUZZ_TARGET_DIR")
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --version 0.13.2 --locked
fi

start=$(date +%s)
for t in "${targets[@]}"; do
    cargo fuzz build "${build_args[@]}" "$t"
done
echo "fuzz: build took $(($(date +%s) - start)) s (sanitizer $sanitizer)"

crashed=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    log="fuzz/artifacts/$t/run.log"
    args=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    if [ -f "fuzz/dicts/$t.dict" ]; then
        args+=(-dict="fuzz/dicts/$t.dict")
    fi
    t0=$(date +%s)
    if cargo fuzz run "${build_args[@]}" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- "${args[@]}" >"$log" 2>&1; then
        runs=$(grep -Eo '^Done [0-9]+ runs' "$log" | grep -Eo '[0-9]+' || echo '?')
        cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1 || true)
        echo "fuzz: $t ok: $runs runs in $(($(date +%s) - t0)) s, $cov, corpus $(find "fuzz/corpus/$t" -type f | wc -l) files"
    else
        crashed+=("$t")
        echo "fuzz: $t FAILED after $(($(date +%s) - t0)) s; log: $log"
        grep -E "panicked at|^thread '|SUMMARY|Test unit written to" -A2 "$log" | head -20 || tail -20 "$log"
    fi
done

if [ "${#crashed[@]}" -gt 0 ]; then
    echo "fuzz: crashes in ${crashed[*]}: copy the crash-* file named above to fuzz/regressions/<target>/ and run cargo test --test fuzz_regressions"
    exit 1
fi
echo "fuzz: ${#targets[@]} targets ran ${secs} s each, no crash"
