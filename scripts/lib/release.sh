# The meshfs binary the benchmarks run, sourced by scripts/bench*.sh (which define log and
# die): MESHFS_BIN if set, else a release build of this tree. Sets BIN.
release_binary() {
    if [[ -n "${MESHFS_BIN:-}" ]]; then
        BIN=$MESHFS_BIN
    else
        log "building release (cargo build --release --locked)"
        (cd "$ROOT" && cargo build --release --locked --quiet)
        BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/meshfs"
    fi
    [[ -x "$BIN" ]] || die "no meshfs binary at $BIN"
}
