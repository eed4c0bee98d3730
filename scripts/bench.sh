#!/usr/bin/env bash
# Benchmarks a real meshfs mount side by side with the native disk and baselines on the same
# data: bindfs (a passthrough FUSE), and two network filesystems over loopback SSH, rclone
# mount (SFTP, --vfs-cache-mode full) and sshfs; prints a table of medians and ratios to
# native.
#
# Setup: a `meshfs cloud` on 127.0.0.1, one user, two devices A and B logged in, folder
# `Bench` mounted on both. The test data is written through A's mount and uploaded; every
# measurement is taken on B's mount, so B's first read of a file is an on-demand fetch from
# the cloud. The same data is laid out on the native disk in the same temp filesystem.
# Two further workloads: `git status` in a repository cloned through A's mount (measured on
# B, which did not write it, and on A), and SQLite inserts into a database on A's mount (the
# writing device), each run on a fresh database file, with the changes and bytes A uploads
# for them. Last, a third device C with a 256 MiB cache reads the big file for the first
# time. B's cache is large enough (BENCH_B_CACHE) that the big file, once fetched, is read
# by FUSE passthrough where the kernel has it. Then device P, logged in with --protect
# (heightened security: blocks and metadata sealed on disk, no passthrough), repeats B's
# read rows; the report gives P's times as ratios to B's.
#
# Usage:   sudo scripts/bench.sh            (root: cold runs need /proc/sys/vm/drop_caches)
#          BENCH_QUICK=1 scripts/bench.sh   (256 MiB, 2,000 files, git 2,000 files, sqlite 500 txns
#                                            and 20,000 inserts, 3 runs)
# Env:     MESHFS_BIN=path        use this binary instead of `cargo build --release --locked`
#          BENCH_RUNS=N           runs per measurement (default 5, quick 3)
#          BENCH_SIZE_MIB=N       size of the sequential file (default 1024, quick 256)
#          BENCH_DIRS=N BENCH_FILES_PER_DIR=N   small-file tree (default 100 x 100, quick 20 x 100)
#          BENCH_GIT_DIRS=N BENCH_GIT_FILES_PER_DIR=N   git repository (default 50 x 100, quick 20 x 100)
#          BENCH_SQLITE_TXNS=N    inserts, each in its own transaction (default 2000, quick 500)
#          BENCH_SQLITE_BATCH=N   inserts in one transaction (default 100000, quick 20000)
#          BENCH_BINDFS=0         skip the bindfs column
#          BENCH_NETFS=0          skip the rclone and sshfs columns
#          BENCH_NO_INSTALL=1     never apt-get install missing tools
#          BENCH_TMP=dir          parent of the temp dir (default /var/tmp; must not be tmpfs)
#          BENCH_COLD=0           skip cold rows (no sync, no drop_caches)
#          BENCH_B_CACHE=SIZE     B's --cache-size (default 8G: views take up to a quarter)
#          BENCH_C_CACHE=SIZE     C's --cache-size for its first read (default 256M)
#          BENCH_PROTECTED=0      skip the protected device P
#          BENCH_ROW_LIMIT=S      seconds one measurement may take before it is stopped and
#                                 shown as ERR (default 1800)
# Output:  the table on stdout and in target/bench/results.md; agent/cloud logs and
#          hyperfine JSON in target/bench/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT="$ROOT/target/bench"
LOGS="$OUT/logs"

QUICK=${BENCH_QUICK:-0}
if [[ "$QUICK" == 1 ]]; then
    RUNS=${BENCH_RUNS:-3}; SIZE_MIB=${BENCH_SIZE_MIB:-256}
    DIRS=${BENCH_DIRS:-20}; PER_DIR=${BENCH_FILES_PER_DIR:-100}
    GIT_DIRS=${BENCH_GIT_DIRS:-20}; GIT_PER_DIR=${BENCH_GIT_FILES_PER_DIR:-100}
    SQL_TXNS=${BENCH_SQLITE_TXNS:-500}; SQL_BATCH=${BENCH_SQLITE_BATCH:-20000}
else
    RUNS=${BENCH_RUNS:-5}; SIZE_MIB=${BENCH_SIZE_MIB:-1024}
    DIRS=${BENCH_DIRS:-100}; PER_DIR=${BENCH_FILES_PER_DIR:-100}
    GIT_DIRS=${BENCH_GIT_DIRS:-50}; GIT_PER_DIR=${BENCH_GIT_FILES_PER_DIR:-100}
    SQL_TXNS=${BENCH_SQLITE_TXNS:-2000}; SQL_BATCH=${BENCH_SQLITE_BATCH:-100000}
fi
NFILES=$((DIRS * PER_DIR))
GIT_NFILES=$((GIT_DIRS * GIT_PER_DIR))
SIZE_BYTES=$((SIZE_MIB * 1024 * 1024))
PASSWORD="bench password $$"
WAIT_UPLOAD_S=${BENCH_UPLOAD_TIMEOUT:-1800}

LOGLEVEL_RE='^[^ ]+ +(WARN|ERROR) '
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- cleanup (always runs)
T=""
CLOUD_PID=""
SSHD_PID=""
AGENT_PIDS=()
MOUNTS=()
FAILED=0

is_mounted() { awk -v p="$1" '$2 == p { found = 1 } END { exit !found }' /proc/self/mounts; }

show_log_tails() {
    local f
    for f in "$LOGS"/*.log; do
        [[ -s "$f" ]] || continue
        echo "----- tail of $f -----" >&2
        tail -n 25 "$f" >&2
    done
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [[ $rc -ne 0 ]]; then
        log "failed (exit $rc); logs:"
        show_log_tails
    fi
    local pid m i
    for m in "${MOUNTS[@]}"; do
        is_mounted "$m" && [[ $m == *mnt-base-* ]] && fusermount3 -u "$m" 2>/dev/null
    done
    [[ -n "$SSHD_PID" ]] && kill -TERM "$SSHD_PID" 2>/dev/null
    for pid in "${AGENT_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${AGENT_PIDS[@]}"; do
        for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "agent $pid ignored SIGTERM for 15 s; killing it"
            kill -KILL "$pid" 2>/dev/null
        fi
        wait "$pid" 2>/dev/null
    done
    for m in "${MOUNTS[@]}"; do
        if is_mounted "$m"; then
            log "detaching leftover mount $m"
            fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
        fi
    done
    if [[ -n "$CLOUD_PID" ]]; then
        kill -TERM "$CLOUD_PID" 2>/dev/null
        for ((i = 0; i < 50; i++)); do kill -0 "$CLOUD_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$CLOUD_PID" 2>/dev/null
        wait "$CLOUD_PID" 2>/dev/null
    fi
    if [[ -n "$T" && -d "$T" ]]; then
        if awk -v t="$T/" 'index($2, t) == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
            log "a mount is still under $T; leaving the directory in place"
        else
            rm -rf --one-file-system "$T"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- tools
CAN_DROP=0
[[ -w /proc/sys/vm/drop_caches && "${BENCH_COLD:-1}" != 0 ]] && CAN_DROP=1

apt_install() {
    [[ "${BENCH_NO_INSTALL:-0}" == 1 || $EUID -ne 0 ]] && return 1
    command -v apt-get >/dev/null || return 1
    log "installing $*"
    apt-get install -y -qq "$@" >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "$@" >/dev/null 2>&1; }
}

command -v fusermount3 >/dev/null || apt_install fuse3 || die "fusermount3 is missing (Debian package fuse3)"
command -v hyperfine >/dev/null || apt_install hyperfine || log "hyperfine not available; timing runs with date"
command -v git >/dev/null || apt_install git || die "git is missing (Debian package git)"
command -v sqlite3 >/dev/null || apt_install sqlite3 || die "the sqlite3 CLI is missing (Debian package sqlite3)"
HAVE_HYPERFINE=0
command -v hyperfine >/dev/null && HAVE_HYPERFINE=1
# The baselines wanted (each mounts the native Bench data; see mount_baselines).
WANT_BASE=()
if [[ "${BENCH_BINDFS:-1}" != 0 ]]; then
    command -v bindfs >/dev/null || apt_install bindfs || true
    command -v bindfs >/dev/null && WANT_BASE+=(bindfs)
fi
if [[ "${BENCH_NETFS:-1}" != 0 ]]; then
    [[ -x /usr/sbin/sshd ]] || apt_install openssh-server || true
    command -v rclone >/dev/null || apt_install rclone || true
    command -v sshfs >/dev/null || apt_install sshfs || true
    if [[ -x /usr/sbin/sshd ]]; then
        command -v rclone >/dev/null && WANT_BASE+=(rclone)
        command -v sshfs >/dev/null && WANT_BASE+=(sshfs)
    fi
fi
[[ -w /proc/sys/vm/drop_caches ]] || log "not root: /proc/sys/vm/drop_caches is not writable, cold rows are skipped"
# A FUSE mount whose daemon no longer answers (say, one left by a killed test) can hang every
# `sync` on the machine in the kernel; then cold rows would wait forever.
if [[ $CAN_DROP == 1 ]]; then
    sync &
    SYNC_PID=$!
    for ((i = 0; i < 300; i++)); do kill -0 "$SYNC_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$SYNC_PID" 2>/dev/null; then
        log "WARNING: sync (pid $SYNC_PID) has not returned in 30 s (a hung mount? see ps -eo pid,stat,cmd | awk '\$2 ~ /D/'); cold rows are skipped"
        CAN_DROP=0
    else
        wait "$SYNC_PID" || true
    fi
fi

json_get() { # json_get FILE JQ_PATH (simple dotted paths only)
    if command -v jq >/dev/null; then
        jq -r "$2" "$1"
    else
        python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))
for k in sys.argv[2].strip(".").replace("[",".").replace("]","").split("."):
    v = v[int(k)] if k.isdigit() else v[k]
print(v)' "$1" "$2"
    fi
}

# ---------------------------------------------------------------- build
source "$ROOT/scripts/lib/release.sh"
release_binary

COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    COMMIT="$COMMIT (working tree has uncommitted changes)"
fi
[[ -n "${MESHFS_BIN:-}" ]] && COMMIT="$COMMIT; binary from MESHFS_BIN, built $(date -r "$BIN" +'%F %T')"

# ---------------------------------------------------------------- temp dir, cloud, devices
mkdir -p "$OUT" "$LOGS"
rm -f "$LOGS"/*.log "$LOGS"/*.out "$LOGS"/*.err "$LOGS"/*.txt "$OUT"/*.json
BENCH_TMP=${BENCH_TMP:-/var/tmp}
T=$(mktemp -d "$BENCH_TMP/meshfs-bench.XXXXXX")
FSTYPE=$(stat -f -c %T "$T")
[[ "$FSTYPE" == tmpfs ]] && die "$T is on tmpfs; set BENCH_TMP to a disk directory"

CLOUD_DATA="$T/cloud"
HOME_A="$T/home-a"; HOME_B="$T/home-b"; HOME_C="$T/home-c"; HOME_P="$T/home-p"
MNT_A="$T/mnt-a"; MNT_B="$T/mnt-b"; MNT_C="$T/mnt-c"; MNT_P="$T/mnt-p"
NATIVE="$T/native"
mkdir -p "$MNT_A" "$MNT_B" "$MNT_C" "$MNT_P" "$NATIVE/Bench"
PROTECTED=${BENCH_PROTECTED:-1}
PASSPHRASE_FILE="$T/passphrase"
(umask 077 && echo "bench passphrase $$" >"$PASSPHRASE_FILE")
B_CACHE=${BENCH_B_CACHE:-8G}; C_CACHE=${BENCH_C_CACHE:-256M}
export MESHFS_LOG=${MESHFS_LOG:-info,fuser=warn}
export NO_COLOR=1 # plain log files

log "temp dir $T ($FSTYPE)"
"$BIN" cloud --allow-local-peers --data-dir "$CLOUD_DATA" --listen 127.0.0.1:0 </dev/null >/dev/null 2>"$LOGS/cloud.log" &
CLOUD_PID=$!
ADDR=""
for ((i = 0; i < 300; i++)); do
    ADDR=$(sed -n 's/.*listening on https:\/\/\([^ ]*\).*/\1/p' "$LOGS/cloud.log" | head -n1)
    [[ -n "$ADDR" ]] && break
    kill -0 "$CLOUD_PID" 2>/dev/null || die "the cloud exited"
    sleep 0.1
done
[[ -n "$ADDR" ]] || die "the cloud did not print its address within 30 s"
log "cloud at https://$ADDR"

echo "$PASSWORD" | "$BIN" user add bench --password-stdin --data-dir "$CLOUD_DATA" >>"$LOGS/cli.log" 2>&1 || die "user add failed"
for dev in a b c; do
    home="$T/home-$dev"
    echo "$PASSWORD" | "$BIN" login --cloud "https://$ADDR" --ca "$CLOUD_DATA/ca.pem" --user bench \
        --password-stdin --home "$home" --device-name "bench-$dev" >>"$LOGS/cli.log" 2>&1 ||
        die "login of device $dev failed"
done
if [[ $PROTECTED == 1 ]]; then
    echo "$PASSWORD" | "$BIN" login --cloud "https://$ADDR" --ca "$CLOUD_DATA/ca.pem" --user bench \
        --password-stdin --protect --passphrase-file "$PASSPHRASE_FILE" --home "$HOME_P" \
        --device-name bench-p >>"$LOGS/cli.log" 2>&1 || die "login of protected device p failed"
fi
"$BIN" folder create Bench --home "$HOME_A" >>"$LOGS/cli.log" 2>&1 || die "folder create failed"

start_agent() { # start_agent NAME HOME MOUNTPOINT [MOUNT FLAGS...]
    # --no-peers: B's first reads are fetches from the cloud, as the table says (device to
    # device transfers are scripts/bench-peers.sh's).
    "$BIN" mount "$3" --home "$2" --no-peers "${@:4}" </dev/null >/dev/null 2>"$LOGS/agent-$1.log" &
    local pid=$!
    AGENT_PIDS+=("$pid")
    MOUNTS+=("$3")
    for ((i = 0; i < 200; i++)); do
        is_mounted "$3" && return 0
        kill -0 "$pid" 2>/dev/null || die "agent $1 exited before mounting"
        sleep 0.1
    done
    die "agent $1 did not mount $3 within 20 s"
}
start_agent a "$HOME_A" "$MNT_A"
start_agent b "$HOME_B" "$MNT_B" --cache-size "$B_CACHE"

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local secs=$1 what=$2; shift 2
    local deadline=$((SECONDS + secs))
    until "$@"; do
        ((SECONDS < deadline)) || die "timed out after ${secs}s waiting for $what"
        local p
        for p in "${AGENT_PIDS[@]}"; do kill -0 "$p" 2>/dev/null || die "an agent died while waiting for $what"; done
        sleep 0.2
    done
}
wait_for 30 "folder Bench on both mounts" test -d "$MNT_A/Bench" -a -d "$MNT_B/Bench"

now_ms() { date +%s%3N; }
status_field() { json_get "$1/status.json" "$2" 2>/dev/null || true; }
# True when a status report written after $2 (ms) shows nothing left to upload.
uploaded_since() {
    local w p
    w=$(status_field "$1" .written_ms) || return 1
    p=$(status_field "$1" .pending_uploads) || return 1
    [[ -n "$w" && "$w" -gt "$2" && "$p" == 0 ]]
}

# Waits until a status report of A written from now on shows no pending uploads.
wait_a_uploaded() {
    local since deadline last
    since=$(now_ms)
    deadline=$((SECONDS + WAIT_UPLOAD_S)); last=$SECONDS
    until uploaded_since "$HOME_A" "$since"; do
        ((SECONDS < deadline)) || die "A still has $(status_field "$HOME_A" .pending_uploads) pending uploads after ${WAIT_UPLOAD_S}s"
        kill -0 "${AGENT_PIDS[0]}" 2>/dev/null || die "agent A died during upload"
        if ((SECONDS - last >= 15)); then
            log "  pending_uploads=$(status_field "$HOME_A" .pending_uploads) bytes_uploaded=$(status_field "$HOME_A" .counters.bytes_uploaded)"
            last=$SECONDS
        fi
        sleep 0.5
    done
}

# ---------------------------------------------------------------- test data
BIG=big.bin
SMALL=small
log "creating native data: ${SIZE_MIB} MiB file, $NFILES x 4 KiB files in $DIRS dirs"
head -c "$SIZE_BYTES" /dev/urandom >"$NATIVE/Bench/$BIG"
for ((d = 0; d < DIRS; d++)); do
    dir=$(printf '%s/Bench/%s/d%03d' "$NATIVE" "$SMALL" "$d")
    mkdir -p "$dir"
    head -c $((PER_DIR * 4096)) /dev/urandom | (cd "$dir" && split -b 4096 -a 3 -d - f)
done
[[ $(find "$NATIVE/Bench/$SMALL" -type f | wc -l) == "$NFILES" ]] || die "native tree is incomplete"

elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }

log "writing the data through A's mount"
t0=$(date +%s%N)
cp "$NATIVE/Bench/$BIG" "$MNT_A/Bench/$BIG"
t1=$(date +%s%N)
cp -r "$NATIVE/Bench/$SMALL" "$MNT_A/Bench/$SMALL"
t2=$(date +%s%N)
WRITE_BIG_S=$(elapsed "$t0" "$t1"); WRITE_SMALL_S=$(elapsed "$t1" "$t2")
log "wrote ${SIZE_MIB} MiB in ${WRITE_BIG_S}s, $NFILES files in ${WRITE_SMALL_S}s; waiting for A's uploads"
wait_a_uploaded
t3=$(date +%s%N)
UPLOAD_WAIT_S=$(elapsed "$t2" "$t3")
FAILED_UPLOADS=$(status_field "$HOME_A" .failed_uploads)
log "A uploaded everything ${UPLOAD_WAIT_S}s after the last close (failed_uploads=$FAILED_UPLOADS)"

b_sees_all() {
    [[ "$(stat -c %s "$MNT_B/Bench/$BIG" 2>/dev/null)" == "$SIZE_BYTES" ]] &&
        [[ "$(find "$MNT_B/Bench/$SMALL" -type f 2>/dev/null | wc -l)" == "$NFILES" ]]
}
wait_for 600 "B to see all files" b_sees_all
t4=$(date +%s%N)
SEE_WAIT_S=$(elapsed "$t3" "$t4")
log "B sees all files ${SEE_WAIT_S}s later"
B_FETCHED_BEFORE=$(status_field "$HOME_B" .counters.bytes_fetched)
[[ "$B_FETCHED_BEFORE" == 0 ]] || log "WARNING: B fetched $B_FETCHED_BEFORE bytes before any read"

# The baselines that mounted, in column order, and where: each shows the native data.
BASELINES=()
declare -A BASE_MNT
# An sshd on a loopback port for the network baselines, with keys of its own.
start_sshd() {
    local k="$T/ssh"
    mkdir -p "$k" /run/sshd
    chmod 700 "$k"
    ssh-keygen -q -t ed25519 -N '' -f "$k/host" && ssh-keygen -q -t ed25519 -N '' -f "$k/id" || return 1
    cp "$k/id.pub" "$k/authorized_keys"
    SSH_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    /usr/sbin/sshd -D -e -f /dev/null -p "$SSH_PORT" -o ListenAddress=127.0.0.1 -o HostKey="$k/host" \
        -o AuthorizedKeysFile="$k/authorized_keys" -o StrictModes=no -o UsePAM=no -o PidFile=none \
        -o PermitRootLogin=prohibit-password -o Subsystem="sftp internal-sftp" 2>>"$LOGS/sshd.log" &
    SSHD_PID=$!
    local i
    for ((i = 0; i < 50; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$SSH_PORT") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
mount_baseline() { # mount_baseline NAME DIR
    local key="$T/ssh/id" i
    case $1 in
        bindfs) bindfs "$NATIVE" "$2" ;;
        sshfs) sshfs "$(id -un)@127.0.0.1:$NATIVE" "$2" -p "$SSH_PORT" \
            -o "IdentityFile=$key,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null" ;;
        rclone)
            rclone mount ":sftp,host=127.0.0.1,port=$SSH_PORT,user=$(id -un),key_file=$key:$NATIVE" "$2" \
                --vfs-cache-mode full --cache-dir "$T/rclone-cache" --log-file "$LOGS/rclone.log" </dev/null &
            RCLONE_PID=$!
            AGENT_PIDS+=($!)
            for ((i = 0; i < 100; i++)); do is_mounted "$2" && return 0; sleep 0.1; done
            return 1 ;;
    esac
}
# rclone keeps a listing for minutes, and SFTP cannot tell it of changes; after data is
# written on the native side, SIGHUP makes it forget every listing.
RCLONE_PID=""
forget_listings() { [[ -z $RCLONE_PID ]] || kill -HUP "$RCLONE_PID" 2>/dev/null || true; }
NEED_SSHD=0
for b in "${WANT_BASE[@]}"; do [[ $b != bindfs ]] && NEED_SSHD=1; done
if [[ $NEED_SSHD == 1 ]] && ! start_sshd; then
    log "sshd did not start (see $LOGS/sshd.log); skipping the rclone and sshfs columns"
    WANT_BASE=("${WANT_BASE[@]/rclone/}"); WANT_BASE=("${WANT_BASE[@]/sshfs/}")
fi
for b in "${WANT_BASE[@]}"; do
    [[ -n $b ]] || continue
    d="$T/mnt-base-$b"
    mkdir -p "$d"
    MOUNTS+=("$d")
    if mount_baseline "$b" "$d" 2>>"$LOGS/$b.log" && [[ -d "$d/Bench" ]]; then
        BASELINES+=("$b"); BASE_MNT[$b]=$d
    else
        log "$b did not mount (see $LOGS/$b.log); skipping its column"
    fi
done
log "baselines: native$(printf ', %s' "${BASELINES[@]}")"

# ---------------------------------------------------------------- measuring
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
DROP='sync; echo 3 > /proc/sys/vm/drop_caches'
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

ROW_LIMIT=${BENCH_ROW_LIMIT:-1800}
# within_limit CMD... -> runs CMD, stopped (TERM, then KILL 10 s later) past ROW_LIMIT
# seconds; a filesystem that hangs costs one row, not the whole table.
within_limit() {
    local rc=0
    timeout --kill-after=10 "$ROW_LIMIT" "$@" || rc=$?
    ((rc == 124 || rc == 137)) && log "stopped after $ROW_LIMIT s (BENCH_ROW_LIMIT): $*"
    return "$rc"
}

median_of() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit 1; if (NR % 2) print v[(NR + 1) / 2]; else printf "%.6f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# measure ID MODE COMMAND [PREPARE] -> prints the median in seconds, or ERR
# MODE: cold (drop caches before each run) | warm (one warm-up run, caches intact)
#       | fresh (PREPARE before each run, no warm-up; e.g. a new database file for each run)
measure() {
    local id=$1 mode=$2 cmd=$3 prep=${4:-true}
    if [[ $HAVE_HYPERFINE == 1 ]]; then
        local args=(--runs "$RUNS" --export-json "$OUT/$id.json" --style none)
        case $mode in
            cold) args+=(--prepare "$DROP") ;;
            fresh) args+=(--prepare "$prep") ;;
            *) args+=(--warmup 1) ;;
        esac
        if within_limit hyperfine "${args[@]}" "$cmd" >"$LOGS/hyperfine-$id.out" 2>&1; then
            json_get "$OUT/$id.json" '.results[0].median'
        else
            log "FAILED: $id: $cmd"; tail -n 5 "$LOGS/hyperfine-$id.out" >&2
            echo ERR
        fi
    else
        local i t0 t1 times=""
        if [[ $mode == warm ]]; then within_limit bash -c "$cmd" || { log "FAILED: $id: $cmd"; echo ERR; return; }; fi
        for ((i = 0; i < RUNS; i++)); do
            if [[ $mode == cold ]]; then drop_caches; fi
            if [[ $mode == fresh ]]; then within_limit bash -c "$prep" || { log "FAILED: $id: $prep"; echo ERR; return; }; fi
            t0=$(date +%s%N)
            within_limit bash -c "$cmd" || { log "FAILED: $id: $cmd"; echo ERR; return; }
            t1=$(date +%s%N)
            times+="$(elapsed "$t0" "$t1")"$'\n'
        done
        printf '%s' "$times" | median_of
    fi
}

# once ID COMMAND -> one timed run after dropping caches (for the first, fetching read)
once() {
    local t0 t1
    [[ $CAN_DROP == 1 ]] && drop_caches
    t0=$(date +%s%N)
    if within_limit bash -c "$2" 2>>"$LOGS/first-read.err"; then
        t1=$(date +%s%N)
        elapsed "$t0" "$t1"
    else
        log "FAILED: $1: $2"
        echo ERR
    fi
}

# Rows: label | native | meshfs | the baselines' times, space-separated in BASELINES order
# ("-" for none) | aim | bytes (for MB/s, 0 if none)
ROW_LABEL=(); ROW_NAT=(); ROW_MESH=(); ROW_BASE=(); ROW_AIM=(); ROW_BYTES=()
add_row() { ROW_LABEL+=("$1"); ROW_NAT+=("$2"); ROW_MESH+=("$3"); ROW_BASE+=("$4"); ROW_AIM+=("$5"); ROW_BYTES+=("$6"); }
base_of() { # base_of ROW K -> the time of baseline K in row ROW, or -
    local vals=(${ROW_BASE[$1]})
    echo "${vals[$2]:--}"
}
# measure_baselines ID MODE TEMPLATE [PREPARE] -> the baselines' medians, space-separated
measure_baselines() {
    local out=() b d
    for b in "${BASELINES[@]}"; do
        d=$(q "${BASE_MNT[$b]}/Bench")
        out+=("$(measure "$1-$b" "$2" "${3//@/$d}" "${4//@/$d}")")
    done
    echo "${out[*]:--}"
}

q() { printf '%q' "$1"; }
MESH_AT=$MNT_B # the meshfs mount measured by bench_row: B, except for rows that write
# bench_row ID LABEL MODE AIM BYTES TEMPLATE [PREPARE]  (TEMPLATE and PREPARE use @ for the Bench directory)
bench_row() {
    local id=$1 label=$2 mode=$3 aim=$4 bytes=$5 tpl=$6 prep=${7:-true} nat mesh base d
    if [[ $mode == cold && $CAN_DROP == 0 ]]; then return; fi
    log "measuring: $label"
    d=$(q "$NATIVE/Bench"); nat=$(measure "$id-native" "$mode" "${tpl//@/$d}" "${prep//@/$d}")
    d=$(q "$MESH_AT/Bench"); mesh=$(measure "$id-meshfs" "$mode" "${tpl//@/$d}" "${prep//@/$d}")
    base=$(measure_baselines "$id" "$mode" "$tpl" "$prep")
    # A baseline that cannot run a row shows ERR there; that fails only the baseline.
    [[ "$nat $mesh" == *ERR* ]] && FAILED=1
    add_row "$label" "$nat" "$mesh" "$base" "$aim" "$bytes"
}

if ((SIZE_MIB % 1024 == 0)); then SIZE_H="$((SIZE_MIB / 1024)) GiB"; else SIZE_H="$SIZE_MIB MiB"; fi
SEQ="seq read $SIZE_H"
READ_BIG="cat @/$BIG > /dev/null"

# 1. Sequential read. The very first read on B fetches every block from the cloud.
log "measuring: $SEQ, first read on B (fetched from cloud)"
first=$(once seq-first "cat $(q "$MNT_B/Bench/$BIG") > /dev/null")
[[ $first == ERR ]] && FAILED=1
sleep 1.2 # let the next status report land
B_FETCHED_SEQ=$(status_field "$HOME_B" .counters.bytes_fetched)
B_BLOCKS_SEQ=$(status_field "$HOME_B" .counters.blocks_fetched)
add_row "$SEQ, first (fetch)" - "$first" - "" "$SIZE_BYTES"
DATA_OK=yes
cmp -s "$NATIVE/Bench/$BIG" "$MNT_B/Bench/$BIG" || { DATA_OK="NO: $BIG differs on B"; FAILED=1; }
sleep 1.2
P_OPENS0=$(status_field "$HOME_B" .counters.passthrough_opens); P_READS0=$(status_field "$HOME_B" .counters.reads_served)
bench_row seq-cold "$SEQ, cold" cold "<= 1.1x" "$SIZE_BYTES" "$READ_BIG"
bench_row seq-warm "$SEQ, warm" warm "<= 1.1x" "$SIZE_BYTES" "$READ_BIG"
sleep 1.2
P_OPENS=$(( $(status_field "$HOME_B" .counters.passthrough_opens) - P_OPENS0 ))
P_READS=$(( $(status_field "$HOME_B" .counters.reads_served) - P_READS0 ))

# 2. Small files: metadata first (no content fetched), then content.
FILES_H="$NFILES files"
bench_row find-cold "find $FILES_H, cold" cold "" 0 "find @/$SMALL > /dev/null"
bench_row find-warm "find $FILES_H, warm" warm "" 0 "find @/$SMALL > /dev/null"
bench_row ls-cold "ls -lR $FILES_H, cold" cold "" 0 "ls -lR @/$SMALL > /dev/null"
bench_row ls-warm "ls -lR $FILES_H, warm" warm "<= 1.1x" 0 "ls -lR @/$SMALL > /dev/null"
CAT_SMALL="find @/$SMALL -type f -exec cat {} + > /dev/null"
log "measuring: cat $FILES_H, first read on B (fetched from cloud)"
f0=$(status_field "$HOME_B" .counters.bytes_fetched)
first=$(once cat-first "${CAT_SMALL//@/$(q "$MNT_B/Bench")}")
[[ $first == ERR ]] && FAILED=1
sleep 1.2
B_FETCHED_SMALL=$(( $(status_field "$HOME_B" .counters.bytes_fetched) - f0 ))
add_row "cat $FILES_H, first (fetch)" - "$first" - "<= 3 s" 0
diff -rq "$NATIVE/Bench/$SMALL" "$MNT_B/Bench/$SMALL" >"$LOGS/diff-small.out" 2>&1 ||
    { DATA_OK="NO: small files differ on B (see $LOGS/diff-small.out)"; FAILED=1; }
bench_row cat-cold "cat $FILES_H, cold" cold "" 0 "$CAT_SMALL"
bench_row cat-warm "cat $FILES_H, warm" warm "<= 3x" 0 "$CAT_SMALL"

# 3. git status in a repository of GIT_NFILES small files. Both clones come from one source
#    repository outside Bench (`git clone --no-local`, so each gets a pack as from a remote):
#    one on the native disk, one written through A's mount. Measured on B, which did not
#    write it, and on A (rows marked (A)). The user's first `git status` after the clone is
#    run once on the writer (native and A), as it re-hashes racily clean entries.
GIT_H="$GIT_NFILES files"
GIT_HOME="$T/git-home"
GIT_SRC="$T/git-src"
mkdir -p "$GIT_HOME"
cat >"$GIT_HOME/.gitconfig" <<'EOF'
[user]
	name = meshfs bench
	email = bench@example.invalid
[init]
	defaultBranch = main
[safe]
	directory = *
[gc]
	auto = 0
[maintenance]
	auto = false
EOF
GIT_OPTS="-c core.fsmonitor=false -c core.untrackedCache=false"
GIT="env HOME=$(q "$GIT_HOME") GIT_CONFIG_NOSYSTEM=1 git $GIT_OPTS"
git_() { env HOME="$GIT_HOME" GIT_CONFIG_NOSYSTEM=1 git $GIT_OPTS "$@"; }
stamp() { stat -c '%s %y' "$1" 2>/dev/null; } # size and mtime

log "creating a git repository of $GIT_H in $GIT_DIRS dirs"
for ((d = 0; d < GIT_DIRS; d++)); do
    dir=$(printf '%s/src/m%03d' "$GIT_SRC" "$d")
    mkdir -p "$dir"
    # 570 random bytes = 10 base64 lines of 76 characters: one 770-byte text file
    head -c $((GIT_PER_DIR * 570)) /dev/urandom | base64 -w 76 |
        (cd "$dir" && split -l 10 -a 3 -d --additional-suffix=.txt - f)
done
echo "meshfs benchmark repository: $GIT_H" >"$GIT_SRC/README"
git_ -C "$GIT_SRC" init -q
git_ -C "$GIT_SRC" add -A
git_ -C "$GIT_SRC" commit -q -m "bench: $GIT_H"
[[ $(git_ -C "$GIT_SRC" ls-files | wc -l) == $((GIT_NFILES + 1)) ]] || die "the git source repository is incomplete"
git_ clone -q --no-local "$GIT_SRC" "$NATIVE/Bench/repo"
forget_listings
log "cloning it into A's mount"
t0=$(date +%s%N)
git_ clone -q --no-local "$GIT_SRC" "$MNT_A/Bench/repo" 2>>"$LOGS/git.err" || die "git clone into A's mount failed (see $LOGS/git.err)"
t1=$(date +%s%N)
GIT_CLONE_S=$(elapsed "$t0" "$t1")
sleep 1.1
settle() { # settle REPO -> whether the first status rewrote the index
    local before
    before=$(stamp "$1/.git/index")
    git_ -C "$1" status >/dev/null 2>>"$LOGS/git.err" || { echo ERR; return; }
    [[ "$(stamp "$1/.git/index")" == "$before" ]] && echo kept || echo rewrote
}
t0=$(date +%s%N)
GIT_SETTLE_A=$(settle "$MNT_A/Bench/repo")
t1=$(date +%s%N)
GIT_SETTLE_A_S=$(elapsed "$t0" "$t1")
GIT_SETTLE_NAT=$(settle "$NATIVE/Bench/repo")
log "cloned $GIT_H into A in ${GIT_CLONE_S}s; first status on A ${GIT_SETTLE_A_S}s ($GIT_SETTLE_A the index); waiting for A's uploads"
t1=$(date +%s%N)
wait_a_uploaded
t2=$(date +%s%N)
GIT_UPLOAD_S=$(elapsed "$t1" "$t2")
# B sees the repository: the same file names as A, and A's index (size and mtime; no content read)
list_files() { (cd "$1" && find . -type f | LC_ALL=C sort) 2>/dev/null; }
list_files "$MNT_A/Bench/repo" >"$LOGS/git-files-a.txt"
b_sees_repo() {
    [[ "$(stamp "$MNT_B/Bench/repo/.git/index")" == "$(stamp "$MNT_A/Bench/repo/.git/index")" ]] &&
        list_files "$MNT_B/Bench/repo" | cmp -s - "$LOGS/git-files-a.txt"
}
b_has_index() { [[ "$(stamp "$MNT_B/Bench/repo/.git/index")" == "$(stamp "$MNT_A/Bench/repo/.git/index")" ]]; }
wait_for 600 "B to see A's git index" b_has_index
t3=$(date +%s%N)
GIT_SEE_S=$(elapsed "$t2" "$t3")
GIT_TREES=same
deadline=$((SECONDS + 60))
until b_sees_repo; do
    if ((SECONDS >= deadline)); then
        list_files "$MNT_B/Bench/repo" >"$LOGS/git-files-b.txt"
        GIT_TREES="NO, 60s after A's uploads: only on B: $(comm -13 "$LOGS/git-files-a.txt" "$LOGS/git-files-b.txt" | head -n 5 | tr '\n' ' ')only on A: $(comm -23 "$LOGS/git-files-a.txt" "$LOGS/git-files-b.txt" | head -n 5 | tr '\n' ' ')"
        log "WARNING: B's repository differs from A's: $GIT_TREES"
        FAILED=1
        break
    fi
    sleep 0.5
done
log "A uploaded the repository in ${GIT_UPLOAD_S}s; B saw A's index ${GIT_SEE_S}s later (same files: $GIT_TREES)"

counter() { status_field "$1" ".counters.$2"; }
sleep 1.2
G_B_FETCH0=$(counter "$HOME_B" bytes_fetched); G_B_UP0=$(counter "$HOME_B" bytes_uploaded)
G_A_UP0=$(counter "$HOME_A" bytes_uploaded)
G_B_INDEX0=$(stamp "$MNT_B/Bench/repo/.git/index")
log "measuring: git status $GIT_H, first on B"
first=$(once git-first "$GIT -C $(q "$MNT_B/Bench/repo") status > /dev/null")
[[ $first == ERR ]] && FAILED=1
sleep 1.2
G_B_FETCH_FIRST=$(( $(counter "$HOME_B" bytes_fetched) - G_B_FETCH0 ))
G_B_INDEX_FIRST=$([[ "$(stamp "$MNT_B/Bench/repo/.git/index")" == "$G_B_INDEX0" ]] && echo kept || echo rewrote)
add_row "git status $GIT_H, first (B)" - "$first" - "" 0

git_status_rows() { # git_status_rows MODE
    local mode=$1 label="git status $GIT_H, $1" tpl="$GIT -C @/repo status > /dev/null" nat a b base d
    if [[ $mode == cold && $CAN_DROP == 0 ]]; then return; fi
    log "measuring: $label"
    d=$(q "$NATIVE/Bench"); nat=$(measure "git-$mode-native" "$mode" "${tpl//@/$d}")
    d=$(q "$MNT_B/Bench"); b=$(measure "git-$mode-meshfs" "$mode" "${tpl//@/$d}")
    d=$(q "$MNT_A/Bench"); a=$(measure "git-$mode-meshfs-a" "$mode" "${tpl//@/$d}")
    base=$(measure_baselines "git-$mode" "$mode" "$tpl" true)
    [[ "$nat $a $b" == *ERR* ]] && FAILED=1
    add_row "$label" "$nat" "$b" "$base" "" 0
    add_row "$label (A)" "$nat" "$a" - "" 0
}
G_B_INDEX1=$(stamp "$MNT_B/Bench/repo/.git/index"); G_A_INDEX1=$(stamp "$MNT_A/Bench/repo/.git/index")
git_status_rows cold
git_status_rows warm
sleep 1.2
G_B_FETCH=$(( $(counter "$HOME_B" bytes_fetched) - G_B_FETCH0 ))
G_B_UP=$(( $(counter "$HOME_B" bytes_uploaded) - G_B_UP0 ))
G_A_UP=$(( $(counter "$HOME_A" bytes_uploaded) - G_A_UP0 ))
G_B_INDEX_ROWS=$([[ "$(stamp "$MNT_B/Bench/repo/.git/index")" == "$G_B_INDEX1" ]] && echo kept || echo rewrote)
G_A_INDEX_ROWS=$([[ "$(stamp "$MNT_A/Bench/repo/.git/index")" == "$G_A_INDEX1" ]] && echo kept || echo rewrote)
git_clean() { # git_clean REPO -> yes, or what status printed
    local out
    if out=$(git_ -C "$1" status --porcelain 2>&1); then
        [[ -z "$out" ]] && echo yes || echo "NO: $(printf '%s' "$out" | head -n 3 | tr '\n' ' ')"
    else
        echo "ERR: $(printf '%s' "$out" | head -n 3 | tr '\n' ' ')"
    fi
}
GIT_CLEAN="native $(git_clean "$NATIVE/Bench/repo"), A $(git_clean "$MNT_A/Bench/repo"), B $(git_clean "$MNT_B/Bench/repo")"
[[ "$GIT_CLEAN" == "native yes, A yes, B yes" ]] || FAILED=1

# 4. SQLite inserts with the sqlite3 CLI, on A's mount (writes happen on the writing device)
#    and on the native disk; each run starts from a fresh database file (schema only).
SQL_DIR="$T/sql"
mkdir -p "$SQL_DIR" "$NATIVE/Bench/sqlite" "$MNT_A/Bench/sqlite"
forget_listings
SCHEMA='CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL);'
sql_inserts() { # sql_inserts N ONE_TXN(0|1): PRAGMAs, then N single-row INSERTs
    awk -v n="$1" -v one="$2" 'BEGIN {
        print "PRAGMA journal_mode=DELETE;"; print "PRAGMA synchronous=FULL;"
        if (one) print "BEGIN;"
        for (i = 1; i <= n; i++)
            printf "INSERT INTO t(v) VALUES (%cmeshfs bench row %08d abcdefghijklmnopqrstuvwxyz 0123456789 ABCDEFGHIJKLMNOPQRSTUVWXYZ%c);\n", 39, i, 39
        if (one) print "COMMIT;"
    }'
}
sql_inserts "$SQL_TXNS" 0 >"$SQL_DIR/txns.sql"
sql_inserts "$SQL_BATCH" 1 >"$SQL_DIR/batch.sql"
sql_run() { echo "sqlite3 -bail @/sqlite/$1.db < $(q "$SQL_DIR/$1.sql") > /dev/null"; }
sql_fresh() { echo "rm -f @/sqlite/$1.db @/sqlite/$1.db-journal && sqlite3 -bail @/sqlite/$1.db $(q "$SCHEMA")"; }
if ((SQL_BATCH % 1000 == 0)); then SQL_BATCH_H="$((SQL_BATCH / 1000))k"; else SQL_BATCH_H=$SQL_BATCH; fi
sleep 1.2
S_A_UP0=$(counter "$HOME_A" bytes_uploaded); S_A_COMMITS0=$(counter "$HOME_A" commits)
S_A_CHANGES0=$(counter "$HOME_A" changes_sent)
MESH_AT=$MNT_A
bench_row sqlite-txns "sqlite $SQL_TXNS txns" fresh "" 0 "$(sql_run txns)" "$(sql_fresh txns)"
# What the transactions alone cost in uploads: every run's database, settled and sent.
wait_a_uploaded
sleep 1.2
T_CHANGES=$(( $(counter "$HOME_A" changes_sent) - S_A_CHANGES0 ))
T_BYTES=$(( $(counter "$HOME_A" bytes_uploaded) - S_A_UP0 ))
T_TXNS=$((RUNS * SQL_TXNS))
T_PER_TXN=$(awk -v c="$T_CHANGES" -v t="$T_TXNS" 'BEGIN { printf "%.4f", c / t }')
T_BYTES_PER_TXN=$(awk -v b="$T_BYTES" -v t="$T_TXNS" 'BEGIN { printf "%.0f", b / t }')
bench_row sqlite-batch "sqlite $SQL_BATCH_H inserts, 1 txn" fresh "" 0 "$(sql_run batch)" "$(sql_fresh batch)"
MESH_AT=$MNT_B
sql_check() { # sql_check DB N -> ok, or what went wrong
    local out
    out=$(sqlite3 -readonly "$1" 'PRAGMA integrity_check; SELECT count(*) FROM t;' 2>&1 | tr '\n' ' ')
    [[ "$out" == "ok $2 " ]] && echo ok || echo "NO ($out)"
}
SQL_OK_A="txns $(sql_check "$MNT_A/Bench/sqlite/txns.db" "$SQL_TXNS"), batch $(sql_check "$MNT_A/Bench/sqlite/batch.db" "$SQL_BATCH")"
log "sqlite databases on A: $SQL_OK_A; waiting for A's uploads"
t0=$(date +%s%N)
wait_a_uploaded
t1=$(date +%s%N)
SQL_UPLOAD_S=$(elapsed "$t0" "$t1")
S_A_UP=$(( $(counter "$HOME_A" bytes_uploaded) - S_A_UP0 )); S_A_COMMITS=$(( $(counter "$HOME_A" commits) - S_A_COMMITS0 ))
b_sees_sqlite() {
    local f
    for f in txns batch; do
        [[ "$(stamp "$MNT_B/Bench/sqlite/$f.db")" == "$(stamp "$MNT_A/Bench/sqlite/$f.db")" ]] || return 1
        [[ ! -e "$MNT_B/Bench/sqlite/$f.db-journal" ]] || return 1
    done
}
wait_for 600 "B to see the sqlite databases" b_sees_sqlite
SQL_OK_B="txns $(sql_check "$MNT_B/Bench/sqlite/txns.db" "$SQL_TXNS"), batch $(sql_check "$MNT_B/Bench/sqlite/batch.db" "$SQL_BATCH")"
[[ "$SQL_OK_A $SQL_OK_B" == "txns ok, batch ok txns ok, batch ok" ]] || FAILED=1

# 5. A first read of the big file on a third device whose cache is a quarter of it (or less):
#    eviction keeps C's store within its limit while the read goes on.
log "mounting C with --cache-size $C_CACHE"
start_agent c "$HOME_C" "$MNT_C" --cache-size "$C_CACHE"
c_sees_big() { [[ "$(stat -c %s "$MNT_C/Bench/$BIG" 2>/dev/null)" == "$SIZE_BYTES" ]]; }
wait_for 600 "C to see $BIG" c_sees_big
log "measuring: $SEQ, first read on C ($C_CACHE cache)"
first=$(once seq-first-c "cat $(q "$MNT_C/Bench/$BIG") > /dev/null")
[[ $first == ERR ]] && FAILED=1
add_row "$SEQ, first, $C_CACHE cache (C)" - "$first" - "" "$SIZE_BYTES"
sleep 1.2
C_USED=$(status_field "$HOME_C" .cache.used); C_LIMIT=$(status_field "$HOME_C" .cache.limit)
C_EVICTED=$(status_field "$HOME_C" .counters.bytes_evicted)
C_OK=yes
cmp -s "$NATIVE/Bench/$BIG" "$MNT_C/Bench/$BIG" || { C_OK="NO: $BIG differs on C"; FAILED=1; }

# 6. Heightened security: P, a protected device, repeats B's read rows on its own mount.
P_OK=skipped
if [[ $PROTECTED == 1 ]]; then
    log "mounting P (protected) with --cache-size $B_CACHE"
    MESHFS_PASSPHRASE_FILE="$PASSPHRASE_FILE" start_agent p "$HOME_P" "$MNT_P" --cache-size "$B_CACHE"
    p_sees_all() { [[ "$(stat -c %s "$MNT_P/Bench/$BIG" 2>/dev/null)" == "$SIZE_BYTES" ]] &&
        [[ "$(find "$MNT_P/Bench/$SMALL" -type f | wc -l)" == "$NFILES" ]]; }
    wait_for 600 "P to see the test data" p_sees_all
    MESH_AT=$MNT_P
    log "measuring: $SEQ, first read on P (fetched from cloud)"
    first=$(once seq-first-p "cat $(q "$MNT_P/Bench/$BIG") > /dev/null")
    [[ $first == ERR ]] && FAILED=1
    add_row "$SEQ, first (fetch) (P)" - "$first" - "" "$SIZE_BYTES"
    bench_row seq-cold-p "$SEQ, cold (P)" cold "<= 1.3x B" "$SIZE_BYTES" "$READ_BIG"
    bench_row seq-warm-p "$SEQ, warm (P)" warm "<= 1.3x B" "$SIZE_BYTES" "$READ_BIG"
    log "measuring: cat $FILES_H, first read on P (fetched from cloud)"
    first=$(once cat-first-p "${CAT_SMALL//@/$(q "$MNT_P/Bench")}")
    [[ $first == ERR ]] && FAILED=1
    add_row "cat $FILES_H, first (fetch) (P)" - "$first" - "<= 1.3x B" 0
    bench_row cat-cold-p "cat $FILES_H, cold (P)" cold "<= 1.3x B" 0 "$CAT_SMALL"
    bench_row cat-warm-p "cat $FILES_H, warm (P)" warm "<= 1.3x B" 0 "$CAT_SMALL"
    MESH_AT=$MNT_B
    P_OK=yes
    cmp -s "$NATIVE/Bench/$BIG" "$MNT_P/Bench/$BIG" || { P_OK="NO: $BIG differs on P"; FAILED=1; }
    diff -rq "$NATIVE/Bench/$SMALL" "$MNT_P/Bench/$SMALL" >"$LOGS/diff-small-p.out" 2>&1 ||
        { P_OK="NO: small files differ on P (see $LOGS/diff-small-p.out)"; FAILED=1; }
fi

for b in "${BASELINES[@]}"; do fusermount3 -u "${BASE_MNT[$b]}" 2>>"$LOGS/$b.log" || true; done
sleep 1.2
B_FETCHED_END=$(status_field "$HOME_B" .counters.bytes_fetched)
B_BLOCKS_END=$(status_field "$HOME_B" .counters.blocks_fetched)
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- report
ratio() { # ratio NUM DEN
    if [[ "$1" =~ ^[0-9.]+$ && "$2" =~ ^[0-9.]+$ ]]; then
        awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'
    else echo -; fi
}
fmt() { [[ "$1" =~ ^[0-9.]+$ ]] && printf '%.3f' "$1" || printf '%s' "$1"; }
mesh_of() { # mesh_of LABEL -> the meshfs time of the row so labelled
    local i
    for i in "${!ROW_LABEL[@]}"; do
        [[ "${ROW_LABEL[$i]}" == "$1" ]] && { echo "${ROW_MESH[$i]}"; return; }
    done
    echo -
}
protected_ratios() { # P's read rows over B's
    local row out=""
    for row in "$SEQ, first (fetch)" "$SEQ, cold" "$SEQ, warm" "cat $FILES_H, first (fetch)" "cat $FILES_H, cold" "cat $FILES_H, warm"; do
        out+="${row#"$SEQ, "}: $(ratio "$(mesh_of "$row (P)")" "$(mesh_of "$row")"); "
    done
    printf '%s' "${out%; }"
}
mbps() { [[ "$1" =~ ^[0-9.]+$ && "$2" -gt 0 ]] && awk -v s="$1" -v b="$2" 'BEGIN { printf "%.0f", b / 1e6 / s }' || printf -- -; }

report() {
    echo "meshfs benchmark  $(date -u +'%Y-%m-%d %H:%M UTC')"
    echo "machine: $(nproc) cores, kernel $(uname -r), $(awk '/MemTotal/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo), temp fs $FSTYPE"
    echo "meshfs:  tree at commit $COMMIT"
    echo "         binary $BIN"
    echo "load:    $LOAD_START before measuring, $LOAD_END after (other work on the machine skews the numbers)"
    echo "method:  medians of $RUNS runs ($([[ $HAVE_HYPERFINE == 1 ]] && echo hyperfine || echo date)); cold = sync + drop_caches before each run;"
    echo "         warm = 1 warm-up run; meshfs measured on device B (data written on A); first = B's first read, fetched from the cloud;"
    echo "         git: \`git status\` in a clone written through A (GIT_CONFIG_NOSYSTEM=1, $GIT_OPTS), (A) = on A;"
    echo "         sqlite: sqlite3 CLI on A's mount (the writer), fresh database each run, journal_mode=DELETE, synchronous=FULL"
    echo "baselines: the same data on the native disk through bindfs (passthrough FUSE), rclone mount (SFTP to a"
    echo "         loopback sshd, --vfs-cache-mode full) and sshfs (the same sshd); a baseline that did not mount has no column,"
    echo "         ERR: it could not run the row (its command failed; see logs/hyperfine-ID-NAME.out)"
    echo
    local i k line
    echo "times in seconds; each ratio is the column's time over native's"
    line=$(printf '%-34s %9s %9s %7s' benchmark native meshfs ratio)
    for k in "${!BASELINES[@]}"; do line+=$(printf ' %9s %7s' "${BASELINES[$k]}" ratio); done
    echo "$line   aim"
    for i in "${!ROW_LABEL[@]}"; do
        line=$(printf '%-34s %9s %9s %7s' "${ROW_LABEL[$i]}" "$(fmt "${ROW_NAT[$i]}")" \
            "$(fmt "${ROW_MESH[$i]}")" "$(ratio "${ROW_MESH[$i]}" "${ROW_NAT[$i]}")")
        for k in "${!BASELINES[@]}"; do
            line+=$(printf ' %9s %7s' "$(fmt "$(base_of "$i" "$k")")" "$(ratio "$(base_of "$i" "$k")" "${ROW_NAT[$i]}")")
        done
        echo "$line   ${ROW_AIM[$i]}"
    done
    echo
    line=$(printf '%-34s %9s %9s' "throughput (MB/s)" native meshfs)
    for k in "${!BASELINES[@]}"; do line+=$(printf ' %9s' "${BASELINES[$k]}"); done
    echo "$line"
    for i in "${!ROW_LABEL[@]}"; do
        [[ "${ROW_BYTES[$i]}" -gt 0 ]] || continue
        line=$(printf '%-34s %9s %9s' "${ROW_LABEL[$i]}" "$(mbps "${ROW_NAT[$i]}" "${ROW_BYTES[$i]}")" \
            "$(mbps "${ROW_MESH[$i]}" "${ROW_BYTES[$i]}")")
        for k in "${!BASELINES[@]}"; do line+=$(printf ' %9s' "$(mbps "$(base_of "$i" "$k")" "${ROW_BYTES[$i]}")"); done
        echo "$line"
    done
    echo
    echo "setup:   write through A: $SIZE_H in ${WRITE_BIG_S}s ($(mbps "$WRITE_BIG_S" "$SIZE_BYTES") MB/s), $FILES_H in ${WRITE_SMALL_S}s;"
    echo "         A's uploads done ${UPLOAD_WAIT_S}s after the last close (failed_uploads=$FAILED_UPLOADS); B saw everything ${SEE_WAIT_S}s later"
    echo "fetched: B bytes_fetched $B_FETCHED_BEFORE before reading, $B_FETCHED_SEQ ($B_BLOCKS_SEQ blocks) after the first $SEQ, +$B_FETCHED_SMALL for the first cat of $FILES_H, $B_FETCHED_END ($B_BLOCKS_END blocks) at the end"
    echo "git:     clone of $GIT_H into A ${GIT_CLONE_S}s, first status on A ${GIT_SETTLE_A_S}s ($GIT_SETTLE_A the index; native: $GIT_SETTLE_NAT);"
    echo "         A's uploads done ${GIT_UPLOAD_S}s later, B saw A's index ${GIT_SEE_S}s after that;"
    echo "         B's first status fetched $G_B_FETCH_FIRST bytes and $G_B_INDEX_FIRST the index; in all git rows B fetched $G_B_FETCH bytes,"
    echo "         B uploaded $G_B_UP bytes, A uploaded $G_A_UP bytes; the timed rows $G_B_INDEX_ROWS B's index and $G_A_INDEX_ROWS A's index"
    echo "sqlite:  A uploaded $S_A_UP bytes in $S_A_COMMITS commits during the sqlite rows; its uploads were done ${SQL_UPLOAD_S}s after the last run;"
    echo "         the $T_TXNS one-insert transactions ($RUNS runs of $SQL_TXNS) reached the cloud as $T_CHANGES changes ($T_PER_TXN per transaction)"
    echo "         and $T_BYTES bytes sent ($T_BYTES_PER_TXN per transaction)"
    echo "passthrough: B's $SEQ rows: $P_OPENS passthrough opens, $P_READS reads served by the agent (B's cache: $B_CACHE)"
    echo "C:       first read with a $C_CACHE cache: byte-identical $C_OK; C's cache ${C_USED} of ${C_LIMIT} bytes used after it, ${C_EVICTED} bytes evicted"
    if [[ $PROTECTED == 1 ]]; then
        echo "P:       protected (sealed cache, no passthrough), byte-identical $P_OK; P / B (plain, passthrough on):"
        echo "         $(protected_ratios)"
    fi
    echo "data:    B's copy equals native: $DATA_OK; git status clean: $GIT_CLEAN;"
    echo "         B's repository has A's files: $GIT_TREES"
    echo "         sqlite integrity_check and row count on A: $SQL_OK_A; on B: $SQL_OK_B"
    local n
    n=$(grep -cE "$LOGLEVEL_RE" "$LOGS"/agent-*.log "$LOGS"/cloud.log 2>/dev/null | awk -F: '{ s += $NF } END { print s + 0 }')
    echo "logs:    $n WARN/ERROR lines in agent and cloud logs ($LOGS)"
}

REPORT=$(report)
echo
echo "$REPORT"
{
    echo "# meshfs benchmark"
    echo
    echo '```'
    echo "$REPORT"
    echo '```'
    echo
    echo "Command: \`$( [[ $QUICK == 1 ]] && echo 'BENCH_QUICK=1 ')$( [[ -n "${MESHFS_BIN:-}" ]] && echo "MESHFS_BIN=$MESHFS_BIN ")scripts/bench.sh\`"
} >"$OUT/results.md"
log "table written to $OUT/results.md"
if grep -qE "$LOGLEVEL_RE" "$LOGS"/agent-*.log "$LOGS"/cloud.log 2>/dev/null; then
    log "first WARN/ERROR lines from the logs:"
    grep -hE "$LOGLEVEL_RE" "$LOGS"/agent-*.log "$LOGS"/cloud.log | head -n 10 >&2
fi
exit "$FAILED"
