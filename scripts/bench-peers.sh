#!/usr/bin/env bash
# Benchmarks device-to-device transfers: the first read on device B of a file that only
# device A holds (a device-only folder), over a direct peer channel and through the relay,
# both on loopback, in MB/s; beside them `openssl speed` for AES-128-CTR and HMAC-SHA256 on
# this machine (the channel's crypto ceiling), and the cost of one peer handshake.
#
# Setup: a `meshfs cloud` (with its relay) on 127.0.0.1, one user, devices A, B and C. A
# writes the file; B reads it with A reachable directly; then A is restarted advertising an
# address nobody listens on, so C (a fresh device) reaches A only through the relay.
#
# Usage:   scripts/bench-peers.sh
# Env:     MESHFS_BIN=path        use this binary instead of `cargo build --release --locked`
#          BENCH_SIZE_MIB=N       size of the file (default 1024)
#          BENCH_RUNS=N           first reads of each kind, reported as their median (default 3)
#          BENCH_TMP=dir          parent of the temp dir (default /var/tmp)
#          BENCH_QUICK=1          skip openssl speed and the handshake and record-layer costs
#          BENCH_PERF=dir         record each timed read system-wide with `perf record` into dir
#                                 (BENCH_PERF_ARGS adds options, e.g. "-g"); slows the reads
# Output:  the table on stdout and in target/bench/peers.md; logs in target/bench/peers-logs/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT="$ROOT/target/bench"
LOGS="$OUT/peers-logs"
SIZE_MIB=${BENCH_SIZE_MIB:-1024}
SIZE_BYTES=$((SIZE_MIB * 1024 * 1024))
RUNS=${BENCH_RUNS:-3}
PASSWORD="bench password $$"

log() { printf '[bench-peers %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

T=""
PIDS=()
MOUNTS=()
is_mounted() { awk -v p="$1" '$2 == p { found = 1 } END { exit !found }' /proc/self/mounts; }

stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? pid m
    set +e
    trap - EXIT INT TERM
    if [[ $rc -ne 0 ]]; then
        for m in "$LOGS"/*.log; do echo "----- tail of $m -----" >&2; tail -n 20 "$m" >&2; done
    fi
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    for m in "${MOUNTS[@]}"; do
        is_mounted "$m" && { fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m"; }
    done
    [[ -n "$T" && -d "$T" ]] && rm -rf --one-file-system "$T"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

command -v fusermount3 >/dev/null || die "fusermount3 is missing (Debian package fuse3)"
command -v openssl >/dev/null || die "openssl is missing (Debian package openssl)"

source "$ROOT/scripts/lib/release.sh"
release_binary
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)

mkdir -p "$OUT" "$LOGS"
rm -f "$LOGS"/*.log
T=$(mktemp -d "${BENCH_TMP:-/var/tmp}/meshfs-bench-peers.XXXXXX")
export MESHFS_LOG=${MESHFS_LOG:-info,fuser=warn}
export NO_COLOR=1

CLOUD_DATA="$T/cloud"
"$BIN" cloud --allow-local-peers --data-dir "$CLOUD_DATA" --listen 127.0.0.1:0 </dev/null >/dev/null 2>"$LOGS/cloud.log" &
CLOUD=$!
PIDS+=("$CLOUD")
ADDR=""
for ((i = 0; i < 300; i++)); do
    ADDR=$(sed -n 's/.*cloud listening on https:\/\/\([^ ]*\).*/\1/p' "$LOGS/cloud.log" | head -n1)
    [[ -n "$ADDR" ]] && break
    sleep 0.1
done
[[ -n "$ADDR" ]] || die "the cloud did not start"
echo "$PASSWORD" | "$BIN" user add bench --password-stdin --data-dir "$CLOUD_DATA" >>"$LOGS/cli.log" 2>&1
for dev in a b c; do
    echo "$PASSWORD" | "$BIN" login --cloud "https://$ADDR" --ca "$CLOUD_DATA/ca.pem" --user bench \
        --password-stdin --home "$T/home-$dev" --device-name "bench-$dev" >>"$LOGS/cli.log" 2>&1 ||
        die "login of $dev failed"
    mkdir -p "$T/mnt-$dev"
done
"$BIN" folder create Private --device-only --home "$T/home-a" >>"$LOGS/cli.log" 2>&1

AGENT_A=""
start_agent() { # start_agent NAME [mount flags...]; sets LAST_PID
    local name=$1; shift
    MESHFS_PEER_LISTEN=127.0.0.1:0 "$BIN" mount "$T/mnt-$name" --home "$T/home-$name" "$@" \
        </dev/null >/dev/null 2>>"$LOGS/agent-$name.log" &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    MOUNTS+=("$T/mnt-$name")
    for ((i = 0; i < 200; i++)); do
        [[ -d "$T/mnt-$name/Private" ]] && return 0
        kill -0 "$LAST_PID" 2>/dev/null || die "agent $name exited"
        sleep 0.1
    done
    die "agent $name did not show the folder"
}
counter() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["counters"][sys.argv[2]])' "$T/home-$1/status.json" "$2"; }
pending() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pending_uploads"])' "$T/home-$1/status.json"; }

start_agent a
AGENT_A=$LAST_PID
start_agent b
AGENT_B=$LAST_PID
log "writing ${SIZE_MIB} MiB on A"
head -c "$SIZE_BYTES" /dev/urandom >"$T/big.bin"
cp "$T/big.bin" "$T/mnt-a/Private/big.bin"
WANT=$(sha256sum <"$T/big.bin" | cut -d' ' -f1)
sleep 2
for ((i = 0; i < 600; i++)); do [[ "$(pending a 2>/dev/null)" == 0 ]] && break; sleep 0.5; done

# Before each timed read: everything on disk (no writeback of earlier runs competes), the
# page cache emptied and A's blocks read back into it (A holds the file as it would just
# after writing it), and twice the file's size of memory touched and freed. The last step
# is for this kind of virtual machine: the host backs guest memory lazily and takes freed
# pages back after a few seconds, so the first touch of a page costs several times a copy
# and would be counted against whichever step happened to fill the page cache.
prepare() {
    sync
    echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
    find "$T/home-a/cache/blocks" -type f -exec cat {} + >/dev/null
    python3 -c 'import sys
b = bytearray(int(sys.argv[1]))
for i in range(0, len(b), 4096): b[i] = 1' $((2 * SIZE_BYTES + (512 << 20)))
}

# CPU time (user + system, in clock ticks) of one process and all its threads, and of the
# whole machine (every core, kernel threads included).
ticks_of() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
busy_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
TICK=$(getconf CLK_TCK)

first_read() { # first_read DEVICE -> seconds; checks the bytes; CPU per process in CPU_ROW
    # Only the read is timed (`cat` to /dev/null, as `cp` would read): hashing 1 GiB with
    # sha256sum costs this machine about 2.8 s of CPU, more than the transfer itself, and
    # would share the two cores with both agents. The bytes are checked afterwards, from
    # the pages the timed read left in the reader's page cache.
    local dev=$1 t0 t1 got
    for ((i = 0; i < 600; i++)); do
        [[ "$(stat -c %s "$T/mnt-$dev/Private/big.bin" 2>/dev/null)" == "$SIZE_BYTES" ]] && break
        sleep 0.1
    done
    prepare
    local c0=() c1=() p
    for p in "$READER" "$AGENT_A" "$CLOUD"; do c0+=("$(ticks_of "$p")"); done
    c0+=("$(busy_ticks)")
    local perf=""
    if [[ -n ${BENCH_PERF:-} ]]; then
        mkdir -p "$BENCH_PERF"
        perf record -q -a -F 1999 ${BENCH_PERF_ARGS:-} -o "$BENCH_PERF/$dev-$(date +%s).data" 2>/dev/null &
        perf=$!
        sleep 1
    fi
    t0=$(date +%s%N)
    cat "$T/mnt-$dev/Private/big.bin" >/dev/null
    t1=$(date +%s%N)
    [[ -z $perf ]] || { kill -INT "$perf"; wait "$perf" || true; }
    for p in "$READER" "$AGENT_A" "$CLOUD"; do c1+=("$(ticks_of "$p")"); done
    c1+=("$(busy_ticks)")
    # CPU seconds per GiB read: reader, sender, cloud (with its relay), the rest (cat, the
    # kernel's threads), all.
    CPU_ROW=$(awk -v t="$TICK" -v gib="$SIZE_BYTES" -v a="${c0[*]}" -v b="${c1[*]}" 'BEGIN {
        split(a, x, " "); split(b, y, " "); f = 1073741824 / gib / t
        r = (y[1] - x[1]) * f; s = (y[2] - x[2]) * f; c = (y[3] - x[3]) * f; all = (y[4] - x[4]) * f
        printf "%.2f %.2f %.2f %.2f %.2f", r, s, c, all - r - s - c, all }')
    got=$(sha256sum <"$T/mnt-$dev/Private/big.bin" | cut -d' ' -f1)
    [[ "$got" == "$WANT" ]] || die "device $dev read wrong bytes"
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'
}
mbps() { awk -v s="$1" -v n="$SIZE_BYTES" 'BEGIN { printf "%.0f", n / s / 1e6 }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
range() { printf '%s\n' "$@" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo "-" hi }'; }

# reads DEVICE [mount flags...] -> RUNS first reads, each by an agent with an empty cache.
reads() {
    local dev=$1 run pid
    shift
    READS=()
    CPUS=()
    for ((run = 0; run < RUNS; run++)); do
        start_agent "$dev" "$@"
        pid=$LAST_PID
        READER=$pid
        first_read "$dev" >"$T/read-result"
        READS+=("$(cat "$T/read-result")")
        CPUS+=("$CPU_ROW")
        sleep 1.5
        PEER_BYTES=$(counter "$dev" bytes_from_peers)
        [[ $PEER_BYTES == "$SIZE_BYTES" ]] || die "device $dev took $PEER_BYTES bytes from peers, not $SIZE_BYTES"
        stop_pid "$pid"
        # Set aside, not deleted: ext4 allocates inodes slowly next to many just freed,
        # which would slow the next run's block files. Removed with the rest at the end.
        mv "$T/home-$dev/cache" "$T/old-cache-$dev-$run"
    done
}

stop_pid "$AGENT_B"
log "first reads on B, A reachable directly ($RUNS runs)"
reads b
DIRECT=("${READS[@]}")
DIRECT_CPU=("${CPUS[@]}")

log "restarting A so that it advertises an address nobody listens on; C reads through the relay"
stop_pid "$AGENT_A"
start_agent a --peer-advertise 127.0.0.1:9
AGENT_A=$LAST_PID
reads c
RELAYED=("${READS[@]}")
RELAYED_CPU=("${CPUS[@]}")

AES=0 HMAC=0 COSTS="(costs not measured: BENCH_QUICK=1)"
kps() { awk -v k="${1%k}" 'BEGIN { printf "%.0f", k * 1000 / 1e6 }'; }
if [[ ${BENCH_QUICK:-0} != 1 ]]; then
    log "openssl speed (16 KiB blocks, one core)"
    AES=$(openssl speed -seconds 3 -evp aes-128-ctr 2>/dev/null | awk '/^AES-128-CTR/ { print $NF }')
    HMAC=$(openssl speed -seconds 3 -hmac sha256 2>/dev/null | awk '/^hmac\(sha256\)/ { print $NF }')
    log "handshake and record-layer cost (cargo test --release, ignored measurement tests)"
    COSTS=$(cd "$ROOT" && cargo test --release --locked --lib -q -- --ignored --nocapture handshake_cost throughput 2>/dev/null |
        grep -E 'handshake|MB/s' | sed 's/^[.i]*//' || true)
fi

{
    echo "# meshfs peer transfers ($(date +%F), commit $COMMIT, $(nproc) cores)"
    echo
    echo '```'
    printf '%-40s %9s %7s %15s\n' "first read of ${SIZE_MIB} MiB held only by A" "seconds" "MB/s" "MB/s, min-max"
    for row in "B, direct channel (loopback):DIRECT" "C, through the relay (loopback):RELAYED"; do
        declare -n runs=${row#*:}
        secs=$(median "${runs[@]}")
        rates=()
        for t in "${runs[@]}"; do rates+=("$(mbps "$t")"); done
        printf '%-40s %9s %7s %15s\n' "${row%:*}" "$secs" "$(mbps "$secs")" "$(range "${rates[@]}")"
    done
    echo
    printf '%-40s %8s %8s %8s %8s %8s\n' "CPU seconds per GiB (median run)" reader sender cloud other all
    for row in "B, direct:DIRECT" "C, relayed:RELAYED"; do
        declare -n runs=${row#*:}
        declare -n cpus=${row#*:}_CPU
        secs=$(median "${runs[@]}")
        for i in "${!runs[@]}"; do [[ ${runs[$i]} == "$secs" ]] && break; done
        printf '%-40s %8s %8s %8s %8s %8s\n' "${row%:*}" ${cpus[$i]}
    done
    echo
    printf '%-44s %23s\n' "openssl speed, 16 KiB blocks, one core" "MB/s"
    printf '%-44s %23s\n' "AES-128-CTR" "$(kps "$AES")"
    printf '%-44s %23s\n' "HMAC-SHA256" "$(kps "$HMAC")"
    echo
    echo "medians of $RUNS runs, each a fresh cache on the reader; every run took all $SIZE_BYTES bytes from A"
    echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "$COSTS"
    echo '```'
} | tee "$OUT/peers.md"
