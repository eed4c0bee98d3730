#!/usr/bin/env bash
# The project's one test command (CI runs it through .ci/run): formatting, lints, and every
# test, including the ones that mount the mesh through FUSE and run real cloud processes.
#
# On a fresh Debian machine it installs what the tests need (fuse3, iproute2, util-linux, git,
# sqlite3, libglib2.0-bin, attr, rsync, curl, and for the second pass on the scale-out engines
# postgresql-15 and moto's S3 server) when it is absent; that needs root. The relay test makes
# network namespaces, which needs root too. The FUSE tests need /dev/fuse, and either root or
# `user_allow_other` in /etc/fuse.conf (the agent mounts with auto_unmount, which needs
# allow_other).
#
# Usage: scripts/test.sh            (from anywhere in the repository)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '\n==> %s\n' "$*" >&2; }
die() { printf '\nscripts/test.sh: %s\n' "$*" >&2; exit 1; }

# The tests make their temporary directories (and mount points) under TMPDIR; give this run
# its own, so that cleaning up touches only what this run made and never, say, a demo's or a
# benchmark's mount on the same machine.
RUN_TMP="$(realpath "$(mktemp -d "${TMPDIR:-/tmp}/meshfs-test.XXXXXX")")"
# Others may pass through (not list): the --allow-other test reaches a mount in here as
# user nobody.
chmod 0711 "$RUN_TMP"
export TMPDIR="$RUN_TMP"

meshfs_mounts() {
    # /proc/self/mounts escapes spaces and friends as \040 etc.; printf %b decodes them.
    awk '$3 == "fuse.meshfs" { print $2 }' /proc/self/mounts 2>/dev/null |
        while IFS= read -r p; do printf '%b\n' "$p"; done
}

cleanup() {
    local status=$? m left=0
    # The second pass's servers (scripts/lib/engines.sh), if it got that far.
    if declare -F stop_engines >/dev/null; then stop_engines; fi
    while IFS= read -r m; do
        [[ $m == "$RUN_TMP"/* ]] || continue
        left=1
        echo "scripts/test.sh: unmounting leftover meshfs mount $m" >&2
        fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done < <(meshfs_mounts)
    if ((left)); then
        echo "scripts/test.sh: a test left a mount behind (see above); that is a bug" >&2
    fi
    # --one-file-system: never descend into a mount that is still going away.
    rm -rf --one-file-system "$RUN_TMP" 2>/dev/null || true
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step() {
    local started=$SECONDS
    say "$*"
    "$@"
    echo "    ($((SECONDS - started)) s)" >&2
}

# ---- what the tests need ----

# Each tool the tests run, and the Debian package it comes in: fusermount3 for the mounts'
# auto-unmount, ip and nsenter for the relay test's network namespaces, git and sqlite3 for
# the application tests, gio for what a GIO file manager asks of a folder it opens, getfattr
# for extended attributes, rsync, setpriv (to act as another user) and fallocate for the
# tests against the native disk; nss_wrapper gives a scale test a cloud name with two
# addresses.
missing=()
for pair in fusermount3:fuse3 ip:iproute2 nsenter:util-linux git:git sqlite3:sqlite3 gio:libglib2.0-bin getfattr:attr rsync:rsync setpriv:util-linux fallocate:util-linux curl:curl runuser:util-linux; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
dpkg-query -W -f '${Status}' libnss-wrapper 2>/dev/null | grep -q 'ok installed' ||
    missing+=(libnss-wrapper)
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        die "missing tools; install Debian's ${missing[*]} (as root: apt-get install ${missing[*]})"
    fi
    say "installing ${missing[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

if [[ ! -c /dev/fuse ]]; then
    die "/dev/fuse is missing, so the tests cannot mount anything. Load the module
    (modprobe fuse) or, in a container, start it with --device /dev/fuse --cap-add SYS_ADMIN."
fi
if [[ $(id -u) -ne 0 ]] && ! grep -qs '^[[:space:]]*user_allow_other' /etc/fuse.conf; then
    echo "scripts/test.sh: warning: not root and /etc/fuse.conf lacks user_allow_other;" \
        "the mount tests will fail" >&2
fi

command -v cargo >/dev/null ||
    die "cargo is missing; install Rust (https://rustup.rs), 1.89 or newer"
for tool in rustfmt clippy; do
    if ! cargo "${tool/rustfmt/fmt}" --version >/dev/null 2>&1; then
        command -v rustup >/dev/null || die "cargo $tool is missing and there is no rustup to add it"
        say "adding the $tool component"
        rustup component add "$tool"
    fi
done

# ---- the checks ----

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-$([[ -t 2 ]] && echo always || echo never)}"
started=$SECONDS
step cargo fmt --check
# clippy and the tests share target/debug (same profile, same flags), so dependencies that
# clippy has built for its checks are reused by the test build's build scripts.
step cargo clippy --all-targets --locked -- -D warnings
# The library's tests (the filesystem, the uploader, the feed over an in-memory cloud) run
# where FUSE and the network are out of reach, to show they need neither; then the rest.
step bash scripts/test-without-fuse.sh
step cargo test --locked --bins --test '*'
step cargo test --locked --doc

# ---- again on the scale-out engines ----

# The integration suite once more with each test's cloud on PostgreSQL 15 and an S3 server
# (a throwaway cluster and moto's server on loopback ports; see scripts/lib/engines.sh),
# as two processes, the devices starting on each in turn (tests/common/mod.rs).
source scripts/lib/engines.sh
step install_engines
step start_postgres "$RUN_TMP"
step start_s3 "$RUN_TMP"
export MESHFS_TEST_POSTGRES=$PG_URL MESHFS_TEST_S3=$S3_URL
step cargo test --locked --bins --test '*'
say "all checks passed in $((SECONDS - started)) s"
