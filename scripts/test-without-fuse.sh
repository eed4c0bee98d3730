#!/usr/bin/env bash
# Runs the library's tests (`cargo test --lib`: the filesystem, the uploader, the feed, the
# crypto, the cloud's parts) where no FUSE mount and no network are possible, to show that
# they need neither: in a mount namespace of their own where /dev/fuse is /dev/null, and a
# network namespace of their own where only loopback is up (the peer channel's tests talk
# TCP to themselves), so nothing outside the namespace, no cloud process included, can be
# reached. Needs root (unshare); scripts/test.sh runs it.
#
# Usage: scripts/test-without-fuse.sh [extra `cargo test` arguments]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[[ $(id -u) -eq 0 ]] || { echo "scripts/test-without-fuse.sh: needs root (unshare)" >&2; exit 1; }
command -v unshare >/dev/null || { echo "scripts/test-without-fuse.sh: unshare is missing (util-linux)" >&2; exit 1; }

# Built outside first: the namespace has no network for cargo to fetch anything with.
cargo test --locked --lib --no-run

exec unshare --mount --propagation private --net -- bash -c '
    set -euo pipefail
    mount --bind /dev/null /dev/fuse
    if [[ $(stat -c %t:%T /dev/fuse) != "$(stat -c %t:%T /dev/null)" ]]; then
        echo "/dev/fuse is still the FUSE device; refusing to test with it" >&2
        exit 1
    fi
    ip link set lo up
    if ip -brief link | grep -v "^lo " | grep -q .; then
        echo "the test network namespace has an interface besides loopback" >&2
        exit 1
    fi
    echo "/dev/fuse is /dev/null and only loopback is up: running cargo test --lib" >&2
    exec cargo test --locked --offline --lib "$@"
' bash "$@"
