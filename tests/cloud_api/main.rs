//! The cloud's REST API over real HTTPS on 127.0.0.1, trusting only the CA the cloud made
//! on first start. Each refusal test shows the status and that nothing changed. Sharing
//! between people is in `sharing.rs`.

use meshfs::cloud::{self, CloudConfig, Role, RunningCloud};
use meshfs::crypto::keys;
use meshfs::crypto::ticket::{KeySet, Signer};
use meshfs::proto::claims::{AUDIENCE_CLOUD, AUDIENCE_PEER, ISSUER};
use meshfs::proto::{
    AUDIENCE_CLAIM, AUDIENCE_RENEW, AccessRequest, ApiError, BlockHash, BlockRef, ChallengeClaims,
    ChangeBatch, ClaimChallenge, ClaimProof, Claims, Device, DeviceAssertion, Entry, EntryKind,
    EntryList, EntryPut, ErrorCode, Folder, FolderGrant, FolderPatch, Jwks, LoginRequest,
    LoginResponse, NewFolder, PeerRequest, Presence, RenewRequest, Right, TicketKind,
    TicketResponse, Usage, now_secs,
};
use reqwest::header::{AUTHORIZATION, ETAG, IF_MATCH, IF_NONE_MATCH};
use reqwest::{Method, RequestBuilder, StatusCode};
use rsa::PrivateKey;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// Device keys, made once for all tests (RSA key generation is slow).
static KEY_A: LazyLock<PrivateKey> = LazyLock::new(keys::generate);
static KEY_B: LazyLock<PrivateKey> = LazyLock::new(keys::generate);

struct Env {
    dir: tempfile::TempDir,
    engines: cloud::Engines,
    base: String,
    http: reqwest::Client,
    cloud: RunningCloud,
}

/// A device logged in: its id and identity ticket.
struct Dev {
    user: String,
    id: String,
    identity: String,
}

#[path = "../common/engines.rs"]
mod engines;
mod relays;
mod sharing;

async fn env() -> Env {
    env_with(|_| {}).await
}

/// A cloud with users ann and bob, configured by `set` on top of the defaults.
async fn env_with(set: impl FnOnce(&mut CloudConfig)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cloud");
    let engines = engines::for_test(&data);
    cloud::add_user(&engines, "ann", "ann-password")
        .await
        .unwrap();
    cloud::add_user(&engines, "bob", "bob-password")
        .await
        .unwrap();
    let mut cfg = CloudConfig::new(data.clone(), "127.0.0.1:0".parse().unwrap());
    cfg.engines = engines.clone();
    set(&mut cfg);
    let cloud = cloud::start(cfg).await.unwrap();
    meshfs::crypto::install_tls_provider();
    let ca = std::fs::read(data.join("ca.pem")).unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .build()
        .unwrap();
    let base = format!("https://127.0.0.1:{}", cloud.addr.port());
    Env {
        dir,
        engines,
        base,
        http,
        cloud,
    }
}

impl Env {
    /// The cloud's data directory.
    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("cloud")
    }

    fn req(&self, method: Method, path: &str, ticket: Option<&str>) -> RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match ticket {
            Some(t) => r.header(AUTHORIZATION, format!("Bearer {t}")),
            None => r,
        }
    }

    async fn login_with(&self, user: &str, password: &str, key: &PrivateKey) -> reqwest::Response {
        let body = self.claim(user, password, key).await;
        self.req(Method::POST, "/login", None)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// A claim of a device named "laptop" with `key`, over a fresh challenge, signed by it.
    async fn claim(&self, user: &str, password: &str, key: &PrivateKey) -> LoginRequest {
        let res = self.req(Method::POST, "/login/challenge", None).send();
        let challenge: ClaimChallenge = res.await.unwrap().json().await.unwrap();
        let proof = ClaimProof {
            aud: AUDIENCE_CLAIM.into(),
            challenge: challenge.challenge,
            user: user.into(),
            device_name: "laptop".into(),
        };
        LoginRequest {
            user: user.into(),
            password: password.into(),
            device_name: proof.device_name.clone(),
            device_key: keys::public_pem(&key.to_public_key()).unwrap(),
            challenge: proof.challenge.clone(),
            proof: Signer::new("device", key.clone()).sign(&proof),
        }
    }

    async fn login(&self, user: &str) -> Dev {
        let res = self
            .login_with(user, &format!("{user}-password"), &KEY_A)
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        let l: LoginResponse = res.json().await.unwrap();
        Dev {
            user: l.user,
            id: l.device_id,
            identity: l.identity.ticket,
        }
    }

    async fn new_folder(&self, dev: &Dev, name: &str, device_only: bool) -> FolderGrant {
        let res = self.create_folder(dev, name, device_only).await;
        assert_eq!(res.status(), StatusCode::CREATED);
        res.json().await.unwrap()
    }

    /// `POST /folders`, whatever the answer.
    async fn create_folder(&self, dev: &Dev, name: &str, device_only: bool) -> reqwest::Response {
        self.req(Method::POST, "/folders", Some(&dev.identity))
            .json(&NewFolder {
                name: name.into(),
                device_only,
            })
            .send()
            .await
            .unwrap()
    }

    /// The user's folders, as `GET /users/{user}/folders` lists them.
    async fn folders(&self, dev: &Dev) -> Vec<FolderGrant> {
        let res = self
            .req(
                Method::GET,
                &format!("/users/{}/folders", dev.user),
                Some(&dev.identity),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.json().await.unwrap()
    }

    async fn access(&self, dev: &Dev, resource: &str, rights: &[Right]) -> reqwest::Response {
        let body = AccessRequest {
            resource: resource.into(),
            rights: rights.to_vec(),
        };
        self.req(Method::POST, "/tickets/access", Some(&dev.identity))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn put_entry(
        &self,
        ticket: &str,
        folder: &str,
        id: &str,
        body: &EntryPut,
        cond: Option<(reqwest::header::HeaderName, String)>,
    ) -> reqwest::Response {
        let mut r = self.req(
            Method::PUT,
            &format!("/folders/{folder}/entries/{id}"),
            Some(ticket),
        );
        if let Some((name, value)) = cond {
            r = r.header(name, value);
        }
        r.json(body).send().await.unwrap()
    }

    async fn create(
        &self,
        ticket: &str,
        folder: &str,
        id: &str,
        body: &EntryPut,
    ) -> reqwest::Response {
        self.put_entry(ticket, folder, id, body, Some((IF_NONE_MATCH, "*".into())))
            .await
    }

    async fn entries(&self, ticket: &str, folder: &str) -> EntryList {
        let res = self
            .req(
                Method::GET,
                &format!("/folders/{folder}/entries"),
                Some(ticket),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.json().await.unwrap()
    }

    async fn put_block(
        &self,
        ticket: &str,
        folder: &str,
        hash: &str,
        data: &[u8],
    ) -> reqwest::Response {
        self.req(
            Method::PUT,
            &format!("/folders/{folder}/blocks/{hash}"),
            Some(ticket),
        )
        .body(data.to_vec())
        .send()
        .await
        .unwrap()
    }

    async fn block_status(&self, ticket: &str, folder: &str, hash: &str) -> StatusCode {
        self.req(
            Method::HEAD,
            &format!("/folders/{folder}/blocks/{hash}"),
            Some(ticket),
        )
        .send()
        .await
        .unwrap()
        .status()
    }

    /// A signer holding the cloud's own key, under `kid`.
    fn cloud_signer(&self, kid: Option<&str>) -> Signer {
        let key = engines::signing_key(&self.engines);
        let pem = keys::public_pem(&key.to_public_key()).unwrap();
        let kid = kid.map_or_else(|| cloud::keys::kid_of(&pem), str::to_owned);
        Signer::new(kid, key)
    }
}

fn dir(name: &str, parent: Option<&str>) -> EntryPut {
    EntryPut {
        parent: parent.map(Into::into),
        name: name.into(),
        kind: EntryKind::Dir,
        mode: 0o755,
        size: 0,
        mtime_ns: 1,
        manifest: vec![],
        target: None,
        replace: false,
        device_held: false,
    }
}

fn file(name: &str, blocks: &[&[u8]]) -> EntryPut {
    let manifest: Vec<BlockRef> = blocks
        .iter()
        .map(|b| BlockRef {
            hash: BlockHash::of(b),
            len: b.len() as u32,
        })
        .collect();
    EntryPut {
        size: manifest.iter().map(|b| u64::from(b.len)).sum(),
        kind: EntryKind::File,
        mode: 0o644,
        manifest,
        ..dir(name, None)
    }
}

async fn api_error(res: reqwest::Response) -> (StatusCode, ErrorCode) {
    let status = res.status();
    let body: ApiError = res.json().await.unwrap();
    assert!(!body.message.is_empty());
    (status, body.error)
}

fn etag_of(res: &reqwest::Response) -> String {
    res.headers()
        .get(ETAG)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

fn access_claims(dev: &Dev, folder: &str, iat: i64, exp: i64) -> Claims {
    Claims {
        iss: ISSUER.into(),
        sub: dev.user.clone(),
        aud: AUDIENCE_CLOUD.into(),
        iat,
        nbf: iat,
        exp,
        jti: "test".into(),
        dev: dev.id.clone(),
        kind: TicketKind::Access,
        res: Some(format!("/folders/{folder}")),
        rights: vec![Right::Read, Right::Write, Right::Admin],
        epoch: None,
        peer: None,
    }
}

/// A folder of ann's with one directory in it: (env, ann's device, folder grant).
async fn ann_with_folder() -> (Env, Dev, FolderGrant) {
    let env = env().await;
    let ann = env.login("ann").await;
    let grant = env.new_folder(&ann, "docs", false).await;
    let res = env
        .create(
            &grant.ticket.ticket,
            &grant.folder.id,
            "d1",
            &dir("photos", None),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    (env, ann, grant)
}

#[tokio::test]
async fn login_returns_an_identity_ticket_that_verifies_through_the_jwks() {
    let env = env().await;
    let health = env.req(Method::GET, "/health", None).send().await.unwrap();
    assert_eq!(health.text().await.unwrap(), "ok");
    let ann = env.login("ann").await;
    let jwks: Jwks = env
        .req(Method::GET, "/.well-known/jwks.json", None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let set = KeySet::from_jwks(&jwks).unwrap();
    let ticket = set
        .check(&ann.identity, AUDIENCE_CLOUD, now_secs())
        .unwrap();
    let c = ticket.claims();
    assert_eq!(
        (c.sub.as_str(), c.dev.as_str(), c.kind),
        ("ann", ann.id.as_str(), TicketKind::Identity)
    );
    assert!(c.exp - c.iat <= 1800);

    let wrong = env.login_with("ann", "not-the-password", &KEY_A).await;
    assert_eq!(
        api_error(wrong).await,
        (StatusCode::UNAUTHORIZED, ErrorCode::BadCredentials)
    );
    let nobody = env.login_with("nobody", "x", &KEY_A).await;
    assert_eq!(
        api_error(nobody).await,
        (StatusCode::UNAUTHORIZED, ErrorCode::BadCredentials)
    );
    env.cloud.shutdown().await.unwrap();
}

#[tokio::test]
async fn listing_folders_returns_a_ticket_per_folder() {
    let env = env().await;
    let ann = env.login("ann").await;
    let a = env.new_folder(&ann, "docs", false).await;
    let b = env.new_folder(&ann, "music", true).await;
    let dup = env.create_folder(&ann, "docs", false).await;
    assert_eq!(
        api_error(dup).await,
        (StatusCode::CONFLICT, ErrorCode::NameTaken)
    );

    let grants = env.folders(&ann).await;
    assert_eq!(grants.len(), 2);
    for g in &grants {
        assert_eq!(g.rights, vec![Right::Read, Right::Write, Right::Admin]);
        let folder = env
            .req(
                Method::GET,
                &format!("/folders/{}", g.folder.id),
                Some(&g.ticket.ticket),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(folder.status(), StatusCode::OK);
    }
    let ids: Vec<&str> = grants.iter().map(|g| g.folder.id.as_str()).collect();
    assert!(ids.contains(&a.folder.id.as_str()) && ids.contains(&b.folder.id.as_str()));
    // A folder's ticket does not open the other folder.
    let cross = env
        .req(
            Method::GET,
            &format!("/folders/{}", b.folder.id),
            Some(&a.ticket.ticket),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn entries_change_only_under_their_etag_conditions() {
    let (env, _ann, g) = ann_with_folder().await;
    let (t, f) = (g.ticket.ticket.as_str(), g.folder.id.as_str());

    let again = env.create(t, f, "d1", &dir("other", None)).await;
    assert_eq!(
        api_error(again).await,
        (
            StatusCode::PRECONDITION_FAILED,
            ErrorCode::PreconditionFailed
        )
    );
    let blind = env.put_entry(t, f, "d1", &dir("renamed", None), None).await;
    assert_eq!(
        api_error(blind).await,
        (
            StatusCode::PRECONDITION_REQUIRED,
            ErrorCode::PreconditionRequired
        )
    );

    let got = env
        .req(Method::GET, &format!("/folders/{f}/entries/d1"), Some(t))
        .send()
        .await
        .unwrap();
    let tag = etag_of(&got);
    let v1: Entry = got.json().await.unwrap();
    assert_eq!(tag, format!("\"{}\"", v1.version));

    let upd = env
        .put_entry(
            t,
            f,
            "d1",
            &dir("renamed", None),
            Some((IF_MATCH, tag.clone())),
        )
        .await;
    assert_eq!(upd.status(), StatusCode::OK);
    let v2: Entry = upd.json().await.unwrap();
    assert!(v2.version > v1.version);
    assert_eq!(v2.name, "renamed");

    // A stale If-Match is refused and leaves the entry as it was.
    let stale = env
        .put_entry(
            t,
            f,
            "d1",
            &dir("stale", None),
            Some((IF_MATCH, tag.clone())),
        )
        .await;
    assert_eq!(
        api_error(stale).await,
        (
            StatusCode::PRECONDITION_FAILED,
            ErrorCode::PreconditionFailed
        )
    );
    let list = env.entries(t, f).await;
    assert_eq!(list.entries, vec![v2.clone()]);
    assert_eq!(list.seq, v2.version);

    let path = format!("/folders/{f}/entries/d1");
    let del = env
        .req(Method::DELETE, &path, Some(t))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::PRECONDITION_REQUIRED);
    let del = env
        .req(Method::DELETE, &path, Some(t))
        .header(IF_MATCH, format!("\"{}\"", v2.version))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::OK);
    let tomb: Entry = env
        .req(Method::GET, &path, Some(t))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(tomb.deleted && tomb.version > v2.version);
    assert!(env.entries(t, f).await.entries.is_empty());
    // Even a tombstone's id cannot be created again.
    let recreate = env.create(t, f, "d1", &dir("photos", None)).await;
    assert_eq!(recreate.status(), StatusCode::PRECONDITION_FAILED);
}

/// Many changes in one request: applied in order in one transaction up to the first
/// refused, which is reported as its single request would be; the rest is not applied.
#[tokio::test]
async fn steps_apply_in_order_up_to_the_first_refusal_which_changes_nothing() {
    use meshfs::proto::{Step, StepResults, Steps};
    let (env, _ann, g) = ann_with_folder().await;
    let (t, f) = (g.ticket.ticket.as_str(), g.folder.id.as_str());
    let put = |id: &str, if_match: Option<u64>, e: EntryPut| Step::Put {
        id: id.into(),
        if_match,
        entry: e,
        seq: None,
    };
    let send = |steps: Vec<Step>| {
        env.req(Method::POST, &format!("/folders/{f}/steps"), Some(t))
            .json(&Steps {
                journal: None,
                steps,
            })
            .send()
    };
    let res = send(vec![
        put("s1", None, dir("one", None)),
        put("s2", None, dir("two", Some("s1"))),
        put("s3", None, dir("three", None)),
        // Exists already: 412, as a single create would get.
        put("d1", None, dir("again", None)),
        put("s4", None, dir("never", None)),
    ])
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let r: StepResults = res.json().await.unwrap();
    assert_eq!(
        r.done.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["s1", "s2", "s3"]
    );
    assert_eq!(
        r.done[1].parent.as_deref(),
        Some("s1"),
        "a step sees the ones before it"
    );
    let refused = r.refused.expect("the fourth step is refused");
    assert_eq!((refused.index, refused.status), (3, 412));
    assert_eq!(refused.error.error, ErrorCode::PreconditionFailed);
    let list = env.entries(t, f).await;
    let mut names: Vec<_> = list.entries.iter().map(|e| e.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["one", "photos", "three", "two"],
        "d1 unchanged, s4 absent"
    );

    // Updates and deletes carry the versions the cloud gave.
    let v = r.done[2].version;
    let res = send(vec![
        put("s3", Some(v), dir("three-renamed", None)),
        Step::Delete {
            id: "s2".into(),
            if_match: r.done[1].version,
            seq: None,
        },
    ])
    .await
    .unwrap();
    let r: StepResults = res.json().await.unwrap();
    assert!(r.refused.is_none());
    assert_eq!(r.done[0].name, "three-renamed");
    assert!(r.done[1].deleted);

    // A batch refused from its first step changes nothing, and the size is bounded.
    let res = send(vec![Step::Delete {
        id: "s1".into(),
        if_match: 1,
        seq: None,
    }])
    .await
    .unwrap();
    let r: StepResults = res.json().await.unwrap();
    assert!(r.done.is_empty());
    assert_eq!(r.refused.map(|x| x.status), Some(412));
    let many = (0..513)
        .map(|i| put(&format!("m{i}"), None, dir(&format!("m{i}"), None)))
        .collect();
    let res = send(many).await.unwrap();
    assert_eq!(
        api_error(res).await,
        (StatusCode::BAD_REQUEST, ErrorCode::TooManySteps)
    );
}

/// A device replaying its journal after a crash resends steps the cloud may have applied:
/// with the journal named, each record is applied once, so a replayed batch changes nothing
/// and an old step replayed after newer ones never undoes them. A refused record is not
/// counted as applied, and another journal (a device whose store was lost) starts afresh.
#[tokio::test]
async fn steps_of_a_journal_are_applied_once_however_often_they_are_replayed() {
    use meshfs::proto::{JournalMark, Step, StepResults, Steps};
    let (env, ann, g) = ann_with_folder().await;
    let (t, f) = (g.ticket.ticket.as_str(), g.folder.id.as_str());
    let put = |id: &str, seq: u64, if_match: Option<u64>, e: EntryPut| Step::Put {
        id: id.into(),
        if_match,
        entry: e,
        seq: Some(seq),
    };
    let env = &env;
    let post = |journal: &str, steps: Vec<Step>| {
        let body = Steps {
            journal: Some(journal.into()),
            steps,
        };
        async move {
            env.req(Method::POST, &format!("/folders/{f}/steps"), Some(t))
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let send = |journal: &str, steps: Vec<Step>| {
        let sent = post(journal, steps);
        async move {
            let res = sent.await;
            assert_eq!(res.status(), StatusCode::OK);
            res.json::<StepResults>().await.unwrap()
        }
    };
    // Record 10 creates `x` as `a`; record 11 renames it to `b`; record 12 creates `y` as
    // `a`, the name `x` left...
    let first = send("j-1", vec![put("x", 10, None, dir("a", None))]).await;
    let v1 = first.done[0].version;
    let second = send(
        "j-1",
        vec![
            put("x", 11, Some(v1), dir("b", None)),
            put("y", 12, None, dir("a", None)),
        ],
    )
    .await;
    assert!(second.refused.is_none());
    let names = |l: &meshfs::proto::EntryList| {
        let mut n: Vec<_> = l
            .entries
            .iter()
            .map(|e| (e.id.clone(), e.name.clone()))
            .collect();
        n.sort_unstable();
        n
    };
    let before = env.entries(t, f).await;

    // ...a crash, and the whole journal is replayed with the versions the device had
    // recorded: nothing changes, each step is reported done with the entry as it is.
    let replay = send(
        "j-1",
        vec![
            put("x", 10, None, dir("a", None)),
            put("y", 12, None, dir("a", None)),
        ],
    )
    .await;
    assert!(replay.refused.is_none(), "{:?}", replay.refused);
    assert_eq!(
        replay.done[0].name, "b",
        "the old step did not undo the rename"
    );
    assert_eq!(replay.done[0].version, second.done[0].version);
    let after = env.entries(t, f).await;
    assert_eq!(names(&after), names(&before));
    assert_eq!(after.seq, before.seq, "a replay publishes no version");

    // A refused record is not applied, so sent again (fixed) it is.
    let refused = send("j-1", vec![put("z", 13, None, dir("b", None))]).await;
    assert_eq!(
        refused.refused.map(|r| r.error.error),
        Some(ErrorCode::NameTaken)
    );
    let fixed = send("j-1", vec![put("z", 13, None, dir("z", None))]).await;
    assert!(fixed.refused.is_none());
    assert_eq!(fixed.done[0].name, "z");

    // Another journal's record numbers are its own.
    let other = send("j-2", vec![put("w", 1, None, dir("w", None))]).await;
    assert_eq!(other.done[0].name, "w");
    let ids: Vec<_> = names(&env.entries(t, f).await)
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    assert!(ids.contains(&"w".to_string()) && ids.contains(&"z".to_string()));

    // The device reads how far its journal got (at start, to notice a store restored from
    // an older copy); a ticket of another device may not.
    let mark_path = |dev: &str, j: &str| format!("/users/ann/devices/{dev}/journals/{j}");
    let res = env
        .req(Method::GET, &mark_path(&ann.id, "j-1"), Some(&ann.identity))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<JournalMark>().await.unwrap().applied, 13);
    let other = env.login("ann").await;
    let res = env
        .req(
            Method::GET,
            &mark_path(&ann.id, "j-1"),
            Some(&other.identity),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    // A journal id is a token; a record number must fit the store.
    assert_eq!(
        api_error(post("no spaces", vec![]).await).await,
        (StatusCode::BAD_REQUEST, ErrorCode::BadJournal)
    );
    let too_big = vec![put("v", u64::MAX, None, dir("v", None))];
    assert_eq!(
        api_error(post("j-1", too_big).await).await,
        (StatusCode::BAD_REQUEST, ErrorCode::BadSeq)
    );
}

/// Names a mount could not show are refused with 400 and nothing is made: an entry's with
/// a NUL or another control character, `.`, `..` or a `/`; a folder named `.` or `..`.
#[tokio::test]
async fn names_no_file_system_could_show_are_refused() {
    let (env, ann, g) = ann_with_folder().await;
    let (t, f) = (g.ticket.ticket.as_str(), g.folder.id.as_str());
    let before = env.entries(t, f).await.entries;
    for (i, bad) in ["nul\0", "line\nbreak", "bell\u{7}", ".", "..", "a/b"]
        .iter()
        .enumerate()
    {
        let res = env.create(t, f, &format!("n{i}"), &file(bad, &[])).await;
        assert_eq!(
            api_error(res).await,
            (StatusCode::BAD_REQUEST, ErrorCode::BadName),
            "{bad:?}"
        );
    }
    assert_eq!(env.entries(t, f).await.entries, before);
    for bad in [".", ".."] {
        let res = env
            .req(Method::POST, "/folders", Some(&ann.identity))
            .json(&NewFolder {
                name: bad.into(),
                device_only: false,
            })
            .send()
            .await
            .unwrap();
        assert_eq!(
            api_error(res).await,
            (StatusCode::BAD_REQUEST, ErrorCode::BadName),
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn a_taken_name_needs_replace_and_the_tree_stays_a_tree() {
    let (env, _ann, g) = ann_with_folder().await;
    let (t, f) = (g.ticket.ticket.as_str(), g.folder.id.as_str());
    assert_eq!(
        env.create(t, f, "a1", &file("a", &[])).await.status(),
        StatusCode::CREATED
    );

    let taken = env.create(t, f, "a2", &file("a", &[])).await;
    assert_eq!(
        api_error(taken).await,
        (StatusCode::CONFLICT, ErrorCode::NameTaken)
    );
    let over_file = EntryPut {
        replace: true,
        ..dir("a", None)
    };
    let res = env.create(t, f, "a3", &over_file).await;
    assert_eq!(
        api_error(res).await,
        (StatusCode::CONFLICT, ErrorCode::KindMismatch)
    );
    let replace = EntryPut {
        replace: true,
        ..file("a", &[])
    };
    assert_eq!(
        env.create(t, f, "a2", &replace).await.status(),
        StatusCode::CREATED
    );
    let list = env.entries(t, f).await;
    let names: Vec<(&str, &str)> = list
        .entries
        .iter()
        .map(|e| (e.id.as_str(), e.name.as_str()))
        .collect();
    assert_eq!(names, vec![("a2", "a"), ("d1", "photos")]);

    let orphan = env.create(t, f, "x", &dir("x", Some("nope"))).await;
    assert_eq!(
        api_error(orphan).await,
        (StatusCode::CONFLICT, ErrorCode::NoParent)
    );
    let under_file = env.create(t, f, "x", &dir("x", Some("a2"))).await;
    assert_eq!(
        api_error(under_file).await,
        (StatusCode::CONFLICT, ErrorCode::NoParent)
    );
    let bad = env.create(t, f, "x", &dir("..", None)).await;
    assert_eq!(
        api_error(bad).await,
        (StatusCode::BAD_REQUEST, ErrorCode::BadName)
    );

    let sub = env.create(t, f, "d2", &dir("sub", Some("d1"))).await;
    assert_eq!(sub.status(), StatusCode::CREATED);
    let d1: Entry = env
        .req(Method::GET, &format!("/folders/{f}/entries/d1"), Some(t))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cond = Some((IF_MATCH, format!("\"{}\"", d1.version)));
    let cycle = env
        .put_entry(t, f, "d1", &dir("photos", Some("d2")), cond)
        .await;
    assert_eq!(
        api_error(cycle).await,
        (StatusCode::CONFLICT, ErrorCode::Cycle)
    );
    let del = env
        .req(Method::DELETE, &format!("/folders/{f}/entries/d1"), Some(t))
        .header(IF_MATCH, format!("\"{}\"", d1.version))
        .send()
        .await
        .unwrap();
    assert_eq!(
        api_error(del).await,
        (StatusCode::CONFLICT, ErrorCode::NotEmpty)
    );
    assert_eq!(env.entries(t, f).await.entries.len(), 3);
}

#[tokio::test]
async fn a_file_is_published_only_when_its_blocks_are_in_the_cloud() {
    let (env, ann, g) = ann_with_folder().await;
    let (t, f) = (g.ticket.ticket.as_str(), g.folder.id.as_str());
    let (b1, b2): (&[u8], &[u8]) = (b"first block", b"second");
    let body = file("notes.txt", &[b1, b2]);

    let early = env.create(t, f, "n1", &body).await;
    assert_eq!(
        api_error(early).await,
        (StatusCode::CONFLICT, ErrorCode::MissingBlocks)
    );
    let wrong_size = EntryPut {
        size: 3,
        ..body.clone()
    };
    let res = env.create(t, f, "n1", &wrong_size).await;
    assert_eq!(
        api_error(res).await,
        (StatusCode::BAD_REQUEST, ErrorCode::SizeMismatch)
    );

    for b in [b1, b2] {
        let h = BlockHash::of(b).to_hex();
        assert_eq!(env.block_status(t, f, &h).await, StatusCode::NOT_FOUND);
        assert_eq!(
            env.put_block(t, f, &h, b).await.status(),
            StatusCode::CREATED
        );
        assert_eq!(env.put_block(t, f, &h, b).await.status(), StatusCode::OK);
        assert_eq!(env.block_status(t, f, &h).await, StatusCode::OK);
        let got = env
            .req(Method::GET, &format!("/folders/{f}/blocks/{h}"), Some(t))
            .send()
            .await
            .unwrap();
        assert_eq!(got.bytes().await.unwrap().as_ref(), b);
    }
    let res = env.create(t, f, "n1", &body).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let e: Entry = res.json().await.unwrap();
    assert_eq!(
        (e.size, e.manifest.len(), e.author.as_str()),
        (17, 2, ann.id.as_str())
    );

    let usage: Usage = env
        .req(Method::GET, "/users/ann/usage", Some(&ann.identity))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (usage.bytes_stored, usage.quota),
        (17, cloud::DEFAULT_QUOTA)
    );
}

#[tokio::test]
async fn a_block_whose_hash_differs_from_its_name_is_refused_and_not_stored() {
    let (env, ann, g) = ann_with_folder().await;
    let (t, f) = (g.ticket.ticket.as_str(), g.folder.id.as_str());
    let h = BlockHash::of(b"what the name promises").to_hex();
    let res = env.put_block(t, f, &h, b"something else").await;
    assert_eq!(
        api_error(res).await,
        (StatusCode::BAD_REQUEST, ErrorCode::HashMismatch)
    );
    assert_eq!(env.block_status(t, f, &h).await, StatusCode::NOT_FOUND);
    let big = vec![0u8; meshfs::proto::BLOCK_SIZE as usize + 1];
    let res = env
        .put_block(t, f, &BlockHash::of(&big).to_hex(), &big)
        .await;
    assert_eq!(
        api_error(res).await,
        (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge)
    );

    cloud::set_quota(&env.engines, "ann", 10).await.unwrap();
    let data = b"eleven byte";
    let h = BlockHash::of(data).to_hex();
    let res = env.put_block(t, f, &h, data).await;
    assert_eq!(
        api_error(res).await,
        (StatusCode::INSUFFICIENT_STORAGE, ErrorCode::QuotaExceeded)
    );
    assert_eq!(env.block_status(t, f, &h).await, StatusCode::NOT_FOUND);

    let local = env.new_folder(&ann, "local", true).await;
    let res = env
        .put_block(&local.ticket.ticket, &local.folder.id, &h, data)
        .await;
    assert_eq!(
        api_error(res).await,
        (StatusCode::FORBIDDEN, ErrorCode::DeviceOnly)
    );
    // A manifest whose blocks are nowhere in the cloud is refused unless the author says
    // it holds them; then the entry names it as the holder.
    let res = env
        .create(
            &local.ticket.ticket,
            &local.folder.id,
            "n1",
            &file("n", &[data]),
        )
        .await;
    assert_eq!(
        api_error(res).await,
        (StatusCode::CONFLICT, ErrorCode::MissingBlocks)
    );
    let held = EntryPut {
        device_held: true,
        ..file("n", &[data])
    };
    let res = env
        .create(&local.ticket.ticket, &local.folder.id, "n1", &held)
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let e: Entry = res.json().await.unwrap();
    assert!(!e.in_cloud);
    assert_eq!(e.holders, vec![ann.id.clone()]);
}

#[tokio::test]
async fn the_change_feed_returns_changes_and_a_long_poll_wakes_on_one() {
    let (env, _ann, g) = ann_with_folder().await;
    let (t, f) = (g.ticket.ticket.clone(), g.folder.id.clone());
    let feed = |since: u64, wait: u64| {
        env.req(
            Method::GET,
            &format!("/folders/{f}/changes?since={since}&wait={wait}"),
            Some(&t),
        )
        .send()
    };
    let batch: ChangeBatch = feed(0, 0).await.unwrap().json().await.unwrap();
    assert_eq!(batch.changes.len(), 1);
    assert_eq!(batch.changes[0].id, "d1");
    assert_eq!(batch.next, batch.changes[0].version);

    let empty: ChangeBatch = feed(batch.next, 0).await.unwrap().json().await.unwrap();
    assert!(empty.changes.is_empty());
    assert_eq!(empty.next, batch.next);

    let started = Instant::now();
    let poll = feed(batch.next, 20);
    let write = async {
        // Part of the workload, not a wait for a state: the write should come while the
        // poll waits, and nothing outside the cloud shows that it does. Were the write
        // first, the poll would answer at once with the same batch: the delay keeps the test
        // about waking, and no result depends on it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let res = env.create(&t, &f, "d2", &dir("new", None)).await;
        assert_eq!(res.status(), StatusCode::CREATED);
    };
    let (res, ()) = tokio::join!(poll, write);
    let woke: ChangeBatch = res.unwrap().json().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the long poll did not wake"
    );
    assert_eq!(woke.changes.len(), 1);
    assert_eq!(woke.changes[0].id, "d2");
    assert_eq!(woke.next, woke.changes[0].version);
}

#[tokio::test]
async fn a_request_without_a_ticket_is_401_and_changes_nothing() {
    let (env, _ann, g) = ann_with_folder().await;
    let (t, f) = (g.ticket.ticket.as_str(), g.folder.id.as_str());
    let before = env.entries(t, f).await;
    let res = env
        .req(Method::PUT, &format!("/folders/{f}/entries/x"), None)
        .header(IF_NONE_MATCH, "*")
        .json(&dir("x", None))
        .send()
        .await
        .unwrap();
    assert_eq!(
        api_error(res).await,
        (StatusCode::UNAUTHORIZED, ErrorCode::NoTicket)
    );
    assert_eq!(env.entries(t, f).await.entries, before.entries);
}

#[tokio::test]
async fn expired_forged_and_unknown_kid_tickets_are_401_and_change_nothing() {
    let (env, ann, g) = ann_with_folder().await;
    let (t, f) = (g.ticket.ticket.as_str(), g.folder.id.as_str());
    let before = env.entries(t, f).await;
    let now = now_secs();

    let expired = env
        .cloud_signer(None)
        .sign(&access_claims(&ann, f, now - 1000, now - 100));
    let (input, sig) = t.rsplit_once('.').unwrap();
    let mut sig = sig.as_bytes().to_vec();
    sig[5] = if sig[5] == b'A' { b'B' } else { b'A' };
    let flipped = format!("{input}.{}", String::from_utf8(sig).unwrap());
    let other_kid = env
        .cloud_signer(Some("0123456789abcdef"))
        .sign(&access_claims(&ann, f, now, now + 60));

    for (ticket, code) in [
        (expired.as_str(), ErrorCode::TicketExpired),
        (flipped.as_str(), ErrorCode::BadSignature),
        (other_kid.as_str(), ErrorCode::UnknownKid),
        ("not-a-ticket", ErrorCode::MalformedTicket),
    ] {
        let res = env.create(ticket, f, "x", &dir("x", None)).await;
        assert_eq!(
            api_error(res).await,
            (StatusCode::UNAUTHORIZED, code),
            "{code}"
        );
    }
    assert_eq!(env.entries(t, f).await.entries, before.entries);
    // The cloud's own key under its own kid does work: the refusals were for the faults.
    let good = env
        .cloud_signer(None)
        .sign(&access_claims(&ann, f, now, now + 60));
    assert_eq!(
        env.create(&good, f, "x", &dir("x", None)).await.status(),
        StatusCode::CREATED
    );
}

/// A key added by `rotate-keys` (as another cloud process would see it) is published and
/// accepted at once, and tickets of the old key keep working until they expire.
#[tokio::test]
async fn a_rotated_key_is_published_and_accepted_and_the_old_keys_tickets_still_work() {
    let (env, ann, g) = ann_with_folder().await;
    let (old_ticket, f) = (g.ticket.ticket.as_str(), g.folder.id.as_str());
    let jwks = |env: &Env| {
        let req = env.req(Method::GET, "/.well-known/jwks.json", None);
        async move { req.send().await.unwrap().json::<Jwks>().await.unwrap() }
    };
    let old_kid = jwks(&env).await.keys[0].kid.clone();

    let new_kid = cloud::rotate_keys(&env.engines, Duration::ZERO)
        .await
        .unwrap();
    assert_ne!(new_kid, old_kid);
    // Signed with the new key before this process has read it: it reads the keys again.
    let now = now_secs();
    let fresh = env
        .cloud_signer(None)
        .sign(&access_claims(&ann, f, now, now + 60));
    assert_eq!(
        env.create(&fresh, f, "new", &dir("new", None))
            .await
            .status(),
        StatusCode::CREATED
    );
    let kids: Vec<String> = jwks(&env).await.keys.into_iter().map(|k| k.kid).collect();
    assert_eq!(kids, [old_kid, new_kid.clone()], "both are published");
    assert_eq!(
        env.create(old_ticket, f, "old", &dir("old", None))
            .await
            .status(),
        StatusCode::CREATED,
        "the old key's ticket still works"
    );
    // What the cloud signs now carries the new key id.
    let renewed = env.login("ann").await;
    let header = renewed.identity.split('.').next().unwrap();
    let header: serde_json::Value = serde_json::from_slice(
        &base64::engine::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], new_kid.as_str());
}

/// A process given only the engines (a data directory of its own, as on another machine)
/// serves with the CA devices pinned, which it writes into its data directory; a data
/// directory holding another CA is refused and left as it was.
#[tokio::test]
async fn another_process_serves_with_the_pinned_ca_and_refuses_a_directory_with_another() {
    let env = env().await;
    let dir = tempfile::tempdir().unwrap();
    let start = |data: std::path::PathBuf| {
        let mut cfg = CloudConfig::new(data, "127.0.0.1:0".parse().unwrap());
        cfg.engines = env.engines.clone();
        cfg.relay_listen = None;
        cloud::start(cfg)
    };
    let own = dir.path().join("own");
    let other = start(own.clone()).await.unwrap();
    // The client pins the first process's CA.
    let res = env
        .http
        .get(format!(
            "https://127.0.0.1:{}/.well-known/jwks.json",
            other.addr.port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let first_ca = std::fs::read_to_string(env.data().join("ca.pem")).unwrap();
    assert_eq!(
        std::fs::read_to_string(own.join("ca.pem")).unwrap(),
        first_ca
    );
    other.shutdown().await.unwrap();

    let stranger = dir.path().join("stranger");
    std::fs::create_dir(&stranger).unwrap();
    let foreign = meshfs::net::tls::Ca::generate(meshfs::net::tls::CLOUD_CA_NAME).unwrap();
    foreign.keep_in(&stranger).unwrap();
    let refused = start(stranger.clone()).await.err().expect("refused");
    assert!(refused.to_string().contains("is not the CA"), "{refused}");
    assert_eq!(
        std::fs::read_to_string(stranger.join("ca.pem")).unwrap(),
        foreign.cert_pem
    );
}

/// Listing folders again signs nothing new while nothing changed: the same access tickets
/// come back; a membership change (a new epoch) makes a new one.
#[tokio::test]
async fn a_folder_listing_hands_out_the_same_tickets_until_the_membership_changes() {
    let (env, ann, g) = ann_with_folder().await;
    let list = || async {
        let grants = env.folders(&ann).await;
        grants
            .into_iter()
            .map(|g| g.ticket.ticket)
            .collect::<Vec<_>>()
    };
    let first = list().await;
    assert_eq!(first[..], [g.ticket.ticket], "the folder's creation ticket");
    assert_eq!(list().await, first);
    cloud::share_folder(&env.engines, &g.folder.id, "bob", Role::Reader)
        .await
        .unwrap();
    cloud::share_folder(&env.engines, &g.folder.id, "bob", Role::Writer)
        .await
        .unwrap();
    let after = list().await;
    assert_ne!(after, first, "a new epoch, a new ticket");
    assert_eq!(list().await, after);
}

/// A user owns at most the cloud's `max_folders`: the next is 409 `too_many_folders` and
/// nothing is made, while another user still may create theirs.
#[tokio::test]
async fn past_the_folders_a_user_may_own_a_new_one_is_refused() {
    let env = env_with(|cfg| cfg.max_folders = 2).await;
    let ann = env.login("ann").await;
    for name in ["one", "two"] {
        env.new_folder(&ann, name, false).await;
    }
    let res = env.create_folder(&ann, "three", false).await;
    assert_eq!(
        api_error(res).await,
        (StatusCode::CONFLICT, ErrorCode::TooManyFolders)
    );
    assert_eq!(env.folders(&ann).await.len(), 2);
    let bob = env.login("bob").await;
    env.new_folder(&bob, "one", false).await;
}

#[tokio::test]
async fn another_users_tickets_are_403_on_this_users_folder() {
    let (env, _ann, g) = ann_with_folder().await;
    let (t, f) = (g.ticket.ticket.as_str(), g.folder.id.as_str());
    let before = env.entries(t, f).await;
    let bob = env.login("bob").await;

    let res = env
        .access(&bob, &format!("/folders/{f}"), &[Right::Read, Right::Write])
        .await;
    assert_eq!(
        api_error(res).await,
        (StatusCode::FORBIDDEN, ErrorCode::Forbidden)
    );
    let bobs = env.new_folder(&bob, "docs", false).await;
    let res = env
        .create(&bobs.ticket.ticket, f, "x", &dir("x", None))
        .await;
    assert_eq!(
        api_error(res).await,
        (StatusCode::FORBIDDEN, ErrorCode::Forbidden)
    );
    let res = env
        .req(Method::GET, "/users/ann/folders", Some(&bob.identity))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = env
        .req(Method::GET, "/users/ann/devices", Some(&bob.identity))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(env.entries(t, f).await.entries, before.entries);
}

#[tokio::test]
async fn a_read_only_ticket_cannot_write_entries_or_blocks() {
    let (env, ann, g) = ann_with_folder().await;
    let (t, f) = (g.ticket.ticket.as_str(), g.folder.id.as_str());
    let before = env.entries(t, f).await;
    let res = env
        .access(&ann, &format!("/folders/{f}"), &[Right::Read])
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let ro: TicketResponse = res.json().await.unwrap();

    assert_eq!(env.entries(&ro.ticket, f).await.entries, before.entries);
    let res = env.create(&ro.ticket, f, "x", &dir("x", None)).await;
    assert_eq!(
        api_error(res).await,
        (StatusCode::FORBIDDEN, ErrorCode::Forbidden)
    );
    let h = BlockHash::of(b"data").to_hex();
    let res = env.put_block(&ro.ticket, f, &h, b"data").await;
    assert_eq!(
        api_error(res).await,
        (StatusCode::FORBIDDEN, ErrorCode::Forbidden)
    );
    assert_eq!(env.entries(t, f).await.entries, before.entries);
    assert_eq!(env.block_status(t, f, &h).await, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_shared_reader_gets_only_read_rights() {
    let (env, _ann, g) = ann_with_folder().await;
    let f = g.folder.id.as_str();
    let bob = env.login("bob").await;
    cloud::share_folder(&env.engines, f, "bob", Role::Reader)
        .await
        .unwrap();

    let grants: Vec<FolderGrant> = env
        .req(Method::GET, "/users/bob/folders", Some(&bob.identity))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].rights, vec![Right::Read]);
    assert_eq!(
        env.entries(&grants[0].ticket.ticket, f).await.entries.len(),
        1
    );
    let res = env
        .access(&bob, &format!("/folders/{f}"), &[Right::Write])
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = env
        .create(&grants[0].ticket.ticket, f, "x", &dir("x", None))
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}

/// A key that a revoked device was claimed with claims no device again (a copy of a lost
/// laptop's key stays useless), whatever PEM spelling it comes in; a new key does.
#[tokio::test]
async fn a_revoked_devices_key_claims_no_device_again() {
    let env = env().await;
    let ann = env.login("ann").await;
    let lost = env.login_key("ann", &KEY_B).await;
    let path = format!("/users/ann/devices/{}", lost.id);
    let res = env.req(Method::DELETE, &path, Some(&ann.identity)).send();
    assert_eq!(res.await.unwrap().status(), StatusCode::OK);
    let res = env.login_with("ann", "ann-password", &KEY_B).await;
    assert_eq!(
        api_error(res).await,
        (StatusCode::CONFLICT, ErrorCode::BadKey)
    );
    let mut body = env.claim("ann", "ann-password", &KEY_B).await;
    body.device_key = body.device_key.replace('\n', "\r\n");
    let res = env.req(Method::POST, "/login", None).json(&body);
    assert_eq!(
        api_error(res.send().await.unwrap()).await,
        (StatusCode::CONFLICT, ErrorCode::BadKey),
        "the same key in CRLF lines"
    );
    let res = env
        .login_with("ann", "ann-password", &keys::generate())
        .await;
    assert_eq!(res.status(), StatusCode::OK);
}

/// A claim must prove that the device holds the private half of the key it names: a proof
/// signed by another key, over another user or device name, over a challenge the cloud
/// did not sign or one gone stale, or none at all, is 403 `bad_proof` and claims nothing.
#[tokio::test]
async fn a_claim_must_sign_a_fresh_challenge_with_its_own_key() {
    let env = env().await;
    let ann = env.login("ann").await;
    let good = env.claim("ann", "ann-password", &KEY_B).await;
    let sign = |p: &ClaimProof| Signer::new("device", KEY_B.clone()).sign(p);
    let proof_of = |b: &LoginRequest| ClaimProof {
        aud: AUDIENCE_CLAIM.into(),
        challenge: b.challenge.clone(),
        user: b.user.clone(),
        device_name: b.device_name.clone(),
    };
    let stale = env.cloud_signer(None).sign(&ChallengeClaims {
        iss: ISSUER.into(),
        aud: AUDIENCE_CLAIM.into(),
        exp: now_secs() - 1,
        nonce: "n".into(),
    });
    let forged = Signer::new("x", KEY_A.clone()).sign(&ChallengeClaims {
        iss: ISSUER.into(),
        aud: AUDIENCE_CLAIM.into(),
        exp: now_secs() + 60,
        nonce: "n".into(),
    });
    let cases: Vec<(&str, LoginRequest)> = vec![
        (
            "signed by another key",
            LoginRequest {
                proof: Signer::new("device", KEY_A.clone()).sign(&proof_of(&good)),
                ..good.clone()
            },
        ),
        (
            "for another device name",
            LoginRequest {
                proof: sign(&ClaimProof {
                    device_name: "phone".into(),
                    ..proof_of(&good)
                }),
                ..good.clone()
            },
        ),
        ("a stale challenge", {
            let b = LoginRequest {
                challenge: stale,
                ..good.clone()
            };
            LoginRequest {
                proof: sign(&proof_of(&b)),
                ..b
            }
        }),
        ("a challenge the cloud never signed", {
            let b = LoginRequest {
                challenge: forged,
                ..good.clone()
            };
            LoginRequest {
                proof: sign(&proof_of(&b)),
                ..b
            }
        }),
        (
            "no proof",
            LoginRequest {
                proof: String::new(),
                ..good.clone()
            },
        ),
    ];
    for (why, body) in cases {
        let res = env.req(Method::POST, "/login", None).json(&body);
        assert_eq!(
            api_error(res.send().await.unwrap()).await,
            (StatusCode::FORBIDDEN, ErrorCode::BadProof),
            "{why}"
        );
    }
    let devices = env.req(Method::GET, "/users/ann/devices", Some(&ann.identity));
    let devices: Vec<Device> = devices.send().await.unwrap().json().await.unwrap();
    assert_eq!(devices.len(), 1, "no refused claim made a device");
    let res = env.req(Method::POST, "/login", None).json(&good);
    assert_eq!(res.send().await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn a_revoked_devices_tickets_stop_working_at_once() {
    let (env, ann, g) = ann_with_folder().await;
    let (t, f) = (g.ticket.ticket.as_str(), g.folder.id.as_str());
    let second = env.login("ann").await;
    let res = env
        .access(
            &second,
            &format!("/folders/{f}"),
            &[Right::Read, Right::Write],
        )
        .await;
    let access: TicketResponse = res.json().await.unwrap();
    // Used once, so the server holds it as verified in its cache.
    let before = env.entries(&access.ticket, f).await;

    let res = env
        .req(
            Method::DELETE,
            &format!("/users/ann/devices/{}", second.id),
            Some(&ann.identity),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    let res = env.create(&access.ticket, f, "x", &dir("x", None)).await;
    assert_eq!(
        api_error(res).await,
        (StatusCode::UNAUTHORIZED, ErrorCode::DeviceRevoked)
    );
    let res = env
        .req(
            Method::GET,
            &format!("/folders/{f}/entries"),
            Some(&access.ticket),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        api_error(res).await,
        (StatusCode::UNAUTHORIZED, ErrorCode::DeviceRevoked)
    );
    let res = env
        .access(&second, &format!("/folders/{f}"), &[Right::Read])
        .await;
    assert_eq!(
        api_error(res).await,
        (StatusCode::UNAUTHORIZED, ErrorCode::DeviceRevoked)
    );
    let assertion = Signer::new(second.id.clone(), KEY_A.clone()).sign(&DeviceAssertion {
        iss: second.id.clone(),
        aud: AUDIENCE_RENEW.into(),
        iat: now_secs(),
        exp: now_secs() + 60,
        jti: "r1".into(),
    });
    let renew = RenewRequest {
        device_id: second.id.clone(),
        assertion,
    };
    let res = env
        .req(Method::POST, "/tickets/identity", None)
        .json(&renew)
        .send()
        .await
        .unwrap();
    assert_eq!(
        api_error(res).await,
        (StatusCode::UNAUTHORIZED, ErrorCode::DeviceRevoked)
    );

    assert_eq!(env.entries(t, f).await.entries, before.entries);
    let devices: Vec<meshfs::proto::Device> = env
        .req(Method::GET, "/users/ann/devices", Some(&ann.identity))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let revoked: Vec<bool> = devices.iter().map(|d| d.revoked).collect();
    assert_eq!(devices.len(), 2);
    assert_eq!(revoked.iter().filter(|r| **r).count(), 1);
}

#[tokio::test]
async fn an_identity_ticket_is_403_where_an_access_ticket_is_needed() {
    let (env, ann, g) = ann_with_folder().await;
    let (t, f) = (g.ticket.ticket.as_str(), g.folder.id.as_str());
    let before = env.entries(t, f).await;
    let res = env.create(&ann.identity, f, "x", &dir("x", None)).await;
    assert_eq!(
        api_error(res).await,
        (StatusCode::FORBIDDEN, ErrorCode::Forbidden)
    );
    let res = env
        .req(
            Method::GET,
            &format!("/folders/{f}/entries"),
            Some(&ann.identity),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let h = BlockHash::of(b"b").to_hex();
    assert_eq!(
        env.put_block(&ann.identity, f, &h, b"b").await.status(),
        StatusCode::FORBIDDEN
    );
    // And an access ticket cannot mint more tickets.
    let body = AccessRequest {
        resource: format!("/folders/{f}"),
        rights: vec![Right::Read],
    };
    let res = env
        .req(Method::POST, "/tickets/access", Some(t))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(env.entries(t, f).await.entries, before.entries);
}

#[tokio::test]
async fn renewal_needs_an_assertion_signed_by_the_devices_own_key() {
    let env = env().await;
    let ann = env.login("ann").await;
    let assertion = |key: &PrivateKey| {
        Signer::new(ann.id.clone(), key.clone()).sign(&DeviceAssertion {
            iss: ann.id.clone(),
            aud: AUDIENCE_RENEW.into(),
            iat: now_secs(),
            exp: now_secs() + 60,
            jti: uuid::Uuid::new_v4().to_string(),
        })
    };
    let renew = |a: String| {
        env.req(Method::POST, "/tickets/identity", None)
            .json(&RenewRequest {
                device_id: ann.id.clone(),
                assertion: a,
            })
            .send()
    };
    let res = renew(assertion(&KEY_B)).await.unwrap();
    assert_eq!(
        api_error(res).await,
        (StatusCode::UNAUTHORIZED, ErrorCode::BadAssertion)
    );

    let res = renew(assertion(&KEY_A)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let fresh: TicketResponse = res.json().await.unwrap();
    let res = env
        .req(Method::GET, "/users/ann", Some(&fresh.ticket))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

impl Env {
    async fn login_key(&self, user: &str, key: &PrivateKey) -> Dev {
        let res = self
            .login_with(user, &format!("{user}-password"), key)
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        let l: LoginResponse = res.json().await.unwrap();
        Dev {
            user: l.user,
            id: l.device_id,
            identity: l.identity.ticket,
        }
    }

    async fn peer_ticket(&self, dev: &Dev, other: &Dev, folder: Option<&str>) -> reqwest::Response {
        let body = PeerRequest {
            device: other.id.clone(),
            folder: folder.map(Into::into),
        };
        self.req(Method::POST, "/tickets/peer", Some(&dev.identity))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn map(&self, dev: &Dev, folder: &str) -> StatusCode {
        self.req(
            Method::PUT,
            &format!("/users/{}/devices/{}/folders/{folder}", dev.user, dev.id),
            Some(&dev.identity),
        )
        .send()
        .await
        .unwrap()
        .status()
    }

    async fn key_set(&self) -> KeySet {
        let jwks: Jwks = self
            .req(Method::GET, "/.well-known/jwks.json", None)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        KeySet::from_jwks(&jwks).unwrap()
    }
}

#[tokio::test]
async fn peer_tickets_name_both_devices_with_their_keys_only_for_pairs_the_cloud_allows() {
    let env = env().await;
    let ann1 = env.login_key("ann", &KEY_A).await;
    let ann2 = env.login_key("ann", &KEY_B).await;
    let bob = env.login_key("bob", &KEY_B).await;
    let keys = env.key_set().await;

    // One user's two devices: a peer ticket naming both, with the keys the cloud recorded.
    let res = env.peer_ticket(&ann1, &ann2, None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let t: TicketResponse = res.json().await.unwrap();
    let v = keys.check(&t.ticket, AUDIENCE_PEER, now_secs()).unwrap();
    let c = v.claims();
    assert_eq!(
        (c.kind, c.dev.as_str()),
        (TicketKind::Peer, ann1.id.as_str())
    );
    let grant = c.peer.as_ref().unwrap();
    assert_eq!(grant.folder, None);
    let other = grant.other(&ann1.id).unwrap();
    assert_eq!(other.id, ann2.id);
    assert_eq!(
        keys::parse_spki_b64(&other.key).unwrap(),
        KEY_B.to_public_key()
    );
    assert_eq!(
        keys::parse_spki_b64(&grant.device(&ann1.id).unwrap().key).unwrap(),
        KEY_A.to_public_key()
    );
    // A peer ticket is no ticket for the cloud.
    let res = env
        .req(Method::GET, "/users/ann/devices", Some(&t.ticket))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // Another user's device with no shared folder: refused, with or without a folder named.
    let res = env.peer_ticket(&ann1, &bob, None).await;
    assert_eq!(api_error(res).await.0, StatusCode::FORBIDDEN);
    let docs = env.new_folder(&ann1, "docs", false).await;
    let res = env.peer_ticket(&ann1, &bob, Some(&docs.folder.id)).await;
    assert_eq!(api_error(res).await.0, StatusCode::FORBIDDEN);

    // Shared, but mapped on one side only: still refused; mapped on both: a ticket naming
    // the folder.
    cloud::share_folder(&env.engines, &docs.folder.id, "bob", Role::Writer)
        .await
        .unwrap();
    assert_eq!(env.map(&ann1, &docs.folder.id).await, StatusCode::OK);
    let res = env.peer_ticket(&ann1, &bob, Some(&docs.folder.id)).await;
    assert_eq!(api_error(res).await.0, StatusCode::FORBIDDEN);
    assert_eq!(env.map(&bob, &docs.folder.id).await, StatusCode::OK);
    let res = env.peer_ticket(&bob, &ann1, Some(&docs.folder.id)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let t: TicketResponse = res.json().await.unwrap();
    let v = keys.check(&t.ticket, AUDIENCE_PEER, now_secs()).unwrap();
    assert_eq!(
        v.claims().peer.as_ref().unwrap().folder.as_deref(),
        Some(docs.folder.id.as_str())
    );

    // A revoked device gets none, and none names it.
    let res = env
        .req(
            Method::DELETE,
            &format!("/users/ann/devices/{}", ann2.id),
            Some(&ann1.identity),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = env.peer_ticket(&ann1, &ann2, None).await;
    assert_eq!(api_error(res).await.0, StatusCode::NOT_FOUND);
    let res = env.peer_ticket(&ann2, &ann1, None).await;
    assert_eq!(
        api_error(res).await,
        (StatusCode::UNAUTHORIZED, ErrorCode::DeviceRevoked)
    );
}

#[tokio::test]
async fn a_device_records_its_own_peer_addresses_and_no_one_elses() {
    let env = env().await;
    let ann1 = env.login_key("ann", &KEY_A).await;
    let ann2 = env.login_key("ann", &KEY_B).await;
    let put = |dev: &Dev, target: &Dev, addrs: Vec<String>| {
        env.req(
            Method::PUT,
            &format!("/users/ann/devices/{}/presence", target.id),
            Some(&dev.identity),
        )
        .json(&Presence { addrs })
        .send()
    };
    let res = put(&ann1, &ann1, vec!["192.0.2.7:4000".into()])
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let d: Device = res.json().await.unwrap();
    assert_eq!(d.addrs, vec!["192.0.2.7:4000".to_string()]);
    let res = put(&ann2, &ann1, vec!["10.0.0.1:1".into()]).await.unwrap();
    assert_eq!(api_error(res).await.0, StatusCode::FORBIDDEN);
    for bad in [
        "not an address",
        "10.0.0.1:0",
        "0.0.0.0:4000",
        "255.255.255.255:4000",
        "224.0.0.1:4000",
        "[::]:4000",
        "[ff02::1]:4000",
        // Loopback and link-local, here where the cloud does not allow them.
        "127.0.0.1:4000",
        "127.8.9.10:4000",
        "[::1]:4000",
        "[::ffff:127.0.0.1]:4000",
        "169.254.169.254:80",
        "[fe80::1]:4000",
    ] {
        let res = put(&ann1, &ann1, vec![bad.into()]).await.unwrap();
        assert_eq!(api_error(res).await.0, StatusCode::BAD_REQUEST, "{bad}");
    }
    let devices: Vec<Device> = env
        .req(Method::GET, "/users/ann/devices", Some(&ann2.identity))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let one = devices.iter().find(|d| d.id == ann1.id).unwrap();
    assert_eq!(one.addrs, vec!["192.0.2.7:4000".to_string()]);
    // An agent that stops withdraws its address with an empty list.
    let res = put(&ann1, &ann1, vec![]).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let d: Device = res.json().await.unwrap();
    assert!(d.addrs.is_empty());
}

/// A cloud whose devices all run on its machine accepts loopback peer addresses.
#[tokio::test]
async fn a_cloud_allowing_local_peers_records_a_loopback_address() {
    let env = env_with(|c| c.allow_local_peers = true).await;
    let ann = env.login("ann").await;
    let path = format!("/users/ann/devices/{}/presence", ann.id);
    let res = env
        .req(Method::PUT, &path, Some(&ann.identity))
        .json(&Presence {
            addrs: vec!["127.0.0.1:4000".into()],
        });
    let d: Device = res.send().await.unwrap().json().await.unwrap();
    assert_eq!(d.addrs, vec!["127.0.0.1:4000".to_string()]);
}

#[tokio::test]
async fn only_the_owner_switches_a_folder_to_device_only_and_then_its_blocks_are_refused() {
    let (env, _ann, g) = ann_with_folder().await;
    let bob = env.login("bob").await;
    cloud::share_folder(&env.engines, &g.folder.id, "bob", Role::Writer)
        .await
        .unwrap();
    let patch = |ticket: String| {
        env.req(
            Method::PATCH,
            &format!("/folders/{}", g.folder.id),
            Some(&ticket),
        )
        .json(&FolderPatch {
            device_only: Some(true),
        })
        .send()
    };
    let bobs = env
        .access(
            &bob,
            &format!("/folders/{}", g.folder.id),
            &[Right::Read, Right::Write],
        )
        .await;
    let bobs: TicketResponse = bobs.json().await.unwrap();
    let res = patch(bobs.ticket).await.unwrap();
    assert_eq!(api_error(res).await.0, StatusCode::FORBIDDEN);
    let res = patch(g.ticket.ticket.clone()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let f: Folder = res.json().await.unwrap();
    assert!(f.device_only);
    let data = b"after the switch";
    let res = env
        .put_block(
            &g.ticket.ticket,
            &g.folder.id,
            &BlockHash::of(data).to_hex(),
            data,
        )
        .await;
    assert_eq!(
        api_error(res).await,
        (StatusCode::FORBIDDEN, ErrorCode::DeviceOnly)
    );
}

/// 200 bad logins at once: the first few are 401, the rest 429 with a Retry-After, and
/// no more than a few passwords are checked at a time; an authorized request issued
/// meanwhile still answers, and past the bound even the right password waits.
#[tokio::test]
async fn a_flood_of_bad_logins_is_refused_and_the_cloud_still_answers() {
    let env = env().await;
    let ann = env.login("ann").await;
    let claims = futures::future::join_all((0..200).map(|i| {
        let user = if i % 2 == 0 { "ann" } else { "nobody" };
        env.claim(user, "not the password", &KEY_B)
    }))
    .await;
    let logins = claims
        .iter()
        .map(|body| env.req(Method::POST, "/login", None).json(body).send());
    let meanwhile = env.req(Method::GET, "/users/ann/folders", Some(&ann.identity));
    let (answers, folders) = tokio::join!(futures::future::join_all(logins), meanwhile.send());
    assert_eq!(folders.unwrap().status(), StatusCode::OK);
    let mut by_status = std::collections::BTreeMap::new();
    for res in answers {
        let res = res.unwrap();
        let status = res.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let retry: u64 = res.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&retry), "{retry}");
            assert_eq!(api_error(res).await.1, ErrorCode::RateLimited);
        }
        *by_status.entry(status.as_u16()).or_insert(0) += 1;
    }
    let refused = by_status.get(&429).copied().unwrap_or(0);
    let checked = by_status.get(&401).copied().unwrap_or(0);
    assert_eq!(refused + checked, 200, "{by_status:?}");
    assert!(
        refused >= 150,
        "most are refused before a check: {by_status:?}"
    );
    let res = env.login_with("ann", "ann-password", &KEY_B).await;
    assert_eq!(
        res.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "this address waits"
    );
}

#[tokio::test]
async fn the_metrics_count_requests_by_route_tickets_and_logins_refused() {
    let env = env_with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let ann = env.login("ann").await;
    env.folders(&ann).await;
    let res = env.login_with("ann", "wrong", &KEY_B).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let addr = env.cloud.metrics_addr.expect("metrics are served");
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"meshfs_cloud_requests_total{route="/login",method="POST",status="200"} 1"#,
        r#"meshfs_cloud_requests_total{route="/login",method="POST",status="401"} 1"#,
        r#"meshfs_cloud_requests_total{route="/users/{user}/folders",method="GET",status="200"} 1"#,
        r#"meshfs_cloud_request_duration_seconds_count{route="/login",method="POST"} 2"#,
        r#"meshfs_cloud_tickets_signed_total{kind="identity"} 1"#,
        "meshfs_cloud_logins_refused_total 1",
        "meshfs_cloud_feed_waiters 0",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
}
