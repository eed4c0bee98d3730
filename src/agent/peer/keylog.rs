//! A key log file: every peer session's secrets, one per line, appended to a file the user
//! named with `MESHFS_PEER_KEYLOG` (TLS's `SSLKEYLOGFILE` habit). It exists so that a test
//! (or someone debugging a capture) can see inside a channel: the relay test uses it to show
//! that no session key crosses the relay. Anyone who can read the file can decrypt the
//! recorded traffic of those sessions, so the agent warns when it is on.
//!
//! ```text
//! LABEL <session: initiator's Hello nonce, hex> <secret, hex>
//! ```

use crate::crypto::channel::KeyLog;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use zeroize::Zeroizing;

/// Appends secrets to a file (mode 0600 when it makes it).
pub struct KeyLogFile {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl KeyLogFile {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(Self {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl KeyLog for KeyLogFile {
    fn log(&self, label: &'static str, session: &[u8; 32], secret: &[u8]) {
        let line = Zeroizing::new(format!(
            "{label} {} {}\n",
            hex::encode(session),
            Zeroizing::new(hex::encode(secret)).as_str()
        ));
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file.write_all(line.as_bytes()) {
            tracing::warn!(path = %self.path.display(), error = %e, "writing the peer key log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_the_label_the_session_and_the_secret_and_the_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let log = KeyLogFile::open(&path).unwrap();
        log.log("I2R_KEY", &[1; 32], &[0xab; 16]);
        log.log("R2I_KEY", &[1; 32], &[0xcd; 16]);
        let text = std::fs::read_to_string(&path).unwrap();
        let session = "01".repeat(32);
        assert_eq!(
            text,
            format!(
                "I2R_KEY {session} {}\nR2I_KEY {session} {}\n",
                "ab".repeat(16),
                "cd".repeat(16)
            )
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
