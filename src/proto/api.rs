//! REST bodies of the account and mesh services (DESIGN §3). The URL layout:
//!
//! ```text
//! POST   /login/challenge                     -> ClaimChallenge (what a new device signs)
//! POST   /login                               LoginRequest -> LoginResponse
//! POST   /tickets/identity                    RenewRequest -> TicketResponse   (device-signed assertion)
//! POST   /tickets/access                      AccessRequest -> TicketResponse  (identity ticket)
//! POST   /tickets/peer                        PeerRequest -> TicketResponse    (identity ticket)
//! POST   /tickets/relay                       TicketResponse (identity ticket; for relays only)
//! POST   /relay/standing                      StandingRequest -> Standing (a relay asks)
//! GET    /.well-known/jwks.json               Jwks
//! GET    /.well-known/meshfs                  CloudInfo (the relays devices meet at)
//! GET    /users/{user}                        UserNode
//! GET    /users/{user}/devices                [Device]
//! DELETE /users/{user}/devices/{device}       Device (revoked)
//! PUT    /users/{user}/devices/{device}/presence        Presence -> Device (the device itself)
//! PUT    /users/{user}/devices/{device}/folders/{folder} Device (map the folder on the device)
//! DELETE /users/{user}/devices/{device}/folders/{folder} Device (unmap it)
//! GET    /users/{user}/folders                [FolderGrant]
//! GET    /users/{user}/usage                  Usage
//! POST   /folders                             NewFolder -> FolderGrant
//! GET    /folders/{folder}                    Folder
//! PATCH  /folders/{folder}                    FolderPatch -> Folder (owner)
//! GET    /folders/{folder}/entries            EntryList (live entries and the feed cursor)
//! GET    /folders/{folder}/devices            [Device] (devices of any member that mapped it)
//! GET    /folders/{folder}/entries/{entry}    Entry, ETag
//! PUT    /folders/{folder}/entries/{entry}    EntryPut -> Entry  (If-Match: version | If-None-Match: *)
//! DELETE /folders/{folder}/entries/{entry}    Entry tombstone     (If-Match: version)
//! POST   /folders/{folder}/steps              Steps -> StepResults (several puts and deletes
//!                                             in order, in one transaction, to the first refusal)
//! PUT    /folders/{folder}/blocks/{hash}    bytes (hash checked)
//! GET    /folders/{folder}/blocks/{hash}    bytes
//! HEAD   /folders/{folder}/blocks/{hash}
//! GET    /folders/{folder}/changes?since=N&wait=S   ChangeBatch (long poll)
//! GET    /folders/{folder}/members          [Member] (any member)
//! PUT    /folders/{folder}/members/{user}   MemberUpdate -> Member (owner: a new role)
//! DELETE /folders/{folder}/members/{user}   (owner removes; the member leaves)
//! POST   /folders/{folder}/invitations      NewInvitation -> Invitation (owner)
//! GET    /folders/{folder}/invitations      [Invitation] (owner)
//! GET    /folders/{folder}/invitations/{user}         Invitation (owner or invitee)
//! DELETE /folders/{folder}/invitations/{user}         (owner withdraws; invitee declines)
//! POST   /folders/{folder}/invitations/{user}/accept  FolderGrant (invitee)
//! GET    /users/{user}/invitations          [Invitation] (those waiting for the user)
//! ```
//!
//! Every request but `/login`, `/tickets/identity`, `/relay/standing` and the JWKS carries
//! a ticket as `Authorization: Bearer <JWS>`. Refusals are `ApiError` bodies.

use crate::proto::{BlockHash, Right, Role};
use serde::{Deserialize, Serialize};

/// A refusal or failure, as JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiError {
    /// Machine-readable reason: what a client decides on.
    pub error: ErrorCode,
    /// What went wrong and what to do next, for a person.
    pub message: String,
}

/// Every reason the cloud gives for a refusal, spelled on the wire in snake case
/// (`ticket_expired`). The cloud answers with these and the agent decides on them; no side
/// compares the spelling itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    // Tickets and who is calling (401).
    NoTicket,
    TicketExpired,
    TicketNotYetValid,
    BadSignature,
    UnknownKid,
    WrongAudience,
    MalformedTicket,
    UnknownDevice,
    DeviceRevoked,
    BadCredentials,
    BadAssertion,
    // Too many (429).
    RateLimited,
    // What a ticket grants (403).
    Forbidden,
    BadProof,
    DeviceOnly,
    NotFound,
    // Conditions (412, 428).
    PreconditionFailed,
    PreconditionRequired,
    // Bad requests (400, 413).
    BadBody,
    BadQuery,
    BadName,
    BadId,
    BadKey,
    BadAddrs,
    BadManifest,
    BadTarget,
    BadHash,
    BadPrecondition,
    BadJournal,
    BadSeq,
    SizeMismatch,
    HashMismatch,
    TooManySteps,
    TooLarge,
    // The tree's rules (409).
    NameTaken,
    KindMismatch,
    NotEmpty,
    NoParent,
    Cycle,
    MissingBlocks,
    AlreadyMember,
    TooManyFolders,
    // Storage (507).
    QuotaExceeded,
    // A fault of the cloud itself (500).
    Internal,
    /// A reason this version does not know (from a newer cloud), or a body that was not
    /// an [`ApiError`] at all.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code as spelled on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoTicket => "no_ticket",
            Self::TicketExpired => "ticket_expired",
            Self::TicketNotYetValid => "ticket_not_yet_valid",
            Self::BadSignature => "bad_signature",
            Self::UnknownKid => "unknown_kid",
            Self::WrongAudience => "wrong_audience",
            Self::MalformedTicket => "malformed_ticket",
            Self::UnknownDevice => "unknown_device",
            Self::DeviceRevoked => "device_revoked",
            Self::BadCredentials => "bad_credentials",
            Self::BadAssertion => "bad_assertion",
            Self::Forbidden => "forbidden",
            Self::DeviceOnly => "device_only",
            Self::NotFound => "not_found",
            Self::PreconditionFailed => "precondition_failed",
            Self::PreconditionRequired => "precondition_required",
            Self::BadBody => "bad_body",
            Self::BadQuery => "bad_query",
            Self::BadName => "bad_name",
            Self::BadId => "bad_id",
            Self::BadKey => "bad_key",
            Self::RateLimited => "rate_limited",
            Self::BadProof => "bad_proof",
            Self::BadAddrs => "bad_addrs",
            Self::BadManifest => "bad_manifest",
            Self::BadTarget => "bad_target",
            Self::BadHash => "bad_hash",
            Self::BadPrecondition => "bad_precondition",
            Self::BadJournal => "bad_journal",
            Self::BadSeq => "bad_seq",
            Self::SizeMismatch => "size_mismatch",
            Self::HashMismatch => "hash_mismatch",
            Self::TooManySteps => "too_many_steps",
            Self::TooLarge => "too_large",
            Self::TooManyFolders => "too_many_folders",
            Self::NameTaken => "name_taken",
            Self::KindMismatch => "kind_mismatch",
            Self::NotEmpty => "not_empty",
            Self::NoParent => "no_parent",
            Self::Cycle => "cycle",
            Self::MissingBlocks => "missing_blocks",
            Self::AlreadyMember => "already_member",
            Self::QuotaExceeded => "quota_exceeded",
            Self::Internal => "internal",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoginRequest {
    pub user: String,
    pub password: String,
    pub device_name: String,
    /// The device's RSA public key, SPKI PEM.
    pub device_key: String,
    /// A challenge from `POST /login/challenge`, as the cloud signed it.
    pub challenge: String,
    /// A JWS over [`ClaimProof`] signed with the device's private key: the device holds it.
    pub proof: String,
}

/// A challenge for one device claim: a token signed by the cloud over
/// [`ChallengeClaims`], good until `expires_at` (seconds).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClaimChallenge {
    pub challenge: String,
    pub expires_at: i64,
}

/// The audience of a claim challenge and of the device's proof over it.
pub const AUDIENCE_CLAIM: &str = "meshfs-claim";

/// What the cloud signs in a challenge: a fresh nonce with a short life.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChallengeClaims {
    pub iss: String,
    pub aud: String,
    pub exp: i64,
    pub nonce: String,
}

/// What a device signs to claim itself: the challenge, for this user and device name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimProof {
    pub aud: String,
    pub challenge: String,
    pub user: String,
    pub device_name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoginResponse {
    pub user: String,
    pub device_id: String,
    pub identity: TicketResponse,
}

/// Renewal of an identity ticket: a JWS signed with the device's own key over
/// `DeviceAssertion`, so the password is needed only once.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RenewRequest {
    pub device_id: String,
    pub assertion: String,
}

/// The audience of a device's renewal assertion.
pub const AUDIENCE_RENEW: &str = "meshfs-renew";

/// The payload of a device-signed assertion: `iss` is the device id, `aud` is
/// [`AUDIENCE_RENEW`], and it lives at most two minutes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceAssertion {
    /// The device id.
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccessRequest {
    /// The resource prefix, e.g. `/folders/ID`.
    pub resource: String,
    /// The rights wanted; the cloud grants at most what the user holds there.
    pub rights: Vec<Right>,
}

/// A peer ticket for the caller's device and `device` (DESIGN §2). With `folder`, the pair
/// is allowed through that Mesh Folder, mapped on both devices; without it, only when one
/// user claims both devices.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerRequest {
    pub device: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<String>,
}

/// Where a device can be reached by its peers, as it reports itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    /// `ip:port` of its peer listener, at most [`MAX_ADDRS`].
    pub addrs: Vec<String>,
}

/// The most peer addresses a device may report.
pub const MAX_ADDRS: usize = 16;

/// What the cloud tells every client about itself.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CloudInfo {
    /// The relays devices may meet at, in the order to try them.
    #[serde(default)]
    pub relays: Vec<RelayInfo>,
}

/// A relay, as the cloud lists it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RelayInfo {
    /// `host:port`.
    pub addr: String,
    /// The PEM certificate of the CA its TLS certificate chains to: the relay's own, or
    /// the cloud's for the relay a cloud process runs.
    pub ca: String,
}

/// A relay's question to the cloud: may the device this relay ticket names still use
/// relays? (`POST /relay/standing`)
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StandingRequest {
    pub relay_ticket: String,
}

/// The cloud's answer to a [`StandingRequest`] whose ticket it signed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Standing {
    pub device: String,
    /// False once the device is revoked (or gone).
    pub active: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TicketResponse {
    pub ticket: String,
    /// Seconds since the epoch.
    pub expires_at: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// An RSA public key as a JWK (RFC 7517), `n` and `e` base64url without padding.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    pub kid: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub use_: String,
    pub n: String,
    pub e: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserNode {
    pub name: String,
    /// URLs of the user's devices.
    pub devices: Vec<String>,
    /// URLs of the user's folders.
    pub folders: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub id: String,
    pub user: String,
    pub name: String,
    /// SPKI PEM.
    pub public_key: String,
    pub created_ms: i64,
    pub last_seen_ms: i64,
    pub revoked: bool,
    /// Where its peer listener can be reached (see [`Presence`]).
    #[serde(default)]
    pub addrs: Vec<String>,
    /// The ids of the Mesh Folders mapped on this device.
    #[serde(default)]
    pub folders: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Folder {
    pub id: String,
    pub name: String,
    pub owner: String,
    /// Content never goes to the cloud.
    pub device_only: bool,
    pub created_ms: i64,
    /// The membership epoch: it grows whenever a member is removed, leaves or changes role,
    /// and access tickets issued before are refused (DESIGN §10).
    #[serde(default)]
    pub epoch: u64,
}

/// A folder and an access ticket for it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FolderGrant {
    pub folder: Folder,
    pub rights: Vec<Right>,
    pub ticket: TicketResponse,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewFolder {
    pub name: String,
    #[serde(default)]
    pub device_only: bool,
}

/// A change to a folder's settings; absent fields stay as they are.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FolderPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_only: Option<bool>,
}

/// Whether `name` may name an entry in a directory: 1 to 255 bytes, no `/` and no control
/// character (NUL included), and not `.` or `..`. The cloud refuses other names, and a
/// device skips any that reach it anyway, before they reach its mount.
pub fn valid_entry_name(name: &str) -> bool {
    (1..=255).contains(&name.len())
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c.is_control())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// One block of a file version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRef {
    pub hash: BlockHash,
    pub len: u32,
}

/// A file, directory or symlink in a folder. `version` is the change-feed sequence number
/// of its last change, so versions only grow and double as ETags.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    pub folder: String,
    /// `None` for a child of the folder's root.
    pub parent: Option<String>,
    pub name: String,
    pub kind: EntryKind,
    pub mode: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub version: u64,
    pub deleted: bool,
    #[serde(default)]
    pub manifest: Vec<BlockRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The device that wrote this version.
    pub author: String,
    /// Whether every block of the manifest is in cloud storage.
    #[serde(default = "yes")]
    pub in_cloud: bool,
    /// Devices that hold the content (the author, for a version whose blocks are not all in
    /// the cloud): where a reader asks first.
    #[serde(default)]
    pub holders: Vec<String>,
}

fn yes() -> bool {
    true
}

/// The body of a create or update.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntryPut {
    pub parent: Option<String>,
    pub name: String,
    pub kind: EntryKind,
    pub mode: u32,
    pub size: u64,
    pub mtime_ns: i64,
    #[serde(default)]
    pub manifest: Vec<BlockRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Replace a live entry already at (parent, name) in the same step (`rename` over a file).
    #[serde(default)]
    pub replace: bool,
    /// Blocks of the manifest that are not in the cloud stay on the author device, which
    /// serves them to its peers (a device-only folder, or past the quota).
    #[serde(default)]
    pub device_held: bool,
}

/// Entry changes of one device, applied in order in one transaction: the cloud keeps every
/// step up to the first it refuses, and reports that one as the single request would.
///
/// Steps that name their `journal` (an id the device made for its local journal) and
/// carry that journal's record numbers (`seq`, increasing) are applied once: a step whose
/// number is not above the highest the cloud applied from that journal is not applied
/// again but reported as done, with the entry as it is now. A device replaying its journal
/// after a crash cannot tell which of its last steps reached the cloud; this way an old
/// step replayed after newer ones never undoes them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Steps {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<String>,
    pub steps: Vec<Step>,
}

/// One change of a [`Steps`] batch.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Step {
    /// `PUT …/entries/{id}`; `if_match: None` is `If-None-Match: *` (a create).
    Put {
        id: String,
        if_match: Option<u64>,
        entry: EntryPut,
        /// The journal record this step plays (see [`Steps`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    /// `DELETE …/entries/{id}` with `If-Match`.
    Delete {
        id: String,
        if_match: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
}

impl Step {
    /// The entry the step changes.
    pub fn id(&self) -> &str {
        match self {
            Step::Put { id, .. } | Step::Delete { id, .. } => id,
        }
    }

    /// The journal record the step plays, if it says.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Step::Put { seq, .. } | Step::Delete { seq, .. } => *seq,
        }
    }
}

/// `GET /users/{u}/devices/{d}/journals/{j}`: how far the cloud applied a device's journal.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JournalMark {
    /// The highest record applied (0: none).
    pub applied: u64,
}

/// What became of a [`Steps`] batch: the entries as the steps left them, one per step
/// applied, and the refusal that stopped it, if one did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepResults {
    pub done: Vec<Entry>,
    pub refused: Option<StepRefusal>,
}

/// The step the cloud refused, with the status and body its single request would get.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepRefusal {
    pub index: usize,
    pub status: u16,
    pub error: ApiError,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EntryList {
    pub entries: Vec<Entry>,
    /// The feed position these entries reflect; follow the feed from here.
    pub seq: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChangeBatch {
    /// Entries changed after `since`, each in its latest state, in sequence order.
    pub changes: Vec<Entry>,
    /// The cursor to ask from next.
    pub next: u64,
    /// The folder's membership epoch when the batch was made: a change tells devices to
    /// look at the members again (peers, rights), at once.
    #[serde(default)]
    pub epoch: u64,
}

/// `POST /folders/{folder}/invitations`: the owner invites a user to the folder.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewInvitation {
    pub user: String,
    /// `reader` or `writer`.
    pub role: Role,
    /// The most bytes of new blocks the member may store in the folder, charged to the
    /// owner's quota; `None`: no limit but the owner's quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

/// An invitation waiting for its invitee: the node `/folders/{folder}/invitations/{user}`,
/// seen only by the invitee and the folder's owner.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Invitation {
    pub folder: String,
    pub folder_name: String,
    pub owner: String,
    pub user: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    pub invited_ms: i64,
}

/// One member of a folder, the owner included.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub user: String,
    pub role: Role,
    /// The member's share of the owner's quota (see [`NewInvitation::max_bytes`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Bytes of the folder's blocks this member stored, charged to the owner.
    pub stored_bytes: u64,
}

/// `PUT /folders/{folder}/members/{user}`: the owner sets a member's role and share.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberUpdate {
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

/// `meshfs status` figures the cloud reports for a user.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Usage {
    pub bytes_stored: u64,
    pub quota: u64,
}

/// `POST /folders/{folder}/blocks`: up to [`MAX_BATCH_BLOCKS`] blocks in one request, for
/// many small files read in turn. The answer ([`encode_block_batch`]) holds, for each hash
/// in order, its length as four big-endian bytes and then its bytes, or [`BATCH_MISSING`]
/// alone for a block the cloud does not have.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockBatch {
    pub hashes: Vec<BlockHash>,
}

pub const MAX_BATCH_BLOCKS: usize = 64;
pub const BATCH_MISSING: u32 = u32::MAX;

/// The answer to a [`BlockBatch`]: `None` for a block not there.
pub fn encode_block_batch(blocks: &[Option<bytes::Bytes>]) -> Vec<u8> {
    let total = blocks.iter().flatten().map(|b| b.len() + 4).sum::<usize>() + 4 * blocks.len();
    let mut out = Vec::with_capacity(total);
    for b in blocks {
        match b {
            Some(data) => {
                out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(0).to_be_bytes());
                out.extend_from_slice(data);
            }
            None => out.extend_from_slice(&BATCH_MISSING.to_be_bytes()),
        }
    }
    out
}

/// Reads the answer to a batch of `n` blocks; `None` if it is not one (cut short, or with
/// bytes left over). The blocks are slices of `body`, not copies.
pub fn decode_block_batch(body: &bytes::Bytes, n: usize) -> Option<Vec<Option<bytes::Bytes>>> {
    let mut out = Vec::with_capacity(n);
    let mut at = 0usize;
    for _ in 0..n {
        let len = u32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        if len == BATCH_MISSING {
            out.push(None);
            continue;
        }
        let end = at.checked_add(usize::try_from(len).ok()?)?;
        if end > body.len() {
            return None;
        }
        out.push(Some(body.slice(at..end)));
        at = end;
    }
    (at == body.len()).then_some(out)
}

/// An earlier content of a file that the cloud keeps (`GET .../entries/{id}/versions`),
/// or its current one (`current`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileVersion {
    pub version: u64,
    pub size: u64,
    pub mtime_ns: i64,
    /// The device that wrote it.
    pub author: String,
    /// When it stopped being current (ms since the epoch); when it was written, for the
    /// current one.
    pub saved_ms: i64,
    #[serde(default)]
    pub current: bool,
}

/// `POST .../entries/{id}/restore`: make an earlier content current again, or bring a
/// deleted entry back; under another name or directory if given.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Restore {
    /// The version to restore; the entry's own last content when absent (a deleted file).
    #[serde(default)]
    pub version: Option<u64>,
    #[serde(default)]
    pub name: Option<String>,
    /// The directory's entry id; `None` keeps it where it is.
    #[serde(default)]
    pub parent: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_batch_reads_back_and_a_damaged_one_is_refused() {
        let blocks = vec![
            Some(bytes::Bytes::from_static(b"one")),
            None,
            Some(bytes::Bytes::new()),
            Some(bytes::Bytes::from_static(b"four")),
        ];
        let body = bytes::Bytes::from(encode_block_batch(&blocks));
        assert_eq!(decode_block_batch(&body, 4), Some(blocks));
        assert_eq!(decode_block_batch(&body, 3), None, "bytes left over");
        assert_eq!(decode_block_batch(&body, 5), None, "cut short");
        assert_eq!(decode_block_batch(&body.slice(..body.len() - 1), 4), None);
        let lying = bytes::Bytes::from_static(&[0, 0, 1, 0, b'x']);
        assert_eq!(decode_block_batch(&lying, 1), None, "a length past the end");
    }

    #[test]
    fn an_entry_name_is_one_path_component_without_control_characters() {
        for good in ["a", "notes.txt", ".hidden", "...", "é", &"x".repeat(255)] {
            assert!(valid_entry_name(good), "{good:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "/",
            "a\0b",
            "line\nbreak",
            "\u{7f}",
            &"x".repeat(256),
        ] {
            assert!(!valid_entry_name(bad), "{bad:?}");
        }
    }

    /// The wire spelling is serde's, and `as_str` says the same; an unknown code parses.
    #[test]
    fn error_codes_are_spelled_on_the_wire_as_as_str_says() {
        let all = [
            ErrorCode::NoTicket,
            ErrorCode::TicketExpired,
            ErrorCode::TicketNotYetValid,
            ErrorCode::BadSignature,
            ErrorCode::UnknownKid,
            ErrorCode::WrongAudience,
            ErrorCode::MalformedTicket,
            ErrorCode::UnknownDevice,
            ErrorCode::DeviceRevoked,
            ErrorCode::BadCredentials,
            ErrorCode::BadAssertion,
            ErrorCode::RateLimited,
            ErrorCode::Forbidden,
            ErrorCode::DeviceOnly,
            ErrorCode::NotFound,
            ErrorCode::PreconditionFailed,
            ErrorCode::PreconditionRequired,
            ErrorCode::BadBody,
            ErrorCode::BadQuery,
            ErrorCode::BadName,
            ErrorCode::BadId,
            ErrorCode::BadKey,
            ErrorCode::BadProof,
            ErrorCode::BadAddrs,
            ErrorCode::BadManifest,
            ErrorCode::BadTarget,
            ErrorCode::BadHash,
            ErrorCode::BadPrecondition,
            ErrorCode::BadJournal,
            ErrorCode::BadSeq,
            ErrorCode::SizeMismatch,
            ErrorCode::HashMismatch,
            ErrorCode::TooManySteps,
            ErrorCode::TooLarge,
            ErrorCode::TooManyFolders,
            ErrorCode::NameTaken,
            ErrorCode::KindMismatch,
            ErrorCode::NotEmpty,
            ErrorCode::NoParent,
            ErrorCode::Cycle,
            ErrorCode::MissingBlocks,
            ErrorCode::AlreadyMember,
            ErrorCode::QuotaExceeded,
            ErrorCode::Internal,
        ];
        for code in all {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
        let later: ApiError =
            serde_json::from_str(r#"{"error":"a_code_from_later","message":"m"}"#).unwrap();
        assert_eq!(later.error, ErrorCode::Unknown);
    }
}
