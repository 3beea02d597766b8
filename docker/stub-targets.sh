#!/bin/sh
# Stub sources for the crate's targets, made in the current folder from its
# Cargo.toml alone, so that the Dockerfile can build every dependency from
# Cargo.toml and Cargo.lock: a change under src/, tests/ or benches/ then
# leaves that layer cached. cargo refuses a manifest whose declared targets
# have no file, so each [[bin]], [[example]], [[test]] and [[bench]] gets one
# (at its `path`, or where cargo looks by default). Prints each file it made,
# one a line, for removal once the dependencies are built.
set -eu

made() {
    mkdir -p "$(dirname "$1")"
    echo 'fn main() {}' > "$1"
    echo "$1"
}

if [ ! -e src/lib.rs ]; then
    mkdir -p src
    : > src/lib.rs
    echo src/lib.rs
fi
[ -e src/main.rs ] || made src/main.rs

awk '
    function value(line) {
        sub(/^[^=]*=[[:space:]]*"/, "", line)
        sub(/".*$/, "", line)
        return line
    }
    function flush() {
        if (kind == "") return
        if (path == "" && name != "") {
            if (kind == "bin") path = "src/bin/" name ".rs"
            else if (kind == "example") path = "examples/" name ".rs"
            else if (kind == "test") path = "tests/" name ".rs"
            else if (kind == "bench") path = "benches/" name ".rs"
        }
        if (path != "") print path
        kind = ""; name = ""; path = ""
    }
    /^[[:space:]]*\[\[(bin|example|test|bench)\]\]/ {
        flush()
        kind = $0
        gsub(/[][[:space:]]/, "", kind)
        next
    }
    /^[[:space:]]*\[/ { flush(); next }
    kind != "" && /^[[:space:]]*name[[:space:]]*=/ { name = value($0) }
    kind != "" && /^[[:space:]]*path[[:space:]]*=/ { path = value($0) }
    END { flush() }
' Cargo.toml | while read -r path; do
    [ -e "$path" ] || made "$path"
done
