//! An in-memory cloud for tests: the metadata API's rules as `cloud::graph` applies them
//! (conditions, tombstones, one live name per directory, `replace`, journal marks, missing
//! blocks, the quota), shared by any number of devices, each a [`MemoryRemote`] with
//! failures to inject: a request that never arrives, a refusal, or one applied whose answer
//! is lost.

use super::{ClientError, Remote};
use crate::proto::{
    BLOCK_SIZE, BlockHash, ChangeBatch, CloudInfo, Device, Entry, EntryKind, EntryList, EntryPut,
    ErrorCode, Folder, FolderGrant, Jwks, Right, Step, StepRefusal, StepResults, Steps,
    TicketResponse, Usage,
};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most entries one change batch holds (as the cloud).
const FEED_LIMIT: usize = 1000;

/// A call of the [`Remote`] API, to inject a failure into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    Folders,
    Entries,
    Entry,
    Changes,
    Steps,
    JournalMark,
    Usage,
    HasBlock,
    PutBlock,
    GetBlock,
    GetBlocks,
    Devices,
}

/// What happens to a call that fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// It never reaches the cloud (a timeout, a refused connection).
    Unreachable,
    /// The cloud answers this status and code and changes nothing (a 5xx, a 507…).
    Answer(u16, ErrorCode),
    /// The cloud does what was asked, then the answer is lost on the way back.
    AppliedThenLost,
    /// Still on its way when the device gives up on it: the cloud does it only at
    /// [`MemoryRemote::land_late`] (a killed agent's request landing after its restart).
    /// Steps only; other calls take it for `Unreachable`.
    Late,
}

#[derive(Default)]
struct State {
    seq: u64,
    users: HashMap<String, (u64, u64)>,
    folders: BTreeMap<String, Folder>,
    /// Members other than the owner, by folder: user → writer.
    members: HashMap<String, HashMap<String, bool>>,
    entries: HashMap<(String, String), Entry>,
    blocks: HashMap<(String, BlockHash), Bytes>,
    devices: Vec<Device>,
    mapped: HashSet<(String, String)>,
    journals: HashMap<(String, String), u64>,
}

/// The cloud, in memory.
#[derive(Default)]
pub struct MemoryCloud {
    state: Mutex<State>,
    changed: tokio::sync::Notify,
}

fn refusal(status: u16, code: ErrorCode) -> ClientError {
    ClientError::Api {
        status,
        code,
        message: format!("memory cloud: {code}"),
    }
}

fn not_found() -> ClientError {
    refusal(404, ErrorCode::NotFound)
}

fn unreachable() -> ClientError {
    ClientError::Unreachable {
        url: "memory://cloud".into(),
        source: Box::new(std::io::Error::from(std::io::ErrorKind::TimedOut)),
    }
}

impl MemoryCloud {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A user with a quota of `quota` bytes.
    pub fn add_user(&self, name: &str, quota: u64) {
        self.state().users.insert(name.into(), (quota, 0));
    }

    /// Claims device `id` for `user` and gives its client.
    pub fn device(self: &Arc<Self>, user: &str, id: &str) -> Arc<MemoryRemote> {
        self.state().devices.push(Device {
            id: id.into(),
            user: user.into(),
            name: id.into(),
            public_key: String::new(),
            created_ms: 0,
            last_seen_ms: 0,
            revoked: false,
            addrs: Vec::new(),
            folders: Vec::new(),
        });
        Arc::new(MemoryRemote {
            cloud: Arc::clone(self),
            user: user.into(),
            device: id.into(),
            failures: Mutex::default(),
            calls: Mutex::default(),
            late: Mutex::default(),
        })
    }

    /// A folder owned by `owner`; returns its id.
    pub fn create_folder(&self, owner: &str, name: &str, device_only: bool) -> String {
        let id = format!("folder-{owner}-{name}");
        self.state().folders.insert(
            id.clone(),
            Folder {
                id: id.clone(),
                name: name.into(),
                owner: owner.into(),
                device_only,
                created_ms: 0,
                epoch: 0,
            },
        );
        id
    }

    /// Makes `user` a member of `folder`, able to write or only to read.
    pub fn share(&self, folder: &str, user: &str, writer: bool) {
        let mut st = self.state();
        st.members
            .entry(folder.into())
            .or_default()
            .insert(user.into(), writer);
    }

    /// Removes `user` from `folder`, as the owner's `unshare` would: the epoch moves on, the
    /// user's devices unmap it, and waiting feeds wake.
    pub fn unshare(&self, folder: &str, user: &str) {
        {
            let mut st = self.state();
            if let Some(m) = st.members.get_mut(folder) {
                m.remove(user);
            }
            if let Some(f) = st.folders.get_mut(folder) {
                f.epoch += 1;
            }
            let devices: HashSet<String> = st
                .devices
                .iter()
                .filter(|d| d.user == user)
                .map(|d| d.id.clone())
                .collect();
            st.mapped
                .retain(|(d, f)| f != folder || !devices.contains(d));
        }
        self.changed.notify_waiters();
    }

    /// Records that `device` has `folder` mapped.
    pub fn map(&self, device: &str, folder: &str) {
        self.state().mapped.insert((device.into(), folder.into()));
    }

    pub fn revoke(&self, device: &str) {
        let mut st = self.state();
        for d in st.devices.iter_mut().filter(|d| d.id == device) {
            d.revoked = true;
        }
    }

    /// The live entries of `folder`, by path from the folder root.
    pub fn tree(&self, folder: &str) -> BTreeMap<String, Entry> {
        let live: HashMap<String, Entry> = self
            .state()
            .entries
            .values()
            .filter(|e| e.folder == folder && !e.deleted)
            .map(|e| (e.id.clone(), e.clone()))
            .collect();
        let path = |e: &Entry| {
            let mut parts = vec![e.name.clone()];
            let mut up = e.parent.clone();
            while let Some(p) = up {
                let parent = live.get(&p)?;
                parts.push(parent.name.clone());
                up = parent.parent.clone();
            }
            parts.reverse();
            Some(parts.join("/"))
        };
        live.values()
            .filter_map(|e| Some((path(e)?, e.clone())))
            .collect()
    }

    /// Block `hash` of `folder`, if the cloud stores it.
    pub fn block(&self, folder: &str, hash: &BlockHash) -> Option<Bytes> {
        self.state()
            .blocks
            .get(&(folder.to_string(), *hash))
            .cloned()
    }

    /// The bytes charged to `user`.
    pub fn stored(&self, user: &str) -> u64 {
        self.state().users.get(user).map_or(0, |u| u.1)
    }

    /// Changes an entry as another device would, with `If-Match` on its current version.
    pub fn edit(&self, folder: &str, id: &str, author: &str, change: impl FnOnce(&mut EntryPut)) {
        let mut st = self.state();
        let cur = st.entries[&(folder.to_string(), id.to_string())].clone();
        let mut put = EntryPut {
            parent: cur.parent.clone(),
            name: cur.name.clone(),
            kind: cur.kind,
            mode: cur.mode,
            size: cur.size,
            mtime_ns: cur.mtime_ns,
            manifest: cur.manifest.clone(),
            target: cur.target.clone(),
            replace: false,
            device_held: false,
        };
        change(&mut put);
        let steps = vec![Step::Put {
            id: id.into(),
            if_match: Some(cur.version),
            entry: put,
            seq: None,
        }];
        let r = st.apply(folder, author, None, steps);
        assert!(r.refused.is_none(), "edit refused: {:?}", r.refused);
        drop(st);
        self.changed.notify_waiters();
    }

    /// Sets how far the cloud says it applied `device`'s journal `journal`.
    pub fn set_mark(&self, device: &str, journal: &str, applied: u64) {
        self.state()
            .journals
            .insert((device.into(), journal.into()), applied);
    }

    /// Deletes an entry as another device would.
    pub fn delete(&self, folder: &str, id: &str, author: &str) {
        let mut st = self.state();
        let cur = st.entries[&(folder.to_string(), id.to_string())].clone();
        let steps = vec![Step::Delete {
            id: id.into(),
            if_match: cur.version,
            seq: None,
        }];
        let r = st.apply(folder, author, None, steps);
        assert!(r.refused.is_none(), "delete refused: {:?}", r.refused);
        drop(st);
        self.changed.notify_waiters();
    }

    /// Stores a block as another device would.
    pub fn put(&self, folder: &str, data: &[u8]) -> BlockHash {
        let hash = BlockHash::of(data);
        self.state()
            .blocks
            .insert((folder.into(), hash), Bytes::copy_from_slice(data));
        hash
    }
}

impl State {
    fn role(&self, folder: &str, user: &str) -> Option<bool> {
        let f = self.folders.get(folder)?;
        if f.owner == user {
            return Some(true);
        }
        self.members.get(folder)?.get(user).copied()
    }

    fn live_at(&self, folder: &str, parent: Option<&str>, name: &str) -> Option<&Entry> {
        self.entries.values().find(|e| {
            e.folder == folder && !e.deleted && e.parent.as_deref() == parent && e.name == name
        })
    }

    fn has_live_children(&self, folder: &str, id: &str) -> bool {
        self.entries
            .values()
            .any(|e| e.folder == folder && !e.deleted && e.parent.as_deref() == Some(id))
    }

    /// Applies steps in order up to the first refusal, all with one new version.
    fn apply(
        &mut self,
        folder: &str,
        device: &str,
        journal: Option<&str>,
        steps: Vec<Step>,
    ) -> StepResults {
        let version = self.seq + 1;
        let mark_key = journal.map(|j| (device.to_string(), j.to_string()));
        let first_mark = mark_key
            .as_ref()
            .and_then(|k| self.journals.get(k).copied())
            .unwrap_or(0);
        let mut mark = first_mark;
        let (mut done, mut refused, mut changed) = (Vec::new(), None, false);
        for (index, step) in steps.into_iter().enumerate() {
            let seq = step.seq().filter(|_| journal.is_some());
            if seq.is_some_and(|s| s <= mark)
                && let Some(now) = self
                    .entries
                    .get(&(folder.to_string(), step.id().to_string()))
            {
                done.push(now.clone());
                continue;
            }
            let applied = match step {
                Step::Put {
                    id,
                    if_match,
                    entry,
                    ..
                } => self.put(folder, &id, if_match, entry, device, version),
                Step::Delete { id, if_match, .. } => {
                    self.delete(folder, &id, if_match, device, version)
                }
            };
            match applied {
                Ok(e) => {
                    done.push(e);
                    changed = true;
                    mark = mark.max(seq.unwrap_or(0));
                }
                Err((status, code)) => {
                    refused = Some(StepRefusal {
                        index,
                        status,
                        error: crate::proto::ApiError {
                            error: code,
                            message: format!("memory cloud: {code}"),
                        },
                    });
                    break;
                }
            }
        }
        if changed {
            self.seq = version;
            if let Some(k) = mark_key.filter(|_| mark > first_mark) {
                self.journals.insert(k, mark);
            }
        }
        StepResults { done, refused }
    }

    fn put(
        &mut self,
        folder: &str,
        id: &str,
        if_match: Option<u64>,
        put: EntryPut,
        device: &str,
        version: u64,
    ) -> Result<Entry, (u16, ErrorCode)> {
        let bad_name = put.name.is_empty()
            || put.name.len() > 255
            || put.name.contains('/')
            || put.name == "."
            || put.name == "..";
        if bad_name {
            return Err((400, ErrorCode::BadName));
        }
        if put.kind == EntryKind::File {
            let sum: u64 = put.manifest.iter().map(|b| u64::from(b.len)).sum();
            let bad = put
                .manifest
                .iter()
                .any(|b| b.len == 0 || u64::from(b.len) > BLOCK_SIZE);
            if bad || sum != put.size {
                return Err((400, ErrorCode::SizeMismatch));
            }
        }
        let key = (folder.to_string(), id.to_string());
        let current = self.entries.get(&key).cloned();
        match (if_match, &current) {
            (None, Some(_)) => return Err((412, ErrorCode::PreconditionFailed)),
            (Some(_), None) => return Err((404, ErrorCode::NotFound)),
            (Some(v), Some(e)) if e.version != v => {
                return Err((412, ErrorCode::PreconditionFailed));
            }
            _ => {}
        }
        if current
            .as_ref()
            .is_some_and(|c| !c.deleted && c.kind != put.kind)
        {
            return Err((409, ErrorCode::KindMismatch));
        }
        if let Some(p) = put.parent.as_deref() {
            let mut at = self.entries.get(&(folder.to_string(), p.to_string()));
            match at {
                Some(e) if !e.deleted && e.kind == EntryKind::Dir => {}
                _ => return Err((409, ErrorCode::NoParent)),
            }
            while let Some(a) = at {
                if a.id == id {
                    return Err((409, ErrorCode::Cycle));
                }
                at = a
                    .parent
                    .as_ref()
                    .and_then(|up| self.entries.get(&(folder.to_string(), up.clone())));
            }
        }
        let missing = put
            .manifest
            .iter()
            .filter(|b| !self.blocks.contains_key(&(folder.to_string(), b.hash)))
            .count();
        if missing > 0 && !put.device_held {
            return Err((409, ErrorCode::MissingBlocks));
        }
        if let Some(other) = self
            .live_at(folder, put.parent.as_deref(), &put.name)
            .filter(|o| o.id != id)
            .cloned()
        {
            if !put.replace {
                return Err((409, ErrorCode::NameTaken));
            }
            if (other.kind == EntryKind::Dir) != (put.kind == EntryKind::Dir) {
                return Err((409, ErrorCode::KindMismatch));
            }
            if other.kind == EntryKind::Dir && self.has_live_children(folder, &other.id) {
                return Err((409, ErrorCode::NotEmpty));
            }
            let mut gone = other;
            gone.deleted = true;
            gone.version = version;
            gone.author = device.into();
            self.entries
                .insert((folder.to_string(), gone.id.clone()), gone);
        }
        let entry = Entry {
            id: id.into(),
            folder: folder.into(),
            parent: put.parent,
            name: put.name,
            kind: put.kind,
            mode: put.mode,
            size: put.size,
            mtime_ns: put.mtime_ns,
            version,
            deleted: false,
            manifest: put.manifest,
            target: put.target,
            author: device.into(),
            in_cloud: missing == 0,
            holders: if missing == 0 {
                Vec::new()
            } else {
                vec![device.to_string()]
            },
        };
        self.entries.insert(key, entry.clone());
        Ok(entry)
    }

    fn delete(
        &mut self,
        folder: &str,
        id: &str,
        if_match: u64,
        device: &str,
        version: u64,
    ) -> Result<Entry, (u16, ErrorCode)> {
        let key = (folder.to_string(), id.to_string());
        let mut e = match self.entries.get(&key) {
            Some(e) if !e.deleted => e.clone(),
            _ => return Err((404, ErrorCode::NotFound)),
        };
        if e.version != if_match {
            return Err((412, ErrorCode::PreconditionFailed));
        }
        if e.kind == EntryKind::Dir && self.has_live_children(folder, id) {
            return Err((409, ErrorCode::NotEmpty));
        }
        e.deleted = true;
        e.version = version;
        e.author = device.into();
        self.entries.insert(key, e.clone());
        Ok(e)
    }
}

/// One device's client of a [`MemoryCloud`].
pub struct MemoryRemote {
    cloud: Arc<MemoryCloud>,
    user: String,
    device: String,
    failures: Mutex<HashMap<Call, VecDeque<Failure>>>,
    calls: Mutex<HashMap<Call, usize>>,
    /// `steps` requests still on their way (see [`Failure::Late`]).
    late: Mutex<Vec<(String, Steps)>>,
}

impl MemoryRemote {
    /// The next `call` of this device fails so (several queue up in order).
    pub fn fail(&self, call: Call, failure: Failure) {
        self.failures
            .lock()
            .unwrap()
            .entry(call)
            .or_default()
            .push_back(failure);
    }

    /// Lets the `steps` requests still on their way reach the cloud.
    pub fn land_late(&self) {
        let late = std::mem::take(&mut *self.late.lock().unwrap());
        for (folder, steps) in late {
            self.cloud
                .state()
                .apply(&folder, &self.device, steps.journal.as_deref(), steps.steps);
        }
        self.cloud.changed.notify_waiters();
    }

    /// How many times `call` was made.
    pub fn calls(&self, call: Call) -> usize {
        self.calls.lock().unwrap().get(&call).copied().unwrap_or(0)
    }

    /// Counts the call and runs `op` unless a failure is due.
    fn run<T>(
        &self,
        call: Call,
        op: impl FnOnce(&mut State) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        *self.calls.lock().unwrap().entry(call).or_default() += 1;
        let failure = self
            .failures
            .lock()
            .unwrap()
            .get_mut(&call)
            .and_then(VecDeque::pop_front);
        let result = match failure {
            Some(Failure::Unreachable | Failure::Late) => return Err(unreachable()),
            Some(Failure::Answer(status, code)) => return Err(refusal(status, code)),
            Some(Failure::AppliedThenLost) => op(&mut self.cloud.state()).and(Err(unreachable())),
            None => op(&mut self.cloud.state()),
        };
        if call == Call::Steps {
            self.cloud.changed.notify_waiters();
        }
        result
    }

    fn readable(&self, st: &State, folder: &str) -> Result<(), ClientError> {
        match st.role(folder, &self.user) {
            Some(_) => Ok(()),
            None if st.folders.contains_key(folder) => Err(refusal(403, ErrorCode::Forbidden)),
            None => Err(not_found()),
        }
    }

    fn writable(&self, st: &State, folder: &str) -> Result<(), ClientError> {
        self.readable(st, folder)?;
        match st.role(folder, &self.user) {
            Some(true) => Ok(()),
            _ => Err(refusal(403, ErrorCode::Forbidden)),
        }
    }
}

#[async_trait]
impl Remote for MemoryRemote {
    fn device_id(&self) -> &str {
        &self.device
    }

    fn user(&self) -> &str {
        &self.user
    }

    fn base(&self) -> Option<&str> {
        None
    }

    async fn folders(&self) -> Result<Vec<FolderGrant>, ClientError> {
        self.run(Call::Folders, |st| {
            Ok(st
                .folders
                .values()
                .filter_map(|f| {
                    let writer = st.role(&f.id, &self.user)?;
                    let mut rights = vec![Right::Read];
                    if writer {
                        rights.push(Right::Write);
                    }
                    Some(FolderGrant {
                        folder: f.clone(),
                        rights,
                        ticket: TicketResponse {
                            ticket: "memory".into(),
                            expires_at: i64::MAX,
                        },
                    })
                })
                .collect())
        })
    }

    async fn entries(&self, folder: &str) -> Result<EntryList, ClientError> {
        self.run(Call::Entries, |st| {
            self.readable(st, folder)?;
            let entries = st
                .entries
                .values()
                .filter(|e| e.folder == folder && !e.deleted)
                .cloned()
                .collect();
            Ok(EntryList {
                entries,
                seq: st.seq,
            })
        })
    }

    async fn entry(&self, folder: &str, id: &str) -> Result<Entry, ClientError> {
        self.run(Call::Entry, |st| {
            self.readable(st, folder)?;
            st.entries
                .get(&(folder.to_string(), id.to_string()))
                .cloned()
                .ok_or_else(not_found)
        })
    }

    async fn changes(
        &self,
        folder: &str,
        since: u64,
        wait_secs: u64,
    ) -> Result<ChangeBatch, ClientError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait_secs);
        loop {
            let woken = self.cloud.changed.notified();
            let batch = self.run(Call::Changes, |st| {
                self.readable(st, folder)?;
                let mut changes: Vec<Entry> = st
                    .entries
                    .values()
                    .filter(|e| e.folder == folder && e.version > since)
                    .cloned()
                    .collect();
                changes.sort_by_key(|e| e.version);
                let full = changes.len() > FEED_LIMIT;
                changes.truncate(FEED_LIMIT);
                let next = match changes.last() {
                    Some(last) if full => last.version,
                    _ => st.seq.max(since),
                };
                let epoch = st.folders.get(folder).map_or(0, |f| f.epoch);
                Ok(ChangeBatch {
                    changes,
                    next,
                    epoch,
                })
            })?;
            if !batch.changes.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(batch);
            }
            let _ = tokio::time::timeout_at(deadline, woken).await;
        }
    }

    async fn apply_steps(&self, folder: &str, steps: &Steps) -> Result<StepResults, ClientError> {
        let late = self
            .failures
            .lock()
            .unwrap()
            .get(&Call::Steps)
            .and_then(VecDeque::front)
            == Some(&Failure::Late);
        if late {
            let request = (folder.to_string(), steps.clone());
            self.late.lock().unwrap().push(request);
        }
        self.run(Call::Steps, |st| {
            self.writable(st, folder)?;
            Ok(st.apply(
                folder,
                &self.device,
                steps.journal.as_deref(),
                steps.steps.clone(),
            ))
        })
    }

    async fn journal_mark(&self, journal: &str) -> Result<u64, ClientError> {
        self.run(Call::JournalMark, |st| {
            Ok(st
                .journals
                .get(&(self.device.clone(), journal.to_string()))
                .copied()
                .unwrap_or(0))
        })
    }

    async fn usage(&self) -> Result<Usage, ClientError> {
        self.run(Call::Usage, |st| {
            let (quota, stored) = st.users.get(&self.user).copied().unwrap_or_default();
            Ok(Usage {
                bytes_stored: stored,
                quota,
            })
        })
    }

    async fn has_block(&self, folder: &str, hash: &BlockHash) -> Result<bool, ClientError> {
        self.run(Call::HasBlock, |st| {
            self.readable(st, folder)?;
            Ok(st.blocks.contains_key(&(folder.to_string(), *hash)))
        })
    }

    async fn put_block(
        &self,
        folder: &str,
        hash: &BlockHash,
        data: Bytes,
    ) -> Result<(), ClientError> {
        self.run(Call::PutBlock, |st| {
            self.writable(st, folder)?;
            let f = st.folders.get(folder).cloned().ok_or_else(not_found)?;
            if f.device_only {
                return Err(refusal(403, ErrorCode::DeviceOnly));
            }
            if !hash.matches(&data) {
                return Err(refusal(400, ErrorCode::HashMismatch));
            }
            let key = (folder.to_string(), *hash);
            if st.blocks.contains_key(&key) {
                return Ok(());
            }
            let owner = st.users.entry(f.owner).or_default();
            let len = data.len() as u64;
            if owner.1 + len > owner.0 {
                return Err(refusal(507, ErrorCode::QuotaExceeded));
            }
            owner.1 += len;
            st.blocks.insert(key, data);
            Ok(())
        })
    }

    async fn get_block(&self, folder: &str, hash: &BlockHash) -> Result<Bytes, ClientError> {
        self.run(Call::GetBlock, |st| {
            self.readable(st, folder)?;
            st.blocks
                .get(&(folder.to_string(), *hash))
                .cloned()
                .ok_or_else(not_found)
        })
    }

    async fn get_blocks(
        &self,
        folder: &str,
        hashes: &[BlockHash],
    ) -> Result<Vec<Option<Bytes>>, ClientError> {
        self.run(Call::GetBlocks, |st| {
            self.readable(st, folder)?;
            Ok(hashes
                .iter()
                .map(|h| st.blocks.get(&(folder.to_string(), *h)).cloned())
                .collect())
        })
    }

    async fn devices(&self) -> Result<Vec<Device>, ClientError> {
        self.run(Call::Devices, |st| {
            Ok(st
                .devices
                .iter()
                .filter(|d| d.user == self.user)
                .cloned()
                .collect())
        })
    }

    async fn folder_devices(&self, folder: &str) -> Result<Vec<Device>, ClientError> {
        let st = self.cloud.state();
        self.readable(&st, folder)?;
        Ok(st
            .devices
            .iter()
            .filter(|d| st.mapped.contains(&(d.id.clone(), folder.to_string())))
            .cloned()
            .collect())
    }

    async fn cloud_info(&self) -> Result<(CloudInfo, Jwks), ClientError> {
        Ok((CloudInfo::default(), Jwks { keys: Vec::new() }))
    }

    async fn set_presence(&self, addrs: Vec<String>) -> Result<Device, ClientError> {
        let mut st = self.cloud.state();
        let d = st
            .devices
            .iter_mut()
            .find(|d| d.id == self.device)
            .ok_or_else(not_found)?;
        d.addrs = addrs;
        Ok(d.clone())
    }

    async fn relay_ticket(&self) -> Result<String, ClientError> {
        Ok(format!("memory-relay-ticket-{}", self.device))
    }

    async fn peer_ticket(
        &self,
        device: &str,
        _folder: Option<&str>,
    ) -> Result<String, ClientError> {
        Ok(format!("memory-peer-{}-{device}", self.device))
    }
}
