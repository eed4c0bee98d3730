//! The `meshfs` binary: runs the command line and turns an error into a message and an
//! exit code.

fn main() {
    if let Err(err) = meshfs::cli::run() {
        // A closed pipe (e.g. `meshfs folder list | head`) is not a failure.
        if err.chain().any(|e| {
            e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        }) {
            std::process::exit(0);
        }
        eprintln!("meshfs: {err:#}");
        std::process::exit(1);
    }
}
