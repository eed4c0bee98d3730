//! The one error type of the cloud's HTTP handlers and its one mapping onto a response:
//! a status code and an `ApiError` JSON body that says what went wrong and what to do next.
//! Internal faults are logged here and reach the client only as `internal`.

use crate::crypto::ticket::TicketError;
use crate::proto::{ApiError, ErrorCode};
use axum::Json;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Why a request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("no ticket")]
    NoTicket,
    #[error("ticket refused: {0}")]
    Ticket(TicketError),
    #[error("the ticket's device is unknown or belongs to another user")]
    UnknownDevice,
    #[error("device revoked")]
    DeviceRevoked,
    #[error("bad credentials")]
    BadCredentials,
    #[error("too many logins; retry after {retry_after} s")]
    TooManyLogins { retry_after: u64 },
    #[error("bad renewal assertion")]
    BadAssertion,
    #[error("the claim's proof of the device key is missing, stale or wrong")]
    BadProof,
    #[error("forbidden")]
    Forbidden,
    #[error("not a member of the folder")]
    NotAMember,
    #[error("the folder's membership changed since the ticket was issued")]
    MembershipChanged,
    #[error("device-only folder")]
    DeviceOnly,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("invalid request ({code}): {message}")]
    Invalid { code: ErrorCode, message: String },
    #[error("conflict ({code}): {message}")]
    Conflict { code: ErrorCode, message: String },
    #[error("precondition failed")]
    PreconditionFailed,
    #[error("precondition required")]
    PreconditionRequired,
    #[error("body too large")]
    TooLarge,
    #[error("quota exceeded")]
    QuotaExceeded,
    #[error("member's share of the owner's quota exceeded")]
    ShareExceeded { max: u64 },
    /// A fault of the cloud itself; the text is logged, never sent.
    #[error("internal: {0}")]
    Internal(String),
}

impl AppError {
    pub fn invalid(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Invalid {
            code,
            message: message.into(),
        }
    }

    pub fn conflict(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Conflict {
            code,
            message: message.into(),
        }
    }

    /// Wraps any internal fault (database, disk, task) with where it happened.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        Self::Internal(format!("{context}: {err}"))
    }

    /// The status and body a refusal is answered with.
    pub fn api(&self) -> (StatusCode, ApiError) {
        let (status, error, message) = self.parts();
        (status, ApiError { error, message })
    }

    fn parts(&self) -> (StatusCode, ErrorCode, String) {
        use StatusCode as S;
        match self {
            Self::NoTicket => (
                S::UNAUTHORIZED,
                ErrorCode::NoTicket,
                "send a ticket as `Authorization: Bearer <ticket>`; log in to get one".into(),
            ),
            Self::Ticket(e) => {
                let code = match e {
                    TicketError::Expired => ErrorCode::TicketExpired,
                    TicketError::NotYetValid => ErrorCode::TicketNotYetValid,
                    TicketError::BadSignature => ErrorCode::BadSignature,
                    TicketError::UnknownKid => ErrorCode::UnknownKid,
                    TicketError::WrongAudience => ErrorCode::WrongAudience,
                    TicketError::Malformed | TicketError::UnsupportedAlg => {
                        ErrorCode::MalformedTicket
                    }
                };
                (
                    S::UNAUTHORIZED,
                    code,
                    format!("{e}; renew the ticket or log in again"),
                )
            }
            Self::UnknownDevice => (
                S::UNAUTHORIZED,
                ErrorCode::UnknownDevice,
                "the ticket names a device this account does not have; log in again".into(),
            ),
            Self::DeviceRevoked => (
                S::UNAUTHORIZED,
                ErrorCode::DeviceRevoked,
                "this device was revoked; log in again to claim it anew".into(),
            ),
            Self::BadCredentials => (
                S::UNAUTHORIZED,
                ErrorCode::BadCredentials,
                "unknown user or wrong password; check both and try again".into(),
            ),
            Self::TooManyLogins { retry_after } => (
                S::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                format!(
                    "too many failed logins for this user or from this address lately; try \
                     again in {retry_after} s"
                ),
            ),
            Self::BadAssertion => (
                S::UNAUTHORIZED,
                ErrorCode::BadAssertion,
                "the renewal assertion was not signed by this device's key or is out of its \
                 time window; check the clock or log in again"
                    .into(),
            ),
            Self::BadProof => (
                S::FORBIDDEN,
                ErrorCode::BadProof,
                "the claim did not prove that the device holds its key (a fresh challenge \
                 signed with it); run `meshfs login` again"
                    .into(),
            ),
            Self::Forbidden => (
                S::FORBIDDEN,
                ErrorCode::Forbidden,
                "the ticket does not grant this operation on this resource; ask for an access \
                 ticket that covers it"
                    .into(),
            ),
            Self::NotAMember => (
                S::FORBIDDEN,
                ErrorCode::Forbidden,
                "you are not a member of this folder (never invited, or removed); ask its \
                 owner to share it with you"
                    .into(),
            ),
            Self::MembershipChanged => (
                S::UNAUTHORIZED,
                ErrorCode::TicketExpired,
                "the folder's members or roles changed since this ticket was issued; get a \
                 new access ticket"
                    .into(),
            ),
            Self::DeviceOnly => (
                S::FORBIDDEN,
                ErrorCode::DeviceOnly,
                "this folder is device-only: its content never goes to the cloud; send blocks \
                 peer to peer"
                    .into(),
            ),
            Self::NotFound(what) => (
                S::NOT_FOUND,
                ErrorCode::NotFound,
                format!("no such {what}; check the id"),
            ),
            Self::Invalid { code, message } => (S::BAD_REQUEST, *code, message.clone()),
            Self::Conflict { code, message } => (S::CONFLICT, *code, message.clone()),
            Self::PreconditionFailed => (
                S::PRECONDITION_FAILED,
                ErrorCode::PreconditionFailed,
                "the resource changed since you read it (or already exists); fetch it again \
                 and retry"
                    .into(),
            ),
            Self::PreconditionRequired => (
                S::PRECONDITION_REQUIRED,
                ErrorCode::PreconditionRequired,
                "send `If-Match: \"<version>\"` to update or `If-None-Match: *` to create".into(),
            ),
            Self::TooLarge => (
                S::PAYLOAD_TOO_LARGE,
                ErrorCode::TooLarge,
                format!(
                    "a block holds at most {} bytes; split the data",
                    crate::proto::BLOCK_SIZE
                ),
            ),
            Self::QuotaExceeded => (
                S::INSUFFICIENT_STORAGE,
                ErrorCode::QuotaExceeded,
                "the cloud storage quota is full; keep the content peer to peer or free space"
                    .into(),
            ),
            Self::ShareExceeded { max } => (
                S::INSUFFICIENT_STORAGE,
                ErrorCode::QuotaExceeded,
                format!(
                    "your share of the owner's storage for this folder ({max} bytes) is full; \
                     the content stays on your devices. Ask the owner for more \
                     (`meshfs folder share NAME --with YOU --max-bytes N`) or free space"
                ),
            ),
            Self::Internal(_) => (
                S::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "the cloud failed to handle this request; retry later".into(),
            ),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code, message) = self.parts();
        if let Self::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        } else {
            tracing::debug!(%status, %code, "request refused");
        }
        let mut res = (
            status,
            Json(ApiError {
                error: code,
                message,
            }),
        )
            .into_response();
        if let Self::TooManyLogins { retry_after } = self {
            res.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, retry_after.into());
        }
        res
    }
}

impl From<TicketError> for AppError {
    fn from(e: TicketError) -> Self {
        Self::Ticket(e)
    }
}

impl From<JsonRejection> for AppError {
    fn from(e: JsonRejection) -> Self {
        Self::invalid(
            ErrorCode::BadBody,
            format!("the JSON body is not valid: {}", e.body_text()),
        )
    }
}

impl From<QueryRejection> for AppError {
    fn from(e: QueryRejection) -> Self {
        Self::invalid(
            ErrorCode::BadQuery,
            format!("the query string is not valid: {}", e.body_text()),
        )
    }
}

impl From<BytesRejection> for AppError {
    fn from(e: BytesRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::TooLarge
        } else {
            Self::invalid(
                ErrorCode::BadBody,
                "the body could not be read; send it again",
            )
        }
    }
}

impl From<super::store::StoreError> for AppError {
    fn from(e: super::store::StoreError) -> Self {
        Self::internal("store", e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_error_does_not_leak_its_detail() {
        let (status, code, message) =
            AppError::internal("store", "disk /secret/path failed").parts();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(code, ErrorCode::Internal);
        assert!(!message.contains("secret"));
    }

    #[test]
    fn ticket_errors_map_to_401_with_precise_codes() {
        let (s, c, _) = AppError::from(TicketError::Expired).parts();
        assert_eq!((s, c), (StatusCode::UNAUTHORIZED, ErrorCode::TicketExpired));
        let (s, c, _) = AppError::from(TicketError::UnknownKid).parts();
        assert_eq!((s, c), (StatusCode::UNAUTHORIZED, ErrorCode::UnknownKid));
    }
}
