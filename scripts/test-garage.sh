#!/usr/bin/env bash
# The scale-out tests against Garage, the distributed S3 store, instead of moto's server:
# tests/scale.rs (several cloud processes on one PostgreSQL database and one bucket), or
# whatever integration tests are named. Not in scripts/test.sh: Garage builds from source
# (`cargo install`), which alone would take much of CI's time.
#
# Installs Garage into cargo's bin directory, and postgresql-15, when absent (root).
# Usage: scripts/test-garage.sh                 (tests/scale.rs)
#        scripts/test-garage.sh --test crash    (any `cargo test` selection)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

GARAGE_VERSION=2.5.0
if ! command -v garage >/dev/null; then
    printf '==> building Garage %s (cargo install)\n' "$GARAGE_VERSION" >&2
    cargo install --locked garage --version "$GARAGE_VERSION" \
        --no-default-features --features bundled-libs,sqlite
fi

# The tests' temporary directories and mount points, and the servers' files, in a directory
# of this run's own (left behind for a look at the logs).
RUN_TMP=$(realpath "$(mktemp -d "${TMPDIR:-/tmp}/meshfs-garage.XXXXXX")")
chmod 0711 "$RUN_TMP"
export TMPDIR=$RUN_TMP
source scripts/lib/engines.sh
trap stop_engines EXIT
install_engines
start_postgres "$RUN_TMP"
start_garage "$RUN_TMP"
export MESHFS_TEST_POSTGRES=$PG_URL MESHFS_TEST_S3=$S3_URL
printf '==> on PostgreSQL 15 and Garage %s; files in %s\n' "$GARAGE_VERSION" "$RUN_TMP" >&2
if (($#)); then
    cargo test --locked "$@"
else
    cargo test --locked --test scale
fi
