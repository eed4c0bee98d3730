//! The engines a test's cloud keeps its metadata and blocks in. By default the embedded ones
//! (SQLite and a directory in the cloud's data directory). With `MESHFS_TEST_POSTGRES` (the
//! URL of a PostgreSQL database whose user may create schemas) and `MESHFS_TEST_S3`
//! (`s3://BUCKET`, with the endpoint and credentials in the `AWS_*` variables), a schema and
//! a block prefix of the test's own: the tests share one server and one bucket, never data.

use meshfs::cloud::{BlockStore, Database, Engines};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

/// The engines for a cloud whose data directory is `data_dir`.
pub fn for_test(data_dir: &Path) -> Engines {
    let mut engines = Engines::embedded(data_dir);
    let tag = unique_tag();
    if let Some(url) = env("MESHFS_TEST_POSTGRES") {
        create_schema(&url, &tag);
        let sep = if url.contains('?') { '&' } else { '?' };
        engines.database = Database::Postgres(format!("{url}{sep}options[search_path]={tag}"));
    }
    if let Some(s3) = env("MESHFS_TEST_S3") {
        let bucket = s3.trim_start_matches("s3://").trim_end_matches('/');
        engines.blocks = BlockStore::S3 {
            bucket: bucket.to_owned(),
            prefix: tag,
        };
    }
    engines
}

/// Writes `cloud.toml` naming `engines` into `data_dir`, for a `meshfs cloud` process.
#[allow(dead_code)]
pub fn write_config(data_dir: &Path, engines: &Engines) {
    std::fs::create_dir_all(data_dir).expect("cloud data dir");
    let database = match &engines.database {
        Database::Sqlite(path) => format!("sqlite://{}", path.display()),
        Database::Postgres(url) => url.clone(),
    };
    let text = format!(
        "database = {database:?}\nblocks = {:?}\n",
        engines.blocks.to_string()
    );
    std::fs::write(data_dir.join(meshfs::cloud::engines::CONFIG_FILE), text).expect("cloud.toml");
}

/// Whether the tests run on PostgreSQL.
#[allow(dead_code)]
pub fn on_postgres() -> bool {
    env("MESHFS_TEST_POSTGRES").is_some()
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A name no other cloud of this run or of an earlier run on the same server has.
fn unique_tag() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    format!(
        "t{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates schema `name` in the database at `url`.
fn create_schema(url: &str, name: &str) {
    let (url, sql) = (url.to_owned(), format!("CREATE SCHEMA {name}"));
    block_on(async move {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url)
            .await
            .expect("MESHFS_TEST_POSTGRES: connecting");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .expect("creating the test's schema");
    });
}

/// The cloud's newest signing key, read from its database.
#[allow(dead_code)]
pub fn signing_key(engines: &Engines) -> meshfs::crypto::keys::PrivateKey {
    let url = engines.database.url();
    let pem: String = block_on(async move {
        use sqlx::{Connection, Row};
        sqlx::any::install_default_drivers();
        let mut db = sqlx::AnyConnection::connect(&url)
            .await
            .expect("the cloud's database");
        sqlx::query("SELECT private_key FROM signing_keys ORDER BY signs_from_ms DESC LIMIT 1")
            .fetch_one(&mut db)
            .await
            .expect("a signing key")
            .try_get("private_key")
            .expect("its PEM")
    });
    meshfs::crypto::keys::private_from_pem(&pem, "the database").expect("a PKCS#8 key")
}

/// A block in a cloud's block store.
#[allow(dead_code)]
#[derive(Debug)]
pub struct StoredBlock {
    pub folder: String,
    pub hash: String,
    pub len: u64,
}

/// Every block in `engines`' block store (a directory or an S3 bucket).
#[allow(dead_code)]
pub fn blocks(engines: &Engines) -> Vec<StoredBlock> {
    let store = open_blocks(engines);
    block_on(async move {
        use futures::TryStreamExt;
        let listed: Vec<_> = store
            .list(None)
            .try_collect()
            .await
            .expect("listing blocks");
        listed
            .into_iter()
            .filter_map(|meta| {
                let mut parts = meta.location.parts();
                let folder = parts.next()?.as_ref().to_owned();
                let hash = parts.next()?.as_ref().to_owned();
                Some(StoredBlock {
                    folder,
                    hash,
                    len: meta.size,
                })
            })
            .collect()
    })
}

/// Flips one byte (at offset 1000) of every block in `engines`' block store; returns how
/// many it changed.
#[allow(dead_code)]
pub fn corrupt_blocks(engines: &Engines) -> usize {
    let store = open_blocks(engines);
    let found = blocks(engines);
    block_on(async move {
        use object_store::ObjectStoreExt;
        for b in &found {
            let at = object_store::path::Path::from_iter([b.folder.clone(), b.hash.clone()]);
            let mut bytes = store
                .get(&at)
                .await
                .expect("get")
                .bytes()
                .await
                .expect("read")
                .to_vec();
            bytes[1000] ^= 0x55;
            store.put(&at, bytes.into()).await.expect("put");
        }
        found.len()
    })
}

fn open_blocks(engines: &Engines) -> Box<dyn object_store::ObjectStore> {
    engines.blocks.open().expect("the cloud's block store")
}

/// Runs `f` to completion on a runtime of its own thread (callers may be inside one).
fn block_on<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    })
    .join()
    .expect("engine thread")
}
