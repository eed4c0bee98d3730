#!/usr/bin/env bash
# Try meshfs on one machine: builds it, starts an embedded cloud, makes a user and a device,
# creates a Mesh Folder `Documents`, and mounts the mesh in the foreground until Ctrl-C.
#
# Usage: scripts/demo.sh [MOUNTPOINT]        (default: ~/Mesh)
#
#   MESHFS_DEMO_DIR     where the demo keeps its state (default ~/.local/share/meshfs-demo):
#                         cloud/      the cloud's data directory (database, keys, CA, blocks)
#                         device/     this device's home (key, pinned CA, cache)
#                         password    the demo user's password (mode 0600)
#                         cloud.log   the cloud's log
#   MESHFS_DEMO_LISTEN  the cloud's address (default 127.0.0.1:8443); keep it the same
#                       across runs, the device remembers it
#   MESHFS_BIN          use this meshfs binary instead of building one
#
# Running it again reuses everything: same user, same device, same files. Remove
# MESHFS_DEMO_DIR to start over.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

MP="${1:-$HOME/Mesh}"
DEMO="${MESHFS_DEMO_DIR:-$HOME/.local/share/meshfs-demo}"
LISTEN="${MESHFS_DEMO_LISTEN:-127.0.0.1:8443}"
USER_NAME=demo
FOLDER=Documents
CLOUD_DIR="$DEMO/cloud"
HOME_DIR="$DEMO/device"
URL="https://$LISTEN"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'scripts/demo.sh: %s\n' "$*" >&2; exit 1; }

# ---- what it needs ----

if ! command -v fusermount3 >/dev/null; then
    [[ $(id -u) -eq 0 ]] ||
        die "fusermount3 is missing; install Debian's fuse3 package (sudo apt-get install fuse3)"
    say "installing fuse3 (for fusermount3)"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends fuse3
fi
[[ -c /dev/fuse ]] ||
    die "/dev/fuse is missing: load the module (modprobe fuse), or in a container run it with --device /dev/fuse --cap-add SYS_ADMIN"
if [[ $(id -u) -ne 0 ]] && ! grep -qs '^[[:space:]]*user_allow_other' /etc/fuse.conf; then
    die "the agent mounts with auto_unmount, which needs allow_other: add the line
    user_allow_other
to /etc/fuse.conf (as root), or run the demo as root"
fi
[[ -n ${MESHFS_BIN:-} ]] || command -v cargo >/dev/null ||
    die "cargo is missing; install Rust (https://rustup.rs), 1.89 or newer"

if [[ -n ${MESHFS_BIN:-} ]]; then
    BIN="$MESHFS_BIN"
    [[ -x $BIN ]] || die "MESHFS_BIN=$BIN is not an executable"
else
    say "building meshfs (release)"
    cargo build --release --locked
    BIN="${CARGO_TARGET_DIR:-target}/release/meshfs"
    [[ -x $BIN ]] || die "the build did not produce $BIN"
fi
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"

# ---- stopping cleanly ----

CLOUD_PID=""
AGENT_PID=""

is_mounted() {
    local p
    p="$(realpath -m "$MP")"
    awk -v p="$p" '$3 == "fuse.meshfs" && $2 == p { found = 1 } END { exit !found }' /proc/self/mounts
}

stop_pid() { # pid name seconds
    local pid=$1 name=$2 secs=$3 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "scripts/demo.sh: the $name did not stop in ${secs} s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM HUP
    if [[ -n $AGENT_PID ]]; then
        say "stopping the agent (unmounting $MP)"
        stop_pid "$AGENT_PID" agent 20
    fi
    # A safety net: the agent unmounts on SIGTERM; this catches an agent that died.
    if is_mounted; then
        fusermount3 -u -z "$MP" 2>/dev/null || umount -l "$MP" 2>/dev/null || true
    fi
    if [[ -n $CLOUD_PID ]]; then
        say "stopping the cloud"
        stop_pid "$CLOUD_PID" cloud 15
    fi
    exit "$status"
}
trap cleanup EXIT
# Ctrl-C or SIGTERM is how the demo is meant to end: a clean stop exits 0.
trap 'exit 0' INT TERM
trap 'exit 129' HUP

# ---- the cloud ----

mkdir -p "$DEMO"
chmod 700 "$DEMO"

if (exec 3<>"/dev/tcp/${LISTEN%:*}/${LISTEN##*:}") 2>/dev/null; then
    die "something already listens on $LISTEN (another demo?). Stop it, or set MESHFS_DEMO_LISTEN=127.0.0.1:PORT"
fi

# The user is added before the cloud starts, so only one process has the database open.
if [[ ! -f $DEMO/password ]]; then
    say "adding user $USER_NAME"
    password="$(head -c 15 /dev/urandom | base64 | tr -d '+/=')"
    (umask 077 && printf '%s\n' "$password" >"$DEMO/password.new")
    printf '%s\n' "$password" | "$BIN" user add "$USER_NAME" --password-stdin --data-dir "$CLOUD_DIR"
    mv "$DEMO/password.new" "$DEMO/password"
    printf '\n    user: %s   password: %s\n    (shown once; kept in %s, mode 0600)\n\n' \
        "$USER_NAME" "$password" "$DEMO/password" >&2
fi

say "starting the cloud on $URL (log: $DEMO/cloud.log)"
: >"$DEMO/cloud.log"
# Its own session: Ctrl-C reaches the agent first, and the cloud is stopped after it.
# Every device of the demo runs on this machine, so their peer addresses are loopback ones.
setsid "$BIN" cloud --data-dir "$CLOUD_DIR" --listen "$LISTEN" --allow-local-peers \
    </dev/null >>"$DEMO/cloud.log" 2>&1 &
CLOUD_PID=$!
for ((i = 0; ; i++)); do
    grep -q 'listening on https://' "$DEMO/cloud.log" && break
    if ! kill -0 "$CLOUD_PID" 2>/dev/null; then
        cat "$DEMO/cloud.log" >&2
        CLOUD_PID=""
        die "the cloud did not start (its log is above)"
    fi
    ((i < 600)) || die "the cloud did not start within 60 s (see $DEMO/cloud.log)"
    sleep 0.1
done

# ---- this device ----

if [[ ! -f $HOME_DIR/device.toml ]]; then
    say "logging this device in as $USER_NAME"
    "$BIN" login --cloud "$URL" --ca "$CLOUD_DIR/ca.pem" --user "$USER_NAME" \
        --password-stdin --home "$HOME_DIR" <"$DEMO/password"
elif ! grep -qF "\"$URL\"" "$HOME_DIR/device.toml"; then
    die "the device in $HOME_DIR was logged in to another cloud address than $URL; set MESHFS_DEMO_LISTEN as on the first run"
fi

if ! "$BIN" folder list --home "$HOME_DIR" | awk -v f="$FOLDER" 'NR > 1 && $2 == f { found = 1 } END { exit !found }'; then
    say "creating the Mesh Folder $FOLDER"
    "$BIN" folder create "$FOLDER" --home "$HOME_DIR" >/dev/null
fi

# ---- the mount ----

if is_mounted; then
    die "$MP is already a meshfs mount; stop the agent serving it first"
fi
mkdir -p "$MP"

cat >&2 <<MSG

The mesh is being mounted at $MP. In another terminal, try:

    ls $MP                                  # your Mesh Folders
    cp /etc/hostname $MP/$FOLDER/
    ls -l $MP/$FOLDER
    $BIN status --home $HOME_DIR

The agent's log follows here; press Ctrl-C to unmount and stop the cloud.

MSG

"$BIN" mount "$MP" --home "$HOME_DIR" </dev/null &
AGENT_PID=$!
# `wait` returns early when a signal arrives, so the traps above run at once.
set +e
wait "$AGENT_PID"
status=$?
set -e
AGENT_PID=""
if ((status != 0)); then
    die "the agent stopped with status $status"
fi
