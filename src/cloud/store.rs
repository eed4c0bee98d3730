//! The cloud's metadata store: users, devices, folders, members, entries, blocks and the
//! global change sequence, in SQLite or PostgreSQL through sqlx's `Any` driver. The only
//! file (with its submodules) that names sqlx.
//!
//! One SQL text serves both engines (TEXT/BIGINT, booleans as 0/1, `$N` parameters,
//! `ON CONFLICT`, a partial unique index, sums cast to BIGINT). Writers that change entries
//! start their transaction by bumping the one sequence row: in SQLite that takes the write
//! lock before anything is read (so `busy_timeout` applies and no snapshot goes stale), in
//! PostgreSQL it row-locks the sequence, so versions are handed out and committed in one
//! order either way.

use super::engines::Database;
use crate::proto::{BlockHash, BlockRef, Device, Entry, EntryKind, Folder, Role};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Executor, Row, Transaction};

mod ca;
mod history;
mod keys;
mod logins;
mod members;
mod relays;
pub use history::{Collected, Retention};
pub use keys::StoredKey;
pub use members::Membership;

/// The schema this code writes; stored in `meta` so a later version can tell.
const SCHEMA_VERSION: i64 = 9;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS meta (
        id BIGINT PRIMARY KEY,
        schema_version BIGINT NOT NULL,
        seq BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS users (
        name TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        quota BIGINT NOT NULL,
        stored_bytes BIGINT NOT NULL,
        created_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS devices (
        id TEXT PRIMARY KEY,
        user_name TEXT NOT NULL REFERENCES users(name),
        name TEXT NOT NULL,
        public_key TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        last_seen_ms BIGINT NOT NULL,
        revoked BIGINT NOT NULL,
        addrs TEXT NOT NULL DEFAULT '[]')",
    "CREATE INDEX IF NOT EXISTS devices_user ON devices (user_name)",
    "CREATE TABLE IF NOT EXISTS folders (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        owner TEXT NOT NULL REFERENCES users(name),
        device_only BIGINT NOT NULL,
        created_ms BIGINT NOT NULL,
        epoch BIGINT NOT NULL DEFAULT 0,
        UNIQUE (owner, name))",
    "CREATE TABLE IF NOT EXISTS members (
        folder TEXT NOT NULL REFERENCES folders(id),
        user_name TEXT NOT NULL REFERENCES users(name),
        role TEXT NOT NULL,
        max_bytes BIGINT,
        PRIMARY KEY (folder, user_name))",
    "CREATE INDEX IF NOT EXISTS members_user ON members (user_name)",
    // Invitations waiting for their invitee (see `store/members.rs`).
    "CREATE TABLE IF NOT EXISTS invitations (
        folder TEXT NOT NULL REFERENCES folders(id),
        user_name TEXT NOT NULL REFERENCES users(name),
        role TEXT NOT NULL,
        max_bytes BIGINT,
        invited_ms BIGINT NOT NULL,
        PRIMARY KEY (folder, user_name))",
    "CREATE INDEX IF NOT EXISTS invitations_user ON invitations (user_name)",
    "CREATE TABLE IF NOT EXISTS entries (
        folder TEXT NOT NULL REFERENCES folders(id),
        id TEXT NOT NULL,
        parent TEXT NOT NULL,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        mode BIGINT NOT NULL,
        size BIGINT NOT NULL,
        mtime_ns BIGINT NOT NULL,
        version BIGINT NOT NULL,
        deleted BIGINT NOT NULL,
        manifest TEXT NOT NULL,
        target TEXT,
        author TEXT NOT NULL,
        in_cloud BIGINT NOT NULL DEFAULT 1,
        holders TEXT NOT NULL DEFAULT '[]',
        changed_ms BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (folder, id))",
    // One live entry per name in a directory; the folder root is parent ''.
    "CREATE UNIQUE INDEX IF NOT EXISTS entries_live_name
        ON entries (folder, parent, name) WHERE deleted = 0",
    "CREATE INDEX IF NOT EXISTS entries_feed ON entries (folder, version)",
    "CREATE TABLE IF NOT EXISTS blocks (
        folder TEXT NOT NULL REFERENCES folders(id),
        hash TEXT NOT NULL,
        len BIGINT NOT NULL,
        stored_ms BIGINT NOT NULL DEFAULT 0,
        charged_to TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (folder, hash))",
    // What each member stored in a folder (their share of the owner's quota).
    "CREATE INDEX IF NOT EXISTS blocks_charged ON blocks (folder, charged_to)",
    // Earlier contents of files, kept for history (see `store/history.rs`).
    "CREATE TABLE IF NOT EXISTS versions (
        folder TEXT NOT NULL REFERENCES folders(id),
        id TEXT NOT NULL,
        version BIGINT NOT NULL,
        size BIGINT NOT NULL,
        mtime_ns BIGINT NOT NULL,
        manifest TEXT NOT NULL,
        author TEXT NOT NULL,
        saved_ms BIGINT NOT NULL,
        PRIMARY KEY (folder, id, version))",
    // Which Mesh Folders each device has mapped (peer tickets between users need one).
    "CREATE TABLE IF NOT EXISTS mapped (
        device TEXT NOT NULL REFERENCES devices(id),
        folder TEXT NOT NULL REFERENCES folders(id),
        PRIMARY KEY (device, folder))",
    "CREATE INDEX IF NOT EXISTS mapped_folder ON mapped (folder)",
    // The highest record of each device journal whose step was applied (`Steps::journal`).
    "CREATE TABLE IF NOT EXISTS journals (
        device TEXT NOT NULL REFERENCES devices(id),
        journal TEXT NOT NULL,
        applied BIGINT NOT NULL,
        PRIMARY KEY (device, journal))",
    // The cloud's ticket-signing keys, shared by its processes (see `store/keys.rs`).
    "CREATE TABLE IF NOT EXISTS signing_keys (
        kid TEXT PRIMARY KEY,
        private_key TEXT NOT NULL,
        signs_from_ms BIGINT NOT NULL)",
    // Relays running on their own, which devices are told of (see `store/relays.rs`).
    "CREATE TABLE IF NOT EXISTS relays (
        addr TEXT PRIMARY KEY,
        ca TEXT NOT NULL,
        added_ms BIGINT NOT NULL)",
    // Failed logins within the throttle's window, by user and by address, counted by every
    // process (see `store/logins.rs`).
    "CREATE TABLE IF NOT EXISTS login_failures (
        who TEXT NOT NULL,
        at_ms BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS login_failures_who ON login_failures (who, at_ms)",
    "CREATE INDEX IF NOT EXISTS login_failures_at ON login_failures (at_ms)",
    // The cloud's CA, one row, shared by its processes (see `store/ca.rs`).
    "CREATE TABLE IF NOT EXISTS cloud_ca (
        id BIGINT PRIMARY KEY,
        cert TEXT NOT NULL,
        private_key TEXT NOT NULL)",
    "INSERT INTO meta (id, schema_version, seq) VALUES (1, 9, 0) ON CONFLICT (id) DO NOTHING",
];

/// What takes a store of schema version 1 to version 2 (peer addresses, mapped folders,
/// content held by devices), run before [`SCHEMA`].
const MIGRATE_1_TO_2: &[&str] = &[
    "ALTER TABLE devices ADD COLUMN addrs TEXT NOT NULL DEFAULT '[]'",
    "ALTER TABLE entries ADD COLUMN in_cloud BIGINT NOT NULL DEFAULT 1",
    "ALTER TABLE entries ADD COLUMN holders TEXT NOT NULL DEFAULT '[]'",
    "UPDATE meta SET schema_version = 2 WHERE id = 1",
];

/// What takes a store of schema version 2 to version 3: the `journals` table, which
/// [`SCHEMA`] (run after) creates.
const MIGRATE_2_TO_3: &[&str] = &["UPDATE meta SET schema_version = 3 WHERE id = 1"];

/// What takes a store of schema version 3 to version 4: when each block was stored and each
/// entry last changed (for collecting and for the trash), and the `versions` table, which
/// [`SCHEMA`] (run after) creates.
const MIGRATE_3_TO_4: &[&str] = &[
    "ALTER TABLE blocks ADD COLUMN stored_ms BIGINT NOT NULL DEFAULT 0",
    "ALTER TABLE entries ADD COLUMN changed_ms BIGINT NOT NULL DEFAULT 0",
    "UPDATE meta SET schema_version = 4 WHERE id = 1",
];

/// What takes a store of schema version 4 to version 5: membership epochs, members' shares
/// of the owner's quota, who stored each block, and the `invitations` table, which
/// [`SCHEMA`] (run after) creates.
const MIGRATE_4_TO_5: &[&str] = &[
    "ALTER TABLE folders ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0",
    "ALTER TABLE members ADD COLUMN max_bytes BIGINT",
    "ALTER TABLE blocks ADD COLUMN charged_to TEXT NOT NULL DEFAULT ''",
    "UPDATE meta SET schema_version = 5 WHERE id = 1",
];

/// What takes a store of schema version 5 to version 6: the `signing_keys` table, which
/// [`SCHEMA`] (run after) creates.
const MIGRATE_5_TO_6: &[&str] = &["UPDATE meta SET schema_version = 6 WHERE id = 1"];

/// What takes a store of schema version 6 to version 7: the `relays` table, which
/// [`SCHEMA`] (run after) creates.
const MIGRATE_6_TO_7: &[&str] = &["UPDATE meta SET schema_version = 7 WHERE id = 1"];

/// What takes a store of schema version 7 to version 8: the `login_failures` table, which
/// [`SCHEMA`] (run after) creates.
const MIGRATE_7_TO_8: &[&str] = &["UPDATE meta SET schema_version = 8 WHERE id = 1"];

/// What takes a store of schema version 8 to version 9: the `cloud_ca` table, which
/// [`SCHEMA`] (run after) creates.
const MIGRATE_8_TO_9: &[&str] = &["UPDATE meta SET schema_version = 9 WHERE id = 1"];

/// The migrations in order: the first takes version 1 to 2.
const MIGRATIONS: &[&[&str]] = &[
    MIGRATE_1_TO_2,
    MIGRATE_2_TO_3,
    MIGRATE_3_TO_4,
    MIGRATE_4_TO_5,
    MIGRATE_5_TO_6,
    MIGRATE_6_TO_7,
    MIGRATE_7_TO_8,
    MIGRATE_8_TO_9,
];

const ENTRY_COLUMNS: &str = "folder, id, parent, name, kind, mode, size, mtime_ns, version, deleted, manifest, target, author, in_cloud, holders, changed_ms";

/// A fault of the database or of what it holds.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {url}")]
    Open {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("database query")]
    Db(#[from] sqlx::Error),
    #[error("the database has schema version {found}; this meshfs knows {SCHEMA_VERSION}")]
    Schema { found: i64 },
    #[error("stored value out of range: {0}")]
    Corrupt(&'static str),
}

/// How recording a block went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockRecord {
    Stored,
    AlreadyStored,
    OverQuota,
    /// The member who stored it has used their share of the owner's quota.
    OverShare,
}

/// Whom a new block is charged to: the folder's owner, within the share of the owner's
/// quota that the member who stored it may use (`None`: no limit of its own).
#[derive(Clone, Copy, Debug)]
pub struct Charge<'a> {
    pub owner: &'a str,
    pub member: &'a str,
    pub share: Option<u64>,
}

/// A user's stored bytes and quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserUsage {
    pub stored: u64,
    pub quota: u64,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    engine: Engine,
    /// What it was opened with (PostgreSQL's listener connects on its own).
    url: String,
    /// The PostgreSQL channel on which the cloud's processes announce that the feed moved:
    /// `meshfs_feed.SCHEMA`, so that clouds in other schemas of the database hear nothing.
    channel: String,
}

/// What the other cloud processes on a PostgreSQL database announce.
pub struct Announcements(sqlx::postgres::PgListener);

impl Announcements {
    /// The next version announced (0: a folder's members changed); `None` when some may
    /// have been missed, the connection having been lost and made again.
    pub async fn next(&mut self) -> Result<Option<u64>, StoreError> {
        let heard = self.0.try_recv().await?;
        Ok(heard.map(|n| n.payload().parse().unwrap_or(0)))
    }
}

/// The database engine under a [`Store`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    fn max_connections(self) -> u32 {
        match self {
            // One writer at a time anyway; readers share the WAL.
            Engine::Sqlite => 8,
            Engine::Postgres => 16,
        }
    }
}

/// What every SQLite connection is set to: WAL with synchronous commits, foreign keys, and
/// a writer that waits its turn rather than failing.
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
    PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000";

/// The advisory lock PostgreSQL processes take while creating or migrating the schema.
const SCHEMA_LOCK: i64 = 0x6d65_7368_6673;

fn to_i64(v: u64, what: &'static str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(what))
}

fn to_u64(v: i64, what: &'static str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(what))
}

fn kind_str(k: EntryKind) -> &'static str {
    match k {
        EntryKind::File => "file",
        EntryKind::Dir => "dir",
        EntryKind::Symlink => "symlink",
    }
}

fn parse_kind(s: &str) -> Result<EntryKind, StoreError> {
    match s {
        "file" => Ok(EntryKind::File),
        "dir" => Ok(EntryKind::Dir),
        "symlink" => Ok(EntryKind::Symlink),
        _ => Err(StoreError::Corrupt("entry kind")),
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// The outcome of an `INSERT` of a row with a unique key: whether it went in (`false` when
/// the key was taken).
fn inserted<T>(res: Result<T, sqlx::Error>) -> Result<bool, StoreError> {
    match res {
        Ok(_) => Ok(true),
        Err(e) if is_unique_violation(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn entry_from(row: &AnyRow) -> Result<Entry, StoreError> {
    let parent: String = row.try_get("parent")?;
    let manifest: String = row.try_get("manifest")?;
    let mode: i64 = row.try_get("mode")?;
    Ok(Entry {
        folder: row.try_get("folder")?,
        id: row.try_get("id")?,
        parent: (!parent.is_empty()).then_some(parent),
        name: row.try_get("name")?,
        kind: parse_kind(&row.try_get::<String, _>("kind")?)?,
        mode: u32::try_from(mode).map_err(|_| StoreError::Corrupt("entry mode"))?,
        size: to_u64(row.try_get("size")?, "entry size")?,
        mtime_ns: row.try_get("mtime_ns")?,
        version: to_u64(row.try_get("version")?, "entry version")?,
        deleted: row.try_get::<i64, _>("deleted")? != 0,
        manifest: serde_json::from_str::<Vec<BlockRef>>(&manifest)
            .map_err(|_| StoreError::Corrupt("entry manifest"))?,
        target: row.try_get("target")?,
        author: row.try_get("author")?,
        in_cloud: row.try_get::<i64, _>("in_cloud")? != 0,
        holders: serde_json::from_str(&row.try_get::<String, _>("holders")?)
            .map_err(|_| StoreError::Corrupt("entry holders"))?,
    })
}

fn device_from(row: &AnyRow) -> Result<Device, StoreError> {
    Ok(Device {
        id: row.try_get("id")?,
        user: row.try_get("user_name")?,
        name: row.try_get("name")?,
        public_key: row.try_get("public_key")?,
        created_ms: row.try_get("created_ms")?,
        last_seen_ms: row.try_get("last_seen_ms")?,
        revoked: row.try_get::<i64, _>("revoked")? != 0,
        addrs: serde_json::from_str(&row.try_get::<String, _>("addrs")?)
            .map_err(|_| StoreError::Corrupt("device addresses"))?,
        folders: Vec::new(),
    })
}

/// The names a row gives a folder's columns.
struct FolderColumns {
    id: &'static str,
    name: &'static str,
    owner: &'static str,
    device_only: &'static str,
    created_ms: &'static str,
    epoch: &'static str,
}

/// A folder's columns as `folders` names them.
const FOLDER_COLUMNS: FolderColumns = FolderColumns {
    id: "id",
    name: "name",
    owner: "owner",
    device_only: "device_only",
    created_ms: "created_ms",
    epoch: "epoch",
};

fn folder_from(row: &AnyRow) -> Result<Folder, StoreError> {
    folder_named(row, &FOLDER_COLUMNS)
}

/// A folder from a row that names its columns `cols`: renamed in a row that also holds an
/// entry's columns (see `Store::caller_record`).
fn folder_named(row: &AnyRow, cols: &FolderColumns) -> Result<Folder, StoreError> {
    Ok(Folder {
        id: row.try_get(cols.id)?,
        name: row.try_get(cols.name)?,
        owner: row.try_get(cols.owner)?,
        device_only: row.try_get::<i64, _>(cols.device_only)? != 0,
        created_ms: row.try_get(cols.created_ms)?,
        epoch: to_u64(row.try_get(cols.epoch)?, "membership epoch")?,
    })
}

async fn current_seq(conn: &mut sqlx::AnyConnection) -> Result<u64, StoreError> {
    let row = sqlx::query("SELECT seq FROM meta WHERE id = 1")
        .fetch_one(conn)
        .await?;
    to_u64(row.try_get("seq")?, "sequence")
}

impl Store {
    /// Opens the store in `db` (an SQLite file is made if missing), and creates or
    /// migrates its schema. Processes that open one PostgreSQL database at once take turns
    /// at this.
    pub async fn open(db: &Database) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let engine = match db {
            Database::Sqlite(_) => Engine::Sqlite,
            Database::Postgres(_) => Engine::Postgres,
        };
        let url = db.url();
        let opened = |source| StoreError::Open {
            url: db.to_string(),
            source,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(engine.max_connections())
            // sqlx pings a connection when it goes back to the pool; a ping before every
            // use as well would be a third round trip for a one-query request. A
            // connection that broke while idle fails its next query, and goes.
            .test_before_acquire(false)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if engine == Engine::Sqlite {
                        conn.execute(SQLITE_PRAGMAS).await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(opened)?;
        let mut store = Self {
            pool,
            engine,
            url,
            channel: String::new(),
        };
        store.create_or_migrate().await?;
        if engine == Engine::Postgres {
            let row = sqlx::query("SELECT CAST(current_schema() AS TEXT) AS s")
                .fetch_one(&store.pool)
                .await?;
            let schema: String = row.try_get("s")?;
            store.channel = format!("meshfs_feed.{schema}");
        }
        Ok(store)
    }

    async fn create_or_migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let meta_exists = match self.engine {
            Engine::Sqlite => {
                "SELECT 1 AS one FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
            }
            Engine::Postgres => {
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(SCHEMA_LOCK)
                    .execute(&mut *tx)
                    .await?;
                "SELECT 1 AS one FROM information_schema.tables
                 WHERE table_schema = current_schema() AND table_name = 'meta'"
            }
        };
        if sqlx::query(meta_exists)
            .fetch_optional(&mut *tx)
            .await?
            .is_some()
        {
            let row = sqlx::query("SELECT schema_version FROM meta WHERE id = 1")
                .fetch_one(&mut *tx)
                .await?;
            let found: i64 = row.try_get("schema_version")?;
            // A version this meshfs does not know is refused after the schema below.
            let from = usize::try_from(found - 1).unwrap_or(usize::MAX);
            let migrations = MIGRATIONS.get(from..).unwrap_or_default();
            for stmt in migrations.iter().copied().flatten() {
                sqlx::query(*stmt).execute(&mut *tx).await?;
            }
        }
        for stmt in SCHEMA {
            sqlx::query(*stmt).execute(&mut *tx).await?;
        }
        let row = sqlx::query("SELECT schema_version FROM meta WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let found: i64 = row.try_get("schema_version")?;
        if found != SCHEMA_VERSION {
            return Err(StoreError::Schema { found });
        }
        tx.commit().await?;
        Ok(())
    }

    /// Tells the other cloud processes on this database that the feed moved to `version`
    /// (0: a folder's members changed). SQLite has only one cloud process.
    pub async fn announce(&self, version: u64) -> Result<(), StoreError> {
        if self.engine == Engine::Postgres {
            let channel = self.channel.replace('"', "\"\"");
            let notify = format!("NOTIFY \"{channel}\", '{version}'");
            sqlx::raw_sql(sqlx::AssertSqlSafe(notify))
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// What the other cloud processes announce (`None` on SQLite).
    pub async fn announcements(&self) -> Result<Option<Announcements>, StoreError> {
        if self.engine != Engine::Postgres {
            return Ok(None);
        }
        let mut listener = sqlx::postgres::PgListener::connect(&self.url).await?;
        listener.listen(&self.channel).await?;
        Ok(Some(Announcements(listener)))
    }

    /// A read-only transaction whose statements all see one snapshot (SQLite's are so
    /// already; PostgreSQL's default isolation gives each statement its own).
    async fn snapshot(&self) -> Result<Transaction<'static, Any>, StoreError> {
        let mut tx = self.pool.begin().await?;
        if self.engine == Engine::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    // ---- users ----

    /// Adds a user; false if the name is taken.
    pub async fn insert_user(
        &self,
        name: &str,
        password_hash: &str,
        quota: u64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let res = sqlx::query(
            "INSERT INTO users (name, password_hash, quota, stored_bytes, created_ms)
             VALUES ($1, $2, $3, 0, $4)",
        )
        .bind(name)
        .bind(password_hash)
        .bind(to_i64(quota, "quota")?)
        .bind(now_ms)
        .execute(&self.pool)
        .await;
        inserted(res)
    }

    pub async fn password_hash(&self, name: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT password_hash FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("password_hash")).transpose()?)
    }

    /// Sets a user's quota; false if there is no such user.
    pub async fn set_quota(&self, name: &str, bytes: u64) -> Result<bool, StoreError> {
        let res = sqlx::query("UPDATE users SET quota = $1 WHERE name = $2")
            .bind(to_i64(bytes, "quota")?)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() == 1)
    }

    pub async fn usage(&self, name: &str) -> Result<Option<UserUsage>, StoreError> {
        let row = sqlx::query("SELECT stored_bytes, quota FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(UserUsage {
                stored: to_u64(r.try_get("stored_bytes")?, "stored bytes")?,
                quota: to_u64(r.try_get("quota")?, "quota")?,
            })
        })
        .transpose()
    }

    // ---- devices ----

    pub async fn insert_device(&self, d: &Device) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO devices (id, user_name, name, public_key, created_ms, last_seen_ms, revoked)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&d.id)
        .bind(&d.user)
        .bind(&d.name)
        .bind(&d.public_key)
        .bind(d.created_ms)
        .bind(d.last_seen_ms)
        .bind(i64::from(d.revoked))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether a revoked device was claimed with `public_key` (SPKI PEM as `keys::public_pem`
    /// spells it).
    pub async fn key_revoked(&self, public_key: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 AS one FROM devices WHERE public_key = $1 AND revoked = 1")
            .bind(public_key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    pub async fn device(&self, id: &str) -> Result<Option<Device>, StoreError> {
        let row = sqlx::query("SELECT * FROM devices WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(device_from).transpose()
    }

    /// The user's devices, each with its mapped folders.
    pub async fn devices_of(&self, user: &str) -> Result<Vec<Device>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM devices WHERE user_name = $1 ORDER BY created_ms, id")
                .bind(user)
                .fetch_all(&self.pool)
                .await?;
        self.devices_from(&rows).await
    }

    /// Marks a device of `user` revoked; `None` if the user has no such device.
    pub async fn revoke_device(&self, user: &str, id: &str) -> Result<Option<Device>, StoreError> {
        sqlx::query("UPDATE devices SET revoked = 1 WHERE id = $1 AND user_name = $2")
            .bind(id)
            .bind(user)
            .execute(&self.pool)
            .await?;
        Ok(self.device(id).await?.filter(|d| d.user == user))
    }

    /// The device with the folders mapped on it filled in.
    pub async fn device_node(&self, id: &str) -> Result<Option<Device>, StoreError> {
        let Some(mut d) = self.device(id).await? else {
            return Ok(None);
        };
        d.folders = self.mapped_folders(id).await?;
        Ok(Some(d))
    }

    /// Devices from `SELECT * FROM devices` rows, each with its mapped folders.
    async fn devices_from(&self, rows: &[AnyRow]) -> Result<Vec<Device>, StoreError> {
        let mut devices = rows
            .iter()
            .map(device_from)
            .collect::<Result<Vec<_>, _>>()?;
        for d in &mut devices {
            d.folders = self.mapped_folders(&d.id).await?;
        }
        Ok(devices)
    }

    async fn mapped_folders(&self, device: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT folder FROM mapped WHERE device = $1 ORDER BY folder")
            .bind(device)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get("folder").map_err(StoreError::from))
            .collect()
    }

    /// Records where a device's peer listener is reached.
    pub async fn set_addrs(&self, id: &str, addrs: &[String]) -> Result<(), StoreError> {
        let json =
            serde_json::to_string(addrs).map_err(|_| StoreError::Corrupt("device addresses"))?;
        sqlx::query("UPDATE devices SET addrs = $1 WHERE id = $2")
            .bind(json)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Maps (`true`) or unmaps a folder on a device.
    pub async fn set_mapped(&self, device: &str, folder: &str, on: bool) -> Result<(), StoreError> {
        let sql = if on {
            "INSERT INTO mapped (device, folder) VALUES ($1, $2) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM mapped WHERE device = $1 AND folder = $2"
        };
        sqlx::query(sql)
            .bind(device)
            .bind(folder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The live devices that have `folder` mapped, each with its mapped folders.
    pub async fn devices_mapping(&self, folder: &str) -> Result<Vec<Device>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.* FROM devices d JOIN mapped m ON m.device = d.id
             WHERE m.folder = $1 AND d.revoked = 0 ORDER BY d.created_ms, d.id",
        )
        .bind(folder)
        .fetch_all(&self.pool)
        .await?;
        self.devices_from(&rows).await
    }

    /// Whether both devices have `folder` mapped.
    pub async fn both_mapped(&self, a: &str, b: &str, folder: &str) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM mapped WHERE folder = $1 AND device IN ($2, $3)",
        )
        .bind(folder)
        .bind(a)
        .bind(b)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>("n")? == 2)
    }

    pub async fn touch_device(&self, id: &str, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE devices SET last_seen_ms = $1 WHERE id = $2")
            .bind(now_ms)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---- folders and members ----

    pub async fn set_device_only(&self, folder: &str, on: bool) -> Result<(), StoreError> {
        sqlx::query("UPDATE folders SET device_only = $1 WHERE id = $2")
            .bind(i64::from(on))
            .bind(folder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// How many folders `user` owns.
    pub async fn folders_owned(&self, user: &str) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM folders WHERE owner = $1")
            .bind(user)
            .fetch_one(&self.pool)
            .await?;
        to_u64(row.try_get("n")?, "folder count")
    }

    /// Adds a folder; false if its owner already has a folder of that name.
    pub async fn insert_folder(&self, f: &Folder) -> Result<bool, StoreError> {
        let res = sqlx::query(
            "INSERT INTO folders (id, name, owner, device_only, created_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&f.id)
        .bind(&f.name)
        .bind(&f.owner)
        .bind(i64::from(f.device_only))
        .bind(f.created_ms)
        .execute(&self.pool)
        .await;
        inserted(res)
    }

    pub async fn folder(&self, id: &str) -> Result<Option<Folder>, StoreError> {
        let row = sqlx::query("SELECT * FROM folders WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(folder_from).transpose()
    }

    /// The role `user` holds on folder `id`, if any.
    pub async fn role(&self, id: &str, user: &str) -> Result<Option<Role>, StoreError> {
        Ok(self.membership(id, user).await?.and_then(|(_, role)| role))
    }

    /// Folders `user` owns or is a member of, with the role held on each.
    pub async fn folders_of(&self, user: &str) -> Result<Vec<(Folder, Role)>, StoreError> {
        let rows = sqlx::query(
            "SELECT f.*, 'owner' AS role FROM folders f WHERE f.owner = $1
             UNION ALL
             SELECT f.*, m.role AS role FROM folders f JOIN members m ON m.folder = f.id
              WHERE m.user_name = $2
             ORDER BY created_ms, id",
        )
        .bind(user)
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let role = Role::parse(&r.try_get::<String, _>("role")?)
                    .ok_or(StoreError::Corrupt("member role"))?;
                Ok((folder_from(r)?, role))
            })
            .collect()
    }

    // ---- blocks ----

    pub async fn has_block(&self, folder: &str, hash: &BlockHash) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 AS one FROM blocks WHERE folder = $1 AND hash = $2")
            .bind(folder)
            .bind(hash.to_hex())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Marks a block just offered again as fresh: the collector leaves it for its grace
    /// period, as it does a new upload, so the step that names it finds it.
    pub async fn touch_block(&self, folder: &str, hash: &BlockHash) -> Result<(), StoreError> {
        sqlx::query("UPDATE blocks SET stored_ms = $1 WHERE folder = $2 AND hash = $3")
            .bind(crate::proto::now_ms())
            .bind(folder)
            .bind(hash.to_hex())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a durably stored block and charges its length to the folder's owner in one
    /// transaction, unless that would pass the owner's quota or the share of it that
    /// `charge` (who stored the block) may use.
    pub async fn record_block(
        &self,
        folder: &str,
        hash: &BlockHash,
        len: u64,
        charge: &Charge<'_>,
    ) -> Result<BlockRecord, StoreError> {
        let len = to_i64(len, "block length")?;
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO blocks (folder, hash, len, stored_ms, charged_to) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (folder, hash) DO NOTHING",
        )
        .bind(folder)
        .bind(hash.to_hex())
        .bind(len)
        .bind(crate::proto::now_ms())
        .bind(charge.member)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            drop(tx);
            self.touch_block(folder, hash).await?;
            return Ok(BlockRecord::AlreadyStored);
        }
        if let Some(share) = charge.share {
            let used = members::stored_by(&mut tx, folder, charge.member).await?;
            if used > share {
                return Ok(BlockRecord::OverShare);
            }
        }
        let charged = sqlx::query(
            "UPDATE users SET stored_bytes = stored_bytes + $1
             WHERE name = $2 AND stored_bytes + $3 <= quota",
        )
        .bind(len)
        .bind(charge.owner)
        .bind(len)
        .execute(&mut *tx)
        .await?;
        if charged.rows_affected() == 0 {
            return Ok(BlockRecord::OverQuota);
        }
        tx.commit().await?;
        Ok(BlockRecord::Stored)
    }

    // ---- entries ----

    pub async fn entry(&self, folder: &str, id: &str) -> Result<Option<Entry>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        entry_in(&mut conn, folder, id).await
    }

    /// The live entries of a folder and the sequence they reflect, read in one snapshot.
    pub async fn live_entries(&self, folder: &str) -> Result<(Vec<Entry>, u64), StoreError> {
        let mut tx = self.snapshot().await?;
        let seq = current_seq(&mut tx).await?;
        let rows = sqlx::query(
            "SELECT * FROM entries WHERE folder = $1 AND deleted = 0 AND version <= $2
             ORDER BY parent, name",
        )
        .bind(folder)
        .bind(to_i64(seq, "sequence")?)
        .fetch_all(&mut *tx)
        .await?;
        let entries = rows.iter().map(entry_from).collect::<Result<_, _>>()?;
        tx.commit().await?;
        Ok((entries, seq))
    }

    /// Up to `limit` entries of a folder changed after `since` (tombstones too) in version
    /// order, and the current sequence, read in one snapshot.
    pub async fn changes(
        &self,
        folder: &str,
        since: u64,
        limit: u32,
    ) -> Result<(Vec<Entry>, u64), StoreError> {
        let mut tx = self.snapshot().await?;
        let seq = current_seq(&mut tx).await?;
        let rows = sqlx::query(
            "SELECT * FROM entries WHERE folder = $1 AND version > $2 AND version <= $3
             ORDER BY version LIMIT $4",
        )
        .bind(folder)
        .bind(to_i64(since, "since")?)
        .bind(to_i64(seq, "sequence")?)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        let entries = rows.iter().map(entry_from).collect::<Result<_, _>>()?;
        tx.commit().await?;
        Ok((entries, seq))
    }

    /// The highest record of `device`'s journal `journal` applied so far (0: none).
    pub async fn journal_mark(&self, device: &str, journal: &str) -> Result<u64, StoreError> {
        let mut conn = self.pool.acquire().await?;
        mark_in(&mut conn, device, journal).await
    }

    /// Starts a change: takes the next sequence number as the version every entry saved in
    /// this transaction gets. Dropping the `Change` without `commit` undoes it all.
    pub async fn begin_change(&self) -> Result<Change, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE meta SET seq = seq + 1 WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        let version = current_seq(&mut tx).await?;
        Ok(Change { tx, version })
    }
}

async fn mark_in(
    conn: &mut sqlx::AnyConnection,
    device: &str,
    journal: &str,
) -> Result<u64, StoreError> {
    let row = sqlx::query("SELECT applied FROM journals WHERE device = $1 AND journal = $2")
        .bind(device)
        .bind(journal)
        .fetch_optional(conn)
        .await?;
    match row {
        Some(r) => to_u64(r.try_get("applied")?, "journal mark"),
        None => Ok(0),
    }
}

async fn entry_in(
    conn: &mut sqlx::AnyConnection,
    folder: &str,
    id: &str,
) -> Result<Option<Entry>, StoreError> {
    let row = sqlx::query("SELECT * FROM entries WHERE folder = $1 AND id = $2")
        .bind(folder)
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(entry_from).transpose()
}

/// One write transaction on entries, holding its version.
pub struct Change {
    tx: Transaction<'static, Any>,
    version: u64,
}

impl Change {
    /// The version entries saved in this change get.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub async fn entry(&mut self, folder: &str, id: &str) -> Result<Option<Entry>, StoreError> {
        entry_in(&mut self.tx, folder, id).await
    }

    /// The live entry named `name` under `parent` (`None`: the folder root).
    pub async fn live_at(
        &mut self,
        folder: &str,
        parent: Option<&str>,
        name: &str,
    ) -> Result<Option<Entry>, StoreError> {
        let row = sqlx::query(
            "SELECT * FROM entries WHERE folder = $1 AND parent = $2 AND name = $3 AND deleted = 0",
        )
        .bind(folder)
        .bind(parent.unwrap_or(""))
        .bind(name)
        .fetch_optional(&mut *self.tx)
        .await?;
        row.as_ref().map(entry_from).transpose()
    }

    pub async fn has_live_children(&mut self, folder: &str, id: &str) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT 1 AS one FROM entries WHERE folder = $1 AND parent = $2 AND deleted = 0 LIMIT 1",
        )
        .bind(folder)
        .bind(id)
        .fetch_optional(&mut *self.tx)
        .await?;
        Ok(row.is_some())
    }

    /// How many distinct blocks of `hashes` the cloud has not recorded for `folder`.
    pub async fn missing_blocks(
        &mut self,
        folder: &str,
        hashes: &[BlockHash],
    ) -> Result<usize, StoreError> {
        let mut unique: Vec<&BlockHash> = hashes.iter().collect();
        unique.sort_unstable();
        unique.dedup();
        let mut missing = 0;
        for h in unique {
            let row = sqlx::query("SELECT 1 AS one FROM blocks WHERE folder = $1 AND hash = $2")
                .bind(folder)
                .bind(h.to_hex())
                .fetch_optional(&mut *self.tx)
                .await?;
            missing += usize::from(row.is_none());
        }
        Ok(missing)
    }

    /// Writes an entry (insert or overwrite by folder and id). A file's content that this
    /// replaces is kept as a version (see `store/history.rs`).
    pub async fn save(&mut self, e: &Entry) -> Result<(), StoreError> {
        if let Some(old) = entry_in(&mut self.tx, &e.folder, &e.id).await? {
            history::keep_replaced(&mut self.tx, &old, e).await?;
        }
        let manifest = serde_json::to_string(&e.manifest)
            .map_err(|_| StoreError::Corrupt("entry manifest"))?;
        let holders =
            serde_json::to_string(&e.holders).map_err(|_| StoreError::Corrupt("entry holders"))?;
        let sql = format!(
            "INSERT INTO entries ({ENTRY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
             ON CONFLICT (folder, id) DO UPDATE SET
               parent = excluded.parent, name = excluded.name, kind = excluded.kind,
               mode = excluded.mode, size = excluded.size, mtime_ns = excluded.mtime_ns,
               version = excluded.version, deleted = excluded.deleted,
               manifest = excluded.manifest, target = excluded.target, author = excluded.author,
               in_cloud = excluded.in_cloud, holders = excluded.holders,
               changed_ms = excluded.changed_ms"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&e.folder)
            .bind(&e.id)
            .bind(e.parent.as_deref().unwrap_or(""))
            .bind(&e.name)
            .bind(kind_str(e.kind))
            .bind(i64::from(e.mode))
            .bind(to_i64(e.size, "entry size")?)
            .bind(e.mtime_ns)
            .bind(to_i64(e.version, "entry version")?)
            .bind(i64::from(e.deleted))
            .bind(manifest)
            .bind(e.target.as_deref())
            .bind(&e.author)
            .bind(i64::from(e.in_cloud))
            .bind(holders)
            .bind(crate::proto::now_ms())
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// The highest record of `device`'s journal `journal` applied so far (0: none).
    pub async fn journal_mark(&mut self, device: &str, journal: &str) -> Result<u64, StoreError> {
        mark_in(&mut self.tx, device, journal).await
    }

    /// Records that the steps of `device`'s journal `journal` up to record `applied` are in.
    pub async fn set_journal_mark(
        &mut self,
        device: &str,
        journal: &str,
        applied: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO journals (device, journal, applied) VALUES ($1, $2, $3)
             ON CONFLICT (device, journal) DO UPDATE SET applied = excluded.applied",
        )
        .bind(device)
        .bind(journal)
        .bind(to_i64(applied, "journal mark")?)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Makes the change durable; returns its version.
    pub async fn commit(self) -> Result<u64, StoreError> {
        self.tx.commit().await?;
        Ok(self.version)
    }
}

#[cfg(test)]
impl Store {
    /// An embedded store in `dir`, as a cloud with no `cloud.toml` opens it.
    pub(crate) async fn open_in(dir: &std::path::Path) -> Self {
        Self::open(&super::Engines::embedded(dir).database)
            .await
            .unwrap()
    }
}

/// A live device `id` of `user`, named after its id, with no key, address or folder.
#[cfg(test)]
fn test_device(id: &str, user: &str) -> Device {
    Device {
        id: id.into(),
        user: user.into(),
        name: id.into(),
        public_key: String::new(),
        created_ms: 0,
        last_seen_ms: 0,
        revoked: false,
        addrs: vec![],
        folders: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANN: Charge<'static> = Charge {
        owner: "ann",
        member: "ann",
        share: None,
    };

    fn entry(id: &str, parent: Option<&str>, name: &str, version: u64) -> Entry {
        Entry {
            id: id.into(),
            folder: "f".into(),
            parent: parent.map(Into::into),
            name: name.into(),
            kind: EntryKind::Dir,
            mode: 0o755,
            size: 0,
            mtime_ns: 1,
            version,
            deleted: false,
            manifest: vec![],
            target: None,
            author: "d".into(),
            in_cloud: true,
            holders: vec![],
        }
    }

    async fn store_with_folder() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).await;
        assert!(store.insert_user("ann", "x", 10, 0).await.unwrap());
        let f = Folder {
            id: "f".into(),
            name: "docs".into(),
            owner: "ann".into(),
            device_only: false,
            created_ms: 0,
            epoch: 0,
        };
        assert!(store.insert_folder(&f).await.unwrap());
        (dir, store)
    }

    #[tokio::test]
    async fn dropped_change_leaves_sequence_and_entries_unchanged() {
        let (_dir, store) = store_with_folder().await;
        let mut c = store.begin_change().await.unwrap();
        assert_eq!(c.version(), 1);
        c.save(&entry("a", None, "a", 1)).await.unwrap();
        drop(c);
        let (entries, seq) = store.live_entries("f").await.unwrap();
        assert!(entries.is_empty());
        assert_eq!(seq, 0);
    }

    #[tokio::test]
    async fn live_names_are_unique_per_directory_but_tombstones_are_not() {
        let (_dir, store) = store_with_folder().await;
        let mut c = store.begin_change().await.unwrap();
        c.save(&entry("a", None, "x", 1)).await.unwrap();
        assert!(c.save(&entry("b", None, "x", 1)).await.is_err());
        drop(c);
        let mut c = store.begin_change().await.unwrap();
        let mut a = entry("a", None, "x", 1);
        a.deleted = true;
        c.save(&a).await.unwrap();
        c.save(&entry("b", None, "x", 1)).await.unwrap();
        assert_eq!(c.commit().await.unwrap(), 1);
        let (entries, _) = store.live_entries("f").await.unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].id, "b");
    }

    #[tokio::test]
    async fn block_over_quota_is_not_recorded() {
        let (_dir, store) = store_with_folder().await;
        let h = BlockHash::of(b"0123456789");
        assert_eq!(
            store.record_block("f", &h, 10, &ANN).await.unwrap(),
            BlockRecord::Stored
        );
        assert_eq!(
            store.record_block("f", &h, 10, &ANN).await.unwrap(),
            BlockRecord::AlreadyStored
        );
        let h2 = BlockHash::of(b"x");
        assert_eq!(
            store.record_block("f", &h2, 1, &ANN).await.unwrap(),
            BlockRecord::OverQuota
        );
        assert!(!store.has_block("f", &h2).await.unwrap());
        assert_eq!(
            store.usage("ann").await.unwrap(),
            Some(UserUsage {
                stored: 10,
                quota: 10
            })
        );
    }

    #[tokio::test]
    async fn a_version_2_store_gains_journal_marks_history_and_membership_on_open() {
        let (dir, store) = store_with_folder().await;
        // What schema 2 had: no journals, no history, no times on blocks and entries, no
        // invitations, epochs, shares or charges per member.
        for stmt in [
            "DROP TABLE journals",
            "DROP TABLE versions",
            "DROP TABLE invitations",
            "DROP INDEX blocks_charged",
            "ALTER TABLE blocks DROP COLUMN stored_ms",
            "ALTER TABLE blocks DROP COLUMN charged_to",
            "ALTER TABLE entries DROP COLUMN changed_ms",
            "ALTER TABLE folders DROP COLUMN epoch",
            "ALTER TABLE members DROP COLUMN max_bytes",
        ] {
            sqlx::query(stmt).execute(&store.pool).await.unwrap();
        }
        sqlx::query("UPDATE meta SET schema_version = 2 WHERE id = 1")
            .execute(&store.pool)
            .await
            .unwrap();
        drop(store);
        let store = Store::open_in(dir.path()).await;
        store.insert_device(&test_device("d", "ann")).await.unwrap();
        let mut c = store.begin_change().await.unwrap();
        assert_eq!(c.journal_mark("d", "j").await.unwrap(), 0);
        c.set_journal_mark("d", "j", 7).await.unwrap();
        c.commit().await.unwrap();
        let mut c = store.begin_change().await.unwrap();
        assert_eq!(c.journal_mark("d", "j").await.unwrap(), 7);
        drop(c);
        assert_eq!(store.folder("f").await.unwrap().unwrap().epoch, 0);
        store
            .invite("f", "ann", Role::Reader, None, 0)
            .await
            .unwrap();
        store
            .collect(crate::proto::now_ms(), &Retention::default())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn reopen_keeps_data_and_schema_version() {
        let (dir, store) = store_with_folder().await;
        drop(store);
        let store = Store::open_in(dir.path()).await;
        assert!(store.folder("f").await.unwrap().is_some());
        assert!(!store.insert_user("ann", "y", 1, 0).await.unwrap());
    }
}
