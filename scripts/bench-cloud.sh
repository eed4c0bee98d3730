#!/usr/bin/env bash
# Load on the cloud's REST API, measured with wrk: authorized metadata GETs
# (GET /folders/F/entries/ID with an access ticket) and block GETs (GET /folders/F/blocks/H,
# 1 MiB each), against
#   1. one `meshfs cloud` process on the embedded engines (SQLite, a block directory),
#   2. one process on PostgreSQL 15 and an S3 server (moto's, on loopback),
#   3. two processes on that same database and bucket, the load split between them.
# For each: requests per second, p50 and p99 latency, and CPU per request of the cloud
# processes and of all the servers together (cloud, PostgreSQL, S3), from /proc.
#
# Setup: a device logs in, creates folder Bench, mounts it and writes BENCH_FILES files of
# 1 MiB, which it uploads; then the mount stops and only wrk talks to the cloud.
#
# Usage:   sudo scripts/bench-cloud.sh     (root: it installs wrk, postgresql-15 and moto)
# Env:     MESHFS_BIN=path         use this binary instead of `cargo build --release --locked`
#          BENCH_SECONDS=N         seconds of load per row (default 20)
#          BENCH_CONNECTIONS=N     open connections in all (default 64)
#          BENCH_THREADS=N         wrk threads in all (default 2)
#          BENCH_FILES=N           files (each an entry and a block) to spread the load over (default 16)
#          BENCH_TMP=dir           parent of the temp dir (default /var/tmp)
#          BENCH_ENGINES=sqlite    only the first setup (default: all three)
# Output:  the table on stdout and in target/bench/cloud.md; logs in target/bench/cloud-logs/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT="$ROOT/target/bench"
LOGS="$OUT/cloud-logs"
SECS=${BENCH_SECONDS:-20}
CONNS=${BENCH_CONNECTIONS:-64}
THREADS=${BENCH_THREADS:-2}
FILES=${BENCH_FILES:-16}
PASSWORD="bench password $$"

log() { printf '[bench-cloud %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- cleanup (always runs)
T=""
PIDS=()
AGENT_PID=""
MNT=""
source "$ROOT/scripts/lib/engines.sh"

stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? pid
    set +e
    trap - EXIT INT TERM
    if [[ $rc -ne 0 ]]; then
        log "failed (exit $rc); log tails:"
        for f in "$LOGS"/*.log; do [[ -s $f ]] && { echo "----- $f" >&2; tail -n 20 "$f" >&2; }; done
    fi
    [[ -n $AGENT_PID ]] && stop_pid "$AGENT_PID"
    if [[ -n $MNT ]] && awk -v p="$MNT" '$2 == p { f = 1 } END { exit !f }' /proc/self/mounts; then
        fusermount3 -u -z "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null
    fi
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    stop_engines
    [[ -n $T && -d $T ]] && rm -rf --one-file-system "$T"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- tools and binary
need() { # need COMMAND DEBIAN-PACKAGE
    command -v "$1" >/dev/null && return 0
    [[ $EUID -eq 0 ]] || die "$1 is missing; install Debian's $2"
    log "installing $2"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }
}
need wrk wrk
need fusermount3 fuse3
need curl curl
[[ $EUID -eq 0 ]] || die "run as root: PostgreSQL runs as user postgres"
install_engines >/dev/null

source "$ROOT/scripts/lib/release.sh"
release_binary
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)

mkdir -p "$OUT" "$LOGS"
rm -f "$LOGS"/*
T=$(mktemp -d "${BENCH_TMP:-/var/tmp}/meshfs-bench-cloud.XXXXXX")
chmod 0711 "$T"

# ---------------------------------------------------------------- helpers
# start_cloud NAME DATA-DIR: a cloud process on a free port; sets CLOUD_PID and CLOUD_URL.
start_cloud() {
    local name=$1 data=$2 addr="" i
    "$BIN" cloud --data-dir "$data" --listen 127.0.0.1:0 --no-relay --access-ttl 7200 \
        </dev/null >/dev/null 2>"$LOGS/$name.log" &
    CLOUD_PID=$!
    PIDS+=("$CLOUD_PID")
    for ((i = 0; i < 300; i++)); do
        addr=$(sed -n 's/.*listening on https:\/\/\([0-9.:]*\).*/\1/p' "$LOGS/$name.log" | head -n 1)
        [[ -n $addr ]] && break
        kill -0 "$CLOUD_PID" 2>/dev/null || die "cloud $name exited"
        sleep 0.1
    done
    [[ -n $addr ]] || die "cloud $name did not start"
    CLOUD_URL="https://$addr"
}

# prepare DATA-DIR URL: user, device, folder Bench with $FILES files uploaded; sets TICKET,
# ENTRY_PATHS and BLOCK_PATHS (space-separated request paths).
prepare() {
    local data=$1 url=$2 home=$T/home-$RANDOM i
    echo "$PASSWORD" | "$BIN" user add bench --password-stdin --data-dir "$data" >>"$LOGS/cli.log" 2>&1
    echo "$PASSWORD" | "$BIN" login --cloud "$url" --ca "$data/ca.pem" --user bench \
        --password-stdin --home "$home" --device-name bench >>"$LOGS/cli.log" 2>&1
    "$BIN" folder create Bench --home "$home" >>"$LOGS/cli.log"
    MNT=$T/mnt-$RANDOM
    mkdir -p "$MNT"
    "$BIN" mount "$MNT" --home "$home" --no-peers </dev/null >/dev/null 2>"$LOGS/agent.log" &
    AGENT_PID=$!
    for ((i = 0; i < 200; i++)); do [[ -d $MNT/Bench ]] && break; sleep 0.1; done
    [[ -d $MNT/Bench ]] || die "the mount did not show folder Bench"
    for ((i = 0; i < FILES; i++)); do
        head -c $((1 << 20)) /dev/urandom >"$MNT/Bench/f$i.bin"
    done
    # Uploaded once a status report written after the last write shows nothing pending.
    local deadline=$((SECONDS + 300)) written t0
    t0=$(($(date +%s%N) / 1000000))
    while :; do
        written=$(python3 -c 'import json,sys; s = json.load(open(sys.argv[1]))
print(s["written_ms"] if s["pending_uploads"] == 0 else 0)' "$home/status.json" 2>/dev/null || echo 0)
        ((written > t0)) && break
        ((SECONDS < deadline)) || die "the files did not upload within 300 s"
        sleep 0.5
    done
    stop_pid "$AGENT_PID"
    AGENT_PID=""
    local folder
    folder=$("$BIN" folder list --home "$home" | awk '$2 == "Bench" { print $1 }')
    TICKET=$("$BIN" folder ticket Bench --home "$home")
    curl -sf --cacert "$data/ca.pem" -H "Authorization: Bearer $TICKET" \
        "$url/folders/$folder/entries" >"$T/entries.json"
    read -r ENTRY_PATHS BLOCK_PATHS < <(python3 - "$T/entries.json" "$folder" <<'PY'
import json, sys
listing = json.load(open(sys.argv[1]))
folder = sys.argv[2]
files = [e for e in listing["entries"] if e["kind"] == "file" and e.get("manifest")]
entries = ",".join(f"/folders/{folder}/entries/{e['id']}" for e in files)
blocks = ",".join(f"/folders/{folder}/blocks/{e['manifest'][0]['hash']}" for e in files)
print(entries, blocks)
PY
)
    [[ -n $ENTRY_PATHS && -n $BLOCK_PATHS ]] || die "no files in the cloud's listing"
}

cat >"$T/paths.lua" <<'LUA'
-- Requests the paths in BENCH_PATHS (comma-separated) in turn, with the ticket in BENCH_TICKET.
local paths = {}
for p in string.gmatch(os.getenv("BENCH_PATHS"), "[^,]+") do paths[#paths + 1] = p end
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TICKET")
local i = 0
request = function()
    i = i + 1
    return wrk.format("GET", paths[(i % #paths) + 1])
end
LUA

# CPU seconds (user + system) so far of the given pids.
cpu_of() {
    local pid total=0 t
    for pid in "$@"; do
        t=$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0)
        total=$((total + t))
    done
    python3 -c "import os; print($total / os.sysconf('SC_CLK_TCK'))"
}

# The servers' pids: PostgreSQL's (every process of user postgres) and the S3 server's.
engine_pids() {
    pgrep -u postgres || true
    local pid
    for pid in "${ENGINE_PIDS[@]}"; do echo "$pid"; done
}

# parse_wrk FILE: "REQ/S P50-MS P99-MS ERRORS" from wrk's report (errors: non-2xx answers
# and socket errors).
parse_wrk() {
    python3 - "$1" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
unit = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}
def pct(p):
    v, u = re.search(rf"^\s*{p}%\s+([0-9.]+)([a-z]+)", text, re.M).groups()
    return float(v) * unit[u]
rps = float(re.search(r"^Requests/sec:\s+([0-9.]+)", text, re.M).group(1))
errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", text))
sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
if sock:
    errors += sum(int(n) for n in sock.groups())
print(f"{rps} {pct(50):.3f} {pct(99):.3f} {errors}")
PY
}

ROWS=()
# load LABEL KIND "URL..." CLOUD-PIDS...: wrk against each URL at once (connections split
# among them), then one row of the table.
load() {
    local label=$1 kind=$2 urls=($3) cloud_pids=("${@:4}") paths n i
    [[ $kind == metadata ]] && paths=$ENTRY_PATHS || paths=$BLOCK_PATHS
    n=${#urls[@]}
    # A warm-up first, so that connection pools (and PostgreSQL's backends) are up.
    local warming=()
    for ((i = 0; i < n; i++)); do
        BENCH_PATHS=$paths BENCH_TICKET=$TICKET wrk -t 1 -c $((CONNS / n)) -d 2s -s "$T/paths.lua" \
            "${urls[$i]}" >/dev/null 2>&1 &
        warming+=($!)
    done
    for i in "${warming[@]}"; do wait "$i" || true; done
    local engines=($(engine_pids))
    local cloud0 all0 cloud1 all1
    cloud0=$(cpu_of "${cloud_pids[@]}")
    all0=$(cpu_of "${cloud_pids[@]}" "${engines[@]}")
    local wrk_pids=()
    for ((i = 0; i < n; i++)); do
        BENCH_PATHS=$paths BENCH_TICKET=$TICKET wrk -t $((THREADS / n > 0 ? THREADS / n : 1)) \
            -c $((CONNS / n)) -d "${SECS}s" --latency -s "$T/paths.lua" "${urls[$i]}" \
            >"$LOGS/wrk-$label-$kind-$i.out" 2>&1 &
        wrk_pids+=($!)
    done
    for i in "${wrk_pids[@]}"; do wait "$i" || die "wrk failed: $(cat "$LOGS"/wrk-"$label"-"$kind"-*.out)"; done
    cloud1=$(cpu_of "${cloud_pids[@]}")
    all1=$(cpu_of "${cloud_pids[@]}" "${engines[@]}")
    # Summed over the processes' loads; the percentiles are the worse of them.
    local rps=0 p50=0 p99=0 errors=0 r q50 q99 e
    for ((i = 0; i < n; i++)); do
        read -r r q50 q99 e < <(parse_wrk "$LOGS/wrk-$label-$kind-$i.out")
        rps=$(python3 -c "print($rps + $r)")
        p50=$(python3 -c "print(max($p50, $q50))")
        p99=$(python3 -c "print(max($p99, $q99))")
        errors=$((errors + e))
    done
    local total
    total=$(python3 -c "print(round($rps * $SECS))")
    ROWS+=("$(python3 - "$label" "$kind" "$rps" "$p50" "$p99" "$cloud0" "$cloud1" "$all0" "$all1" "$total" "$errors" <<'PY'
import sys
label, kind, rps, p50, p99, c0, c1, a0, a1, total, errors = sys.argv[1:]
rps, total = float(rps), max(int(total), 1)
cloud_us = (float(c1) - float(c0)) / total * 1e6
all_us = (float(a1) - float(a0)) / total * 1e6
mbs = f"{rps * 1.048576:8.0f}" if kind == "block" else "       -"
print(f"| {label:<34} | {kind:<8} | {rps:10.0f} | {mbs} | {float(p50):7.2f} | {float(p99):7.2f} | {cloud_us:9.0f} | {all_us:9.0f} | {errors:>6} |")
PY
)")
    log "${ROWS[-1]}"
}

# ---------------------------------------------------------------- 1. embedded engines
log "one cloud process on SQLite and a block directory"
start_cloud sqlite "$T/cloud-sqlite"
SQLITE_PID=$CLOUD_PID
prepare "$T/cloud-sqlite" "$CLOUD_URL"
load "1 process, SQLite + directory" metadata "$CLOUD_URL" "$SQLITE_PID"
load "1 process, SQLite + directory" block "$CLOUD_URL" "$SQLITE_PID"
stop_pid "$SQLITE_PID"

# ---------------------------------------------------------------- 2, 3. PostgreSQL and S3
if [[ ${BENCH_ENGINES:-all} != sqlite ]]; then
    log "starting PostgreSQL 15 and moto's S3 server"
    start_postgres "$T"
    start_s3 "$T"
    mkdir -p "$T/cloud-pg"
    chmod 0700 "$T/cloud-pg"
    printf 'database = "%s"\nblocks = "%s/bench"\n' "$PG_URL" "$S3_URL" >"$T/cloud-pg/cloud.toml"
    start_cloud pg-1 "$T/cloud-pg"
    PG1_PID=$CLOUD_PID PG1_URL=$CLOUD_URL
    prepare "$T/cloud-pg" "$PG1_URL"
    load "1 process, PostgreSQL + S3" metadata "$PG1_URL" "$PG1_PID"
    load "1 process, PostgreSQL + S3" block "$PG1_URL" "$PG1_PID"
    start_cloud pg-2 "$T/cloud-pg"
    PG2_PID=$CLOUD_PID PG2_URL=$CLOUD_URL
    load "2 processes, PostgreSQL + S3" metadata "$PG1_URL $PG2_URL" "$PG1_PID" "$PG2_PID"
    load "2 processes, PostgreSQL + S3" block "$PG1_URL $PG2_URL" "$PG1_PID" "$PG2_PID"
fi

# ---------------------------------------------------------------- report
{
    echo "# meshfs cloud under load ($(date -u +%F), commit $COMMIT)"
    echo
    echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo); wrk and the servers share it"
    echo "load:    wrk, $THREADS threads and $CONNS connections in all (split among the processes), ${SECS} s a row,"
    echo "         over $FILES entries (metadata) or their 1 MiB blocks (block); HTTPS, HTTP/1.1 keep-alive"
    echo "CPU:     user + system seconds from /proc per request: of the cloud processes, and of all servers"
    echo "         (cloud, PostgreSQL's backends, moto's S3 server) after a 2 s warm-up; wrk's own CPU is not counted"
    echo
    echo "| setup                              | request  |    req/s   |   MB/s   | p50 ms  | p99 ms  | cloud µs  | all µs    | errors |"
    echo "|------------------------------------|----------|------------|----------|---------|---------|-----------|-----------|--------|"
    printf '%s\n' "${ROWS[@]}"
} | tee "$OUT/cloud.md"
