//! The shared namespace: a PostgreSQL database several gateways use at once (`s3_postgres`), so an object put
//! through one gateway is read, listed and deleted through any other, and a multipart upload begun on one is
//! completed on another.
//!
//! Its schema (tables `fdfs_s3_*`, version in `fdfs_s3_schema`) is created on first connect, under an advisory
//! lock so that gateways starting together do not race. Keys are `text COLLATE "C"`: ordered by their UTF-8
//! bytes, as S3 lists them. Each change is one transaction committed before the call returns, with
//! `synchronous_commit` at least `on` (raised from `off` for the gateway's sessions). What must be atomic is
//! made so by row locks and constraints, not by the gateway: a put locks the key's row, so of concurrent puts
//! each gets back the object it replaced; an object's bucket is a foreign key, so deleting a bucket fails while
//! it holds an object, even one being recorded; a part is recorded only while its upload's row exists.
//!
//! Calls block (the sync `postgres` client; the handlers run them on the blocking pool). Connections are kept
//! in a small pool; a broken one is dropped and the next call connects again, so a restarted server is used
//! again without restarting the gateway. A connection error is [`NsError::Unavailable`] (S3 503).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::{Client, GenericClient, NoTls, Row};

use super::{rolled_up, DeleteBucket, Expect, NsError, Object, Page, Part, Result, Upload};

/// The schema version this gateway writes; a database with a newer one is refused.
const SCHEMA_VERSION: i32 = 1;

/// The advisory lock key held while the schema is created ("fdfs-s3" in ASCII).
const SCHEMA_LOCK: i64 = 0x0066_6466_732d_7333;

/// Idle connections kept for the next calls.
const MAX_IDLE: usize = 8;

/// An idle connection unused for longer than this is checked (a round trip) before it is used again.
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(2);

/// How long a connection attempt may take when the URL does not say (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long unacknowledged data (`tcp_user_timeout`) may wait, and a connection stay idle before keepalives
/// probe it, when the URL does not say.
const DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(30);

/// The schema, created when missing.
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS fdfs_s3_schema (
    version integer NOT NULL,
    rebuilt_at bigint
);
CREATE TABLE IF NOT EXISTS fdfs_s3_buckets (
    name text COLLATE "C" PRIMARY KEY,
    created bigint NOT NULL
);
-- The bucket's marker file (added after version 1's first release; old gateways leave it NULL).
ALTER TABLE fdfs_s3_buckets ADD COLUMN IF NOT EXISTS marker text;
CREATE TABLE IF NOT EXISTS fdfs_s3_objects (
    bucket text COLLATE "C" NOT NULL REFERENCES fdfs_s3_buckets (name),
    key text COLLATE "C" NOT NULL,
    file_id text NOT NULL,
    size bigint NOT NULL,
    etag text NOT NULL,
    content_type text NOT NULL,
    modified bigint NOT NULL,
    meta text NOT NULL,
    PRIMARY KEY (bucket, key)
);
CREATE TABLE IF NOT EXISTS fdfs_s3_uploads (
    id text COLLATE "C" PRIMARY KEY,
    bucket text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    created bigint NOT NULL,
    content_type text NOT NULL,
    meta text NOT NULL
);
CREATE INDEX IF NOT EXISTS fdfs_s3_uploads_by_key ON fdfs_s3_uploads (bucket, key, id);
CREATE TABLE IF NOT EXISTS fdfs_s3_parts (
    upload_id text COLLATE "C" NOT NULL REFERENCES fdfs_s3_uploads (id) ON DELETE CASCADE,
    n integer NOT NULL,
    file_id text NOT NULL,
    size bigint NOT NULL,
    etag text NOT NULL,
    modified bigint NOT NULL,
    PRIMARY KEY (upload_id, n)
);
"#;

/// An object's columns, in [`object`]'s order.
const OBJECT_COLUMNS: &str = "file_id, size, etag, content_type, modified, meta";

/// An upload's columns joined with its parts', in [`uploads`]' order.
const UPLOAD_QUERY: &str = "SELECT u.id, u.bucket, u.key, u.created, u.content_type, u.meta, \
     p.n, p.file_id, p.size, p.etag, p.modified \
     FROM fdfs_s3_uploads u LEFT JOIN fdfs_s3_parts p ON p.upload_id = u.id";

impl From<postgres::Error> for NsError {
    fn from(e: postgres::Error) -> NsError {
        // No SQL state: the connection failed or broke. Connection exceptions (08), the server shutting down
        // or starting (57P0x), out of connections or resources (53), and serialization failures or deadlocks
        // (40) are worth a retry too.
        let unavailable = match e.code() {
            None => true,
            Some(c) => {
                let c = c.code();
                c.starts_with("08")
                    || c.starts_with("57P")
                    || c.starts_with("53")
                    || c.starts_with("40")
            }
        };
        if unavailable {
            NsError::Unavailable(e.to_string())
        } else {
            NsError::Postgres(e)
        }
    }
}

/// The PostgreSQL namespace: its server's address and the pool of connections to it.
#[derive(Clone)]
pub struct Shared {
    pool: Arc<Pool>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the URL: it may hold a password.
        f.debug_struct("Shared")
            .field("hosts", &self.pool.config.get_hosts())
            .field("dbname", &self.pool.config.get_dbname())
            .finish()
    }
}

/// Connections to the server, made on demand.
struct Pool {
    /// Where and how to connect.
    config: postgres::Config,
    /// Connections not in use, each with when it was last used.
    idle: Mutex<Vec<(Client, Instant)>>,
    /// Whether this gateway created or checked the schema already.
    schema_ready: AtomicBool,
}

impl Drop for Pool {
    fn drop(&mut self) {
        // A sync client owns a small runtime, which must not be dropped on an async worker thread.
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()));
        if !idle.is_empty() {
            std::thread::spawn(move || drop(idle));
        }
    }
}

/// A connection borrowed from the pool, given back when dropped unless it broke.
struct Conn<'a> {
    client: Option<Client>,
    pool: &'a Pool,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("a borrowed connection")
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("a borrowed connection")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
        if client.is_closed() {
            // The server went away (or restarted): the idle connections are as dead, though they do not know it
            // until used. Dropped, so the next call connects again instead of failing on each of them in turn.
            let dead = std::mem::take(&mut *idle);
            drop(idle);
            drop(dead);
            return;
        }
        if idle.len() < MAX_IDLE {
            idle.push((client, Instant::now()));
        }
    }
}

impl Pool {
    /// A connection: an idle one, else a new one.
    fn get(&self) -> Result<Conn<'_>> {
        loop {
            let client = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match client {
                Some((c, _)) if c.is_closed() => continue,
                // Idle a while: the server may have restarted since (a broken connection does not know it
                // until used). Checked with a round trip; a dead one means the others are dead too.
                Some((mut c, since)) if since.elapsed() > CHECK_IDLE_AFTER => {
                    if c.is_valid(CONNECT_TIMEOUT).is_ok() {
                        return Ok(Conn {
                            client: Some(c),
                            pool: self,
                        });
                    }
                    let dead =
                        std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()));
                    drop(dead);
                    break;
                }
                Some((c, _)) => {
                    return Ok(Conn {
                        client: Some(c),
                        pool: self,
                    })
                }
                None => break,
            }
        }
        let mut client = self.config.connect(NoTls)?;
        // An acknowledged change must survive the server's crash: never `off` for this session.
        let commit: String = client.query_one("SHOW synchronous_commit", &[])?.get(0);
        if commit == "off" {
            client.batch_execute("SET synchronous_commit TO on")?;
        }
        Ok(Conn {
            client: Some(client),
            pool: self,
        })
    }
}

impl Shared {
    /// The namespace at `url`; nothing connects yet.
    pub fn new(url: &str) -> Result<Shared> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e: postgres::Error| NsError::Unavailable(format!("s3_postgres: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // A server host that vanishes (no reset, no answer) fails the calls waiting on it within about this
        // long, instead of holding them for TCP's default of minutes to hours.
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(DEAD_PEER_TIMEOUT);
        }
        if config.get_keepalives_idle() > DEAD_PEER_TIMEOUT {
            config.keepalives_idle(DEAD_PEER_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("fdfs-gateway");
        }
        Ok(Shared {
            pool: Arc::new(Pool {
                config,
                idle: Mutex::new(Vec::new()),
                schema_ready: AtomicBool::new(false),
            }),
        })
    }

    /// A connection on which the schema exists.
    fn conn(&self) -> Result<Conn<'_>> {
        let mut c = self.pool.get()?;
        if !self.pool.schema_ready.load(Ordering::Acquire) {
            create_schema(&mut c)?;
            self.pool.schema_ready.store(true, Ordering::Release);
        }
        Ok(c)
    }

    /// Create or check the schema; whether the namespace must be rebuilt (new, or never finished rebuilding).
    pub fn prepare(&self) -> Result<bool> {
        let mut c = self.pool.get()?;
        let rebuild = create_schema(&mut c)?;
        self.pool.schema_ready.store(true, Ordering::Release);
        Ok(rebuild)
    }

    /// Record that the namespace was rebuilt.
    pub fn rebuilt(&self) -> Result<()> {
        self.conn()?.execute(
            "UPDATE fdfs_s3_schema SET rebuilt_at = $1",
            &[&(fdfs_common::time::unix_now() as i64)],
        )?;
        Ok(())
    }

    /// [`Namespace::whole`](super::Namespace::whole).
    pub fn whole(&self) -> Result<Option<i64>> {
        Ok(self
            .conn()?
            .query_opt("SELECT rebuilt_at FROM fdfs_s3_schema LIMIT 1", &[])?
            .and_then(|r| r.get(0)))
    }

    /// [`Namespace::create_bucket`](super::Namespace::create_bucket).
    pub fn create_bucket(&self, name: &str, now: i64, marker: Option<&str>) -> Result<bool> {
        let n = self.conn()?.execute(
            "INSERT INTO fdfs_s3_buckets (name, created, marker) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
            &[&name, &now, &marker],
        )?;
        Ok(n == 1)
    }

    /// [`Namespace::bucket`](super::Namespace::bucket).
    pub fn bucket(&self, name: &str) -> Result<Option<i64>> {
        Ok(self
            .conn()?
            .query_opt(
                "SELECT created FROM fdfs_s3_buckets WHERE name = $1",
                &[&name],
            )?
            .map(|r| r.get(0)))
    }

    /// [`Namespace::bucket_marker`](super::Namespace::bucket_marker).
    pub fn bucket_marker(&self, name: &str) -> Result<Option<Option<String>>> {
        Ok(self
            .conn()?
            .query_opt(
                "SELECT marker FROM fdfs_s3_buckets WHERE name = $1",
                &[&name],
            )?
            .map(|r| r.get(0)))
    }

    /// [`Namespace::mark_bucket`](super::Namespace::mark_bucket).
    pub fn mark_bucket(&self, name: &str, marker: &str) -> Result<bool> {
        let n = self.conn()?.execute(
            "UPDATE fdfs_s3_buckets SET marker = $2 WHERE name = $1 AND marker IS NULL",
            &[&name, &marker],
        )?;
        Ok(n == 1)
    }

    /// [`Namespace::buckets`](super::Namespace::buckets).
    pub fn buckets(&self) -> Result<Vec<(String, i64)>> {
        Ok(self
            .conn()?
            .query(
                "SELECT name, created FROM fdfs_s3_buckets ORDER BY name",
                &[],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    /// [`Namespace::delete_bucket`](super::Namespace::delete_bucket).
    pub fn delete_bucket(
        &self,
        name: &str,
    ) -> Result<std::result::Result<Option<String>, DeleteBucket>> {
        // The objects' foreign key refuses the delete while the bucket holds one (or one is being recorded:
        // its insert holds a lock on the bucket's row until it commits).
        match self.conn()?.query_opt(
            "DELETE FROM fdfs_s3_buckets WHERE name = $1 RETURNING marker",
            &[&name],
        ) {
            Ok(None) => Ok(Err(DeleteBucket::Missing)),
            Ok(Some(r)) => Ok(Ok(r.get(0))),
            Err(e) if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
                Ok(Err(DeleteBucket::NotEmpty))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// [`Namespace::get`](super::Namespace::get).
    pub fn get(&self, bucket: &str, key: &str) -> Result<Option<Object>> {
        let row = self.conn()?.query_opt(
            &format!("SELECT {OBJECT_COLUMNS} FROM fdfs_s3_objects WHERE bucket = $1 AND key = $2"),
            &[&bucket, &key],
        )?;
        Ok(row.map(|r| object(&r, 0)))
    }

    /// [`Namespace::put`](super::Namespace::put).
    pub fn put(&self, bucket: &str, key: &str, o: &Object) -> Result<Option<Object>> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        let old = put_in(&mut tx, bucket, key, o)?;
        tx.commit()?;
        Ok(old)
    }

    /// [`Namespace::put_if`](super::Namespace::put_if): the key's row locked while it is checked and changed;
    /// an absent key is created only if no other gateway creates it first.
    pub fn put_if(
        &self,
        bucket: &str,
        key: &str,
        o: &Object,
        expect: &Expect,
    ) -> Result<std::result::Result<Option<Object>, ()>> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        let current = tx.query_opt(
            &format!(
                "SELECT {OBJECT_COLUMNS} FROM fdfs_s3_objects WHERE bucket = $1 AND key = $2 FOR UPDATE"
            ),
            &[&bucket, &key],
        )?;
        let old = current.map(|r| object(&r, 0));
        if !expect.holds(old.as_ref()) {
            return Ok(Err(()));
        }
        if old.is_some() {
            put_in(&mut tx, bucket, key, o)?;
        } else {
            let inserted = tx.execute(
                &format!(
                    "INSERT INTO fdfs_s3_objects (bucket, key, {OBJECT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (bucket, key) DO NOTHING"
                ),
                &[
                    &bucket,
                    &key,
                    &o.file_id,
                    &(o.size as i64),
                    &o.etag,
                    &o.content_type,
                    &o.modified,
                    &encode_meta(&o.meta),
                ],
            );
            match inserted {
                Ok(1) => {}
                // Another gateway created the key since it was read.
                Ok(_) => return Ok(Err(())),
                Err(e) if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
                    return Err(NsError::NoBucket(bucket.to_owned()))
                }
                Err(e) => return Err(e.into()),
            }
        }
        tx.commit()?;
        Ok(Ok(old))
    }

    /// [`Namespace::remove`](super::Namespace::remove).
    pub fn remove(&self, bucket: &str, key: &str) -> Result<Option<Object>> {
        let row = self.conn()?.query_opt(
            &format!(
                "DELETE FROM fdfs_s3_objects WHERE bucket = $1 AND key = $2 RETURNING {OBJECT_COLUMNS}"
            ),
            &[&bucket, &key],
        )?;
        Ok(row.map(|r| object(&r, 0)))
    }

    /// [`Namespace::create_upload`](super::Namespace::create_upload).
    pub fn create_upload(&self, id: &str, u: &Upload) -> Result<()> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        tx.execute(
            "INSERT INTO fdfs_s3_uploads (id, bucket, key, created, content_type, meta) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &id,
                &u.bucket,
                &u.key,
                &u.created,
                &u.content_type,
                &encode_meta(&u.meta),
            ],
        )?;
        for (n, p) in &u.parts {
            put_part_in(&mut tx, id, *n, p)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// [`Namespace::upload`](super::Namespace::upload).
    pub fn upload(&self, id: &str) -> Result<Option<Upload>> {
        let mut c = self.conn()?;
        Ok(uploads(&mut *c, "WHERE u.id = $1", &[&id])?
            .pop()
            .map(|(_, u)| u))
    }

    /// [`Namespace::put_part`](super::Namespace::put_part).
    pub fn put_part(
        &self,
        id: &str,
        n: u32,
        part: &Part,
    ) -> Result<std::result::Result<Option<Part>, ()>> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        // The upload's row stays while the part is recorded: a concurrent completion or abort waits for it.
        if tx
            .query_opt(
                "SELECT 1 FROM fdfs_s3_uploads WHERE id = $1 FOR SHARE",
                &[&id],
            )?
            .is_none()
        {
            return Ok(Err(()));
        }
        let old = put_part_in(&mut tx, id, n, part)?;
        tx.commit()?;
        Ok(Ok(old))
    }

    /// [`Namespace::remove_upload`](super::Namespace::remove_upload).
    pub fn remove_upload(&self, id: &str) -> Result<Option<Upload>> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        let ended = remove_upload_in(&mut tx, id)?;
        tx.commit()?;
        Ok(ended)
    }

    /// [`Namespace::complete`](super::Namespace::complete).
    pub fn complete(
        &self,
        bucket: &str,
        key: &str,
        o: &Object,
        id: &str,
    ) -> Result<(Option<Object>, Option<Upload>)> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        let old = put_in(&mut tx, bucket, key, o)?;
        let ended = remove_upload_in(&mut tx, id)?;
        tx.commit()?;
        Ok((old, ended))
    }

    /// [`Namespace::uploads_in`](super::Namespace::uploads_in).
    pub fn uploads_in(&self, bucket: &str) -> Result<Vec<(String, Upload)>> {
        let mut c = self.conn()?;
        uploads(&mut *c, "WHERE u.bucket = $1", &[&bucket])
    }

    /// [`Namespace::list`](super::Namespace::list).
    pub fn list(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: &str,
        after: &str,
        max: usize,
    ) -> Result<Page> {
        let mut c = self.conn()?;
        let mut page = Page::default();
        // Where to read from: the prefix (inclusive), or past `after` when that is further.
        let (mut from, mut inclusive) = if after >= prefix {
            (after.to_owned(), false)
        } else {
            (prefix.to_owned(), true)
        };
        let batch = (max + 1).clamp(2, 1000) as i64;
        let query = format!(
            "SELECT key, {OBJECT_COLUMNS} FROM fdfs_s3_objects \
             WHERE bucket = $1 AND (key > $2 OR ($3 AND key = $2)) ORDER BY key LIMIT $4"
        );
        'scan: loop {
            let rows = c.query(&query, &[&bucket, &from, &inclusive, &batch])?;
            let full = rows.len() as i64 == batch;
            for row in &rows {
                let key: String = row.get(0);
                if !key.starts_with(prefix) {
                    break 'scan;
                }
                let rolled = rolled_up(&key, prefix, delimiter);
                if let Some(cp) = &rolled {
                    if cp.as_str() <= after || page.prefixes.last() == Some(cp) {
                        // `after` is this prefix (a continuation), or it was rolled up already: skip it.
                        (from, inclusive) = (past(cp).max(key), false);
                        continue 'scan;
                    }
                }
                if page.objects.len() + page.prefixes.len() == max {
                    page.truncated = true;
                    break 'scan;
                }
                match rolled {
                    Some(cp) => {
                        page.last = Some(cp.clone());
                        (from, inclusive) = (past(&cp), false);
                        page.prefixes.push(cp);
                        continue 'scan;
                    }
                    None => {
                        page.last = Some(key.clone());
                        page.objects.push((key, object(row, 1)));
                    }
                }
            }
            match rows.last() {
                Some(r) if full => (from, inclusive) = (r.get(0), false),
                _ => break,
            }
        }
        Ok(page)
    }
}

/// A key after every key under common prefix `cp` but none outside it: `cp` and the largest character. A key
/// under `cp` past even that (it has that character next) is rolled up again and skipped.
fn past(cp: &str) -> String {
    format!("{cp}{}", char::MAX)
}

/// Create the schema unless it exists; whether the namespace must be rebuilt.
fn create_schema(c: &mut Client) -> Result<bool> {
    let mut tx = c.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
    tx.batch_execute(SCHEMA)?;
    let row = tx.query_opt(
        "SELECT version, rebuilt_at FROM fdfs_s3_schema LIMIT 1",
        &[],
    )?;
    let rebuild = match row {
        Some(r) => {
            let version: i32 = r.get(0);
            if version > SCHEMA_VERSION {
                return Err(NsError::Unavailable(format!(
                    "the namespace's schema is version {version}, newer than this gateway's {SCHEMA_VERSION}"
                )));
            }
            r.get::<_, Option<i64>>(1).is_none()
        }
        None => {
            tx.execute(
                "INSERT INTO fdfs_s3_schema (version, rebuilt_at) VALUES ($1, NULL)",
                &[&SCHEMA_VERSION],
            )?;
            true
        }
    };
    tx.commit()?;
    Ok(rebuild)
}

/// Point `bucket/key` at `o` in `tx`; the object it replaced. The key's row is locked until `tx` ends, so a
/// concurrent put waits and then replaces this one.
fn put_in(
    tx: &mut postgres::Transaction<'_>,
    bucket: &str,
    key: &str,
    o: &Object,
) -> Result<Option<Object>> {
    let (size, meta) = (o.size as i64, encode_meta(&o.meta));
    loop {
        let old = tx.query_opt(
            &format!(
                "SELECT {OBJECT_COLUMNS} FROM fdfs_s3_objects WHERE bucket = $1 AND key = $2 FOR UPDATE"
            ),
            &[&bucket, &key],
        )?;
        if let Some(old) = old {
            tx.execute(
                "UPDATE fdfs_s3_objects SET file_id = $3, size = $4, etag = $5, content_type = $6, \
                 modified = $7, meta = $8 WHERE bucket = $1 AND key = $2",
                &[&bucket, &key, &o.file_id, &size, &o.etag, &o.content_type, &o.modified, &meta],
            )?;
            return Ok(Some(object(&old, 0)));
        }
        // No row: insert one, unless a concurrent put inserted it first (then lock and replace that).
        let inserted = tx.execute(
            &format!(
                "INSERT INTO fdfs_s3_objects (bucket, key, {OBJECT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (bucket, key) DO NOTHING"
            ),
            &[&bucket, &key, &o.file_id, &size, &o.etag, &o.content_type, &o.modified, &meta],
        );
        match inserted {
            Ok(1) => return Ok(None),
            Ok(_) => continue,
            Err(e) if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
                return Err(NsError::NoBucket(bucket.to_owned()))
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Record part `n` of upload `id` in `tx`; the part it replaced.
fn put_part_in(
    tx: &mut postgres::Transaction<'_>,
    id: &str,
    n: u32,
    p: &Part,
) -> Result<Option<Part>> {
    let (n, size) = (n as i32, p.size as i64);
    loop {
        let old = tx.query_opt(
            "SELECT file_id, size, etag, modified FROM fdfs_s3_parts WHERE upload_id = $1 AND n = $2 FOR UPDATE",
            &[&id, &n],
        )?;
        if let Some(old) = old {
            tx.execute(
                "UPDATE fdfs_s3_parts SET file_id = $3, size = $4, etag = $5, modified = $6 \
                 WHERE upload_id = $1 AND n = $2",
                &[&id, &n, &p.file_id, &size, &p.etag, &p.modified],
            )?;
            return Ok(Some(part(&old, 0)));
        }
        let inserted = tx.execute(
            "INSERT INTO fdfs_s3_parts (upload_id, n, file_id, size, etag, modified) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (upload_id, n) DO NOTHING",
            &[&id, &n, &p.file_id, &size, &p.etag, &p.modified],
        )?;
        if inserted == 1 {
            return Ok(None);
        }
    }
}

/// End upload `id` in `tx`: what it was, with its parts; none when it had ended already.
fn remove_upload_in(tx: &mut postgres::Transaction<'_>, id: &str) -> Result<Option<Upload>> {
    // Locking its row first waits for parts being recorded, which are then in what is returned.
    if tx
        .query_opt(
            "SELECT 1 FROM fdfs_s3_uploads WHERE id = $1 FOR UPDATE",
            &[&id],
        )?
        .is_none()
    {
        return Ok(None);
    }
    let ended = uploads(tx, "WHERE u.id = $1", &[&id])?
        .pop()
        .map(|(_, u)| u);
    tx.execute("DELETE FROM fdfs_s3_uploads WHERE id = $1", &[&id])?;
    Ok(ended)
}

/// The uploads `filter` selects, with their parts, by key then ID.
fn uploads(
    c: &mut impl GenericClient,
    filter: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> Result<Vec<(String, Upload)>> {
    let rows = c.query(
        &format!("{UPLOAD_QUERY} {filter} ORDER BY u.key, u.id, p.n"),
        params,
    )?;
    let mut out: Vec<(String, Upload)> = Vec::new();
    for r in &rows {
        let id: String = r.get(0);
        if out.last().is_none_or(|(last, _)| *last != id) {
            out.push((
                id,
                Upload {
                    bucket: r.get(1),
                    key: r.get(2),
                    created: r.get(3),
                    content_type: r.get(4),
                    meta: decode_meta(r.get(5)),
                    parts: BTreeMap::new(),
                },
            ));
        }
        if let Some(n) = r.get::<_, Option<i32>>(6) {
            let upload = &mut out.last_mut().expect("pushed above").1;
            upload.parts.insert(n as u32, part(r, 7));
        }
    }
    Ok(out)
}

/// The object in `row` from column `at` on ([`OBJECT_COLUMNS`]).
fn object(row: &Row, at: usize) -> Object {
    Object {
        file_id: row.get(at),
        size: row.get::<_, i64>(at + 1) as u64,
        etag: row.get(at + 2),
        content_type: row.get(at + 3),
        modified: row.get(at + 4),
        meta: decode_meta(row.get(at + 5)),
    }
}

/// The part in `row` from column `at` on (file ID, size, ETag, modified).
fn part(row: &Row, at: usize) -> Part {
    Part {
        file_id: row.get(at),
        size: row.get::<_, i64>(at + 1) as u64,
        etag: row.get(at + 2),
        modified: row.get(at + 3),
    }
}

fn encode_meta(meta: &BTreeMap<String, String>) -> String {
    serde_json::to_string(meta).expect("metadata encodes")
}

fn decode_meta(s: &str) -> BTreeMap<String, String> {
    serde_json::from_str(s).unwrap_or_default()
}
