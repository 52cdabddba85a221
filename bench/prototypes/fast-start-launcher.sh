#!/bin/sh
# PROTOTYPE for measuring only (npm run bench -- --launcher fast=bench/prototypes/fast-start-launcher.sh).
# Answers containerd's `start` without starting Node when a node-grouping daemon for the same config
# is already listening: it works out the daemon's socket name the way the shim does and prints it.
# Everything else, and every miss, goes to the real shim. Shortcuts a real version must not take:
# the config path is scraped from the options protobuf on stdin, mode "runc" is assumed, and "the
# socket file exists" stands in for "the daemon is alive".
real=$(command -v containerd-shim-cocoon-v2) || { echo "containerd-shim-cocoon-v2 not on PATH" >&2; exit 1; }
bundle=$(dirname "$(readlink -f "$real")")/../dist/containerd-shim-cocoon-v2.cjs
case " $* " in *" start "*) ;; *) exec node --max-semi-space-size=1 "$bundle" "$@";; esac
addr= prev=
for a in "$@"; do [ "$prev" = "-address" ] && addr=$a; prev=$a; done
tmp=$(mktemp)
cat > "$tmp"
cfg=$(tr -c '[:print:]' '\n' < "$tmp" | grep -o '/[^ ]*\.toml' | head -n1)
if [ -n "$cfg" ] && grep -q '^grouping = "node"' "$cfg"; then
  key=$(printf '%s/cocoon-node/runc/%s' "$addr" "${cfg#/}" | sha256sum | cut -d' ' -f1)
  sock=/run/containerd/s/$key
  if [ -S "$sock" ]; then
    rm -f "$tmp"
    printf 'unix://%s' "$sock" > address
    printf 'unix://%s' "$sock"
    exit 0
  fi
fi
node --max-semi-space-size=1 "$bundle" "$@" < "$tmp"
rc=$?
rm -f "$tmp"
exit $rc
