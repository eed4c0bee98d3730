//! One error type for filesystem operations, and its one mapping to an errno.

use crate::agent::cache::CacheError;
use crate::agent::fetch::FetchError;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("invalid argument")]
    Invalid,
    #[error("name too long")]
    NameTooLong,
    #[error("file too large")]
    TooBig,
    #[error("operation not supported")]
    Unsupported,
    #[error("no such extended attribute")]
    NoXattr,
    #[error("not permitted: {0}")]
    NotPermitted(&'static str),
    #[error("moving between Mesh Folders is a copy")]
    CrossFolder,
    #[error("this folder is shared with you read-only; ask its owner to make you a writer")]
    ReadOnly,
    #[error(
        "the file changed elsewhere while readers still read its old content; open it again once they close"
    )]
    Busy,
    #[error("bad file handle")]
    BadHandle,
    #[error("the content is not on this device and no source is reachable")]
    Offline,
    #[error(transparent)]
    Fetch(FetchError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("local I/O")]
    Io(#[from] std::io::Error),
}

impl From<FetchError> for FsError {
    fn from(e: FetchError) -> Self {
        match e {
            FetchError::Unreachable(_) => FsError::Offline,
            other => FsError::Fetch(other),
        }
    }
}

impl FsError {
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::Invalid => libc::EINVAL,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::TooBig => libc::EFBIG,
            FsError::Unsupported => libc::EOPNOTSUPP,
            FsError::NoXattr => libc::ENODATA,
            FsError::NotPermitted(_) => libc::EPERM,
            FsError::CrossFolder => libc::EXDEV,
            FsError::ReadOnly => libc::EACCES,
            FsError::BadHandle => libc::EBADF,
            FsError::Busy => libc::EBUSY,
            FsError::Offline => libc::ENOTCONN,
            FsError::Fetch(_) | FsError::Cache(_) | FsError::Io(_) => libc::EIO,
        }
    }
}
