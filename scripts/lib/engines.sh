# Throwaway servers for the cloud's scale-out engines, sourced by scripts/test.sh: a
# PostgreSQL 15 cluster and an S3 server (moto's, or Garage), each on a loopback port, with their
# files under a directory of the caller's, stopped by stop_engines. Installs Debian's postgresql-15 and PyPI's moto[server] when absent (root).

ENGINE_PIDS=()
PG_BIN=/usr/lib/postgresql/15/bin

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

install_engines() {
    if [[ ! -x $PG_BIN/initdb ]]; then
        [[ $(id -u) -eq 0 ]] || { echo "install Debian's postgresql-15 (as root)" >&2; return 1; }
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15
    fi
    if ! command -v moto_server >/dev/null; then
        python3 -m pip install --quiet 'moto[server]'
    fi
}

# start_postgres DIR: a cluster in DIR/pg as user postgres, trusting loopback connections,
# with C collation (byte order, as SQLite sorts). Sets PG_URL to its database "meshfs".
start_postgres() {
    local dir=$1/pg port
    port=$(free_port)
    mkdir -p "$dir"
    chown postgres: "$dir"
    runuser -u postgres -- "$PG_BIN/initdb" -D "$dir/data" --auth=trust --username=postgres \
        --locale=C --encoding=UTF8 >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log" >&2; return 1; }
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
        -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c max_connections=400 -c fsync=on" \
        start >/dev/null || { cat "$dir/server.log" >&2; return 1; }
    PG_DATA=$dir/data
    runuser -u postgres -- psql -q -h 127.0.0.1 -p "$port" -U postgres -c 'CREATE DATABASE meshfs' >/dev/null
    PG_URL="postgres://postgres@127.0.0.1:$port/meshfs"
}

# start_s3 DIR: moto's S3 server on a loopback port with bucket "meshfs". Sets S3_URL and
# exports the AWS_* variables the cloud reads.
start_s3() {
    local dir=$1/s3 port
    port=$(free_port)
    mkdir -p "$dir"
    moto_server -H 127.0.0.1 -p "$port" >"$dir/server.log" 2>&1 &
    ENGINE_PIDS+=($!)
    export AWS_ENDPOINT="http://127.0.0.1:$port" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1 \
        AWS_ACCESS_KEY_ID=meshfs AWS_SECRET_ACCESS_KEY=meshfs-secret
    local i
    for i in $(seq 100); do
        curl -sf -X PUT "$AWS_ENDPOINT/meshfs" >/dev/null 2>&1 && break
        sleep 0.1
    done
    curl -sf "$AWS_ENDPOINT/meshfs" >/dev/null || { cat "$dir/server.log" >&2; return 1; }
    S3_URL=s3://meshfs
}

# start_garage DIR: Garage (the distributed S3 store, `cargo install garage`) as one node on
# loopback ports, with bucket "meshfs" and a key allowed to use it. Sets S3_URL and exports
# the AWS_* variables the cloud reads. Needs `garage` on PATH (scripts/test-garage.sh).
start_garage() {
    local dir=$1/garage s3 rpc i node=
    s3=$(free_port)
    rpc=$(free_port)
    mkdir -p "$dir/meta" "$dir/data"
    cat >"$dir/garage.toml" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(python3 -c 'import secrets; print(secrets.token_hex(32))')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
EOF
    garage -c "$dir/garage.toml" server >"$dir/server.log" 2>&1 &
    ENGINE_PIDS+=($!)
    local g=(garage -c "$dir/garage.toml")
    for i in $(seq 100); do
        node=$("${g[@]}" node id -q 2>/dev/null) && break
        sleep 0.2
    done
    [[ -n $node ]] || { cat "$dir/server.log" >&2; return 1; }
    {
        "${g[@]}" layout assign -z dc1 -c 1G "${node%%@*}" &&
            "${g[@]}" layout apply --version 1 &&
            "${g[@]}" key create meshfs-tests &&
            "${g[@]}" bucket create meshfs &&
            "${g[@]}" bucket allow --read --write --owner meshfs --key meshfs-tests
    } >"$dir/setup.log" 2>&1 || { cat "$dir/setup.log" "$dir/server.log" >&2; return 1; }
    local info
    info=$("${g[@]}" key info --show-secret meshfs-tests)
    AWS_ACCESS_KEY_ID=$(awk '/Key ID:/ { print $NF }' <<<"$info")
    AWS_SECRET_ACCESS_KEY=$(awk '/Secret key:/ { print $NF }' <<<"$info")
    export AWS_ENDPOINT="http://127.0.0.1:$s3" AWS_ALLOW_HTTP=true AWS_REGION=garage \
        AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
    S3_URL=s3://meshfs
}

stop_engines() {
    local pid
    for pid in "${ENGINE_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    ENGINE_PIDS=()
    if [[ -n ${PG_DATA:-} ]]; then
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null 2>&1 || true
        PG_DATA=
    fi
}
