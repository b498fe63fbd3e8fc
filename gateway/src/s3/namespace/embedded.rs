//! The embedded namespace (the default, one gateway): a sled database under the gateway's `s3_data_dir`. Every
//! call blocks (the handlers run them on the blocking pool) and a change is on disk before it returns: sled's
//! `flush` ends with `sync_file_range`, which writes the pages but neither the file's new size nor the disk's
//! cache, so each flush is followed by an `fdatasync` of sled's log (a power cut keeps every change a client
//! was told of: `cli/tests/it/s3_power_cut.rs`), and the directories sled creates are synced once at open.
//!
//! Whether the namespace is whole is recorded in it: a new one (or one whose rebuild from the storage nodes was
//! cut short) is rebuilt before the door answers and before the orphan collector may judge a file by it.

use std::path::Path;
use std::sync::Arc;

use super::{DeleteBucket, Expect, Object, Page, Part, Upload};

/// Key of the `meta` tree set once the namespace is whole (it began empty on an empty door, or a rebuild
/// finished).
const WHOLE: &str = "whole";
/// Key of the `meta` tree set while a rebuild is due and not finished.
const PENDING: &str = "rebuild-pending";

/// The namespace database.
#[derive(Debug, Clone)]
pub struct Embedded {
    /// Whether it must be rebuilt from the storage nodes before the door answers: its directory did not exist
    /// when it was opened (a new door, or a lost disk), or a rebuild was cut short, or it holds nothing and was
    /// never recorded whole (its creation was cut short).
    pub lost: bool,
    db: sled::Db,
    buckets: sled::Tree,
    objects: sled::Tree,
    uploads: sled::Tree,
    meta: sled::Tree,
    /// sled's log file, synced after every flush.
    log: Arc<std::fs::File>,
}

type Result<T> = std::result::Result<T, sled::Error>;

fn object_key(bucket: &str, key: &str) -> Vec<u8> {
    format!("{bucket}/{key}").into_bytes()
}

fn decode(v: &[u8]) -> Option<Object> {
    serde_json::from_slice(v).ok()
}

/// A bucket's value: its creation time, then its marker file's ID after a space (none in a namespace written
/// before markers).
fn bucket_value(v: &[u8]) -> (i64, Option<String>) {
    let v = String::from_utf8_lossy(v);
    match v.split_once(' ') {
        Some((created, marker)) => (created.parse().unwrap_or(0), Some(marker.to_owned())),
        None => (v.parse().unwrap_or(0), None),
    }
}

/// `fsync` a file or directory.
fn sync_path(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

impl Embedded {
    /// Open (or create) the namespace in `dir`.
    pub fn open(dir: &Path) -> Result<Embedded> {
        let path = dir.join("namespace");
        let fresh = !path.exists();
        let db = sled::Config::new().path(&path).open()?;
        // What sled created (its directory, `conf`, the log) must survive a power cut before anything is
        // recorded in it: sled syncs none of their directory entries.
        for p in [path.join("conf"), path.join("db"), path.clone()] {
            sync_path(&p)?;
        }
        if let Some(parent) = path.parent() {
            sync_path(parent)?;
        }
        let log = Arc::new(std::fs::File::open(path.join("db"))?);
        let mut ns = Embedded {
            lost: false,
            buckets: db.open_tree("buckets")?,
            objects: db.open_tree("objects")?,
            uploads: db.open_tree("uploads")?,
            meta: db.open_tree("meta")?,
            db,
            log,
        };
        let whole = ns.meta.contains_key(WHOLE)?;
        let empty = ns.buckets.is_empty() && ns.objects.is_empty() && ns.uploads.is_empty();
        ns.lost = fresh || ns.meta.contains_key(PENDING)? || (!whole && empty);
        if ns.lost {
            ns.meta.insert(PENDING, b"1")?;
            ns.meta.remove(WHOLE)?;
        } else if !whole {
            // Written before the namespace recorded this, and in use since.
            ns.meta.insert(WHOLE, b"1")?;
        }
        ns.commit()?;
        Ok(ns)
    }

    /// Make every change so far durable.
    fn commit(&self) -> Result<()> {
        self.db.flush()?;
        self.log.sync_data()?;
        Ok(())
    }

    /// Record that a rebuild finished.
    pub fn rebuilt(&self) -> Result<()> {
        self.meta.insert(WHOLE, b"1")?;
        self.meta.remove(PENDING)?;
        self.commit()
    }

    /// Whether the namespace is whole (not due for a rebuild).
    pub fn whole(&self) -> Result<bool> {
        self.meta.contains_key(WHOLE)
    }

    /// Create a bucket with its marker file; `false` when it exists already.
    pub fn create_bucket(&self, name: &str, now: i64, marker: Option<&str>) -> Result<bool> {
        let value = match marker {
            Some(m) => format!("{now} {m}"),
            None => now.to_string(),
        };
        let created = self
            .buckets
            .compare_and_swap(name, None as Option<&[u8]>, Some(value.as_bytes()))?
            .is_ok();
        self.commit()?;
        Ok(created)
    }

    /// When the bucket was created, if it exists.
    pub fn bucket(&self, name: &str) -> Result<Option<i64>> {
        Ok(self.buckets.get(name)?.map(|v| bucket_value(&v).0))
    }

    /// The marker file of the bucket: `None` when the bucket does not exist, `Some(None)` when it has none.
    pub fn bucket_marker(&self, name: &str) -> Result<Option<Option<String>>> {
        Ok(self.buckets.get(name)?.map(|v| bucket_value(&v).1))
    }

    /// [`Namespace::mark_bucket`](super::Namespace::mark_bucket).
    pub fn mark_bucket(&self, name: &str, marker: &str) -> Result<bool> {
        loop {
            let Some(old) = self.buckets.get(name)? else {
                return Ok(false);
            };
            let (created, None) = bucket_value(&old) else {
                return Ok(false);
            };
            let new = format!("{created} {marker}");
            if self
                .buckets
                .compare_and_swap(name, Some(old), Some(new.as_bytes()))?
                .is_ok()
            {
                self.commit()?;
                return Ok(true);
            }
        }
    }

    /// Every bucket with its creation time, by name.
    pub fn buckets(&self) -> Result<Vec<(String, i64)>> {
        self.buckets
            .iter()
            .map(|r| {
                let (k, v) = r?;
                Ok((String::from_utf8_lossy(&k).into_owned(), bucket_value(&v).0))
            })
            .collect()
    }

    /// Delete an empty bucket; its marker file.
    pub fn delete_bucket(
        &self,
        name: &str,
    ) -> Result<std::result::Result<Option<String>, DeleteBucket>> {
        if self.buckets.get(name)?.is_none() {
            return Ok(Err(DeleteBucket::Missing));
        }
        if self
            .objects
            .scan_prefix(format!("{name}/"))
            .next()
            .transpose()?
            .is_some()
        {
            return Ok(Err(DeleteBucket::NotEmpty));
        }
        let old = self.buckets.remove(name)?;
        self.commit()?;
        Ok(Ok(old.and_then(|v| bucket_value(&v).1)))
    }

    /// The object at `bucket/key`.
    pub fn get(&self, bucket: &str, key: &str) -> Result<Option<Object>> {
        Ok(self
            .objects
            .get(object_key(bucket, key))?
            .and_then(|v| decode(&v)))
    }

    /// Point `bucket/key` at `object`; the object it pointed at before.
    pub fn put(&self, bucket: &str, key: &str, object: &Object) -> Result<Option<Object>> {
        let value = serde_json::to_vec(object).expect("an object encodes");
        let old = self.objects.insert(object_key(bucket, key), value)?;
        self.commit()?;
        Ok(old.and_then(|v| decode(&v)))
    }

    /// [`Namespace::put_if`](super::Namespace::put_if): a compare-and-swap on the key's current value.
    pub fn put_if(
        &self,
        bucket: &str,
        key: &str,
        object: &Object,
        expect: &Expect,
    ) -> Result<std::result::Result<Option<Object>, ()>> {
        let k = object_key(bucket, key);
        let value = serde_json::to_vec(object).expect("an object encodes");
        loop {
            let current = self.objects.get(&k)?;
            let old = current.as_deref().and_then(decode);
            if !expect.holds(old.as_ref()) {
                return Ok(Err(()));
            }
            // Changed since it was read: read it again.
            if self
                .objects
                .compare_and_swap(&k, current, Some(value.as_slice()))?
                .is_ok()
            {
                self.commit()?;
                return Ok(Ok(old));
            }
        }
    }

    /// Remove `bucket/key`; the object it pointed at.
    pub fn remove(&self, bucket: &str, key: &str) -> Result<Option<Object>> {
        let old = self.objects.remove(object_key(bucket, key))?;
        if old.is_some() {
            self.commit()?;
        }
        Ok(old.and_then(|v| decode(&v)))
    }

    /// Start a multipart upload under `id`.
    pub fn create_upload(&self, id: &str, upload: &Upload) -> Result<()> {
        self.uploads
            .insert(id, serde_json::to_vec(upload).expect("an upload encodes"))?;
        self.commit()?;
        Ok(())
    }

    /// The multipart upload `id`.
    pub fn upload(&self, id: &str) -> Result<Option<Upload>> {
        Ok(self
            .uploads
            .get(id)?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Record part `n` of upload `id`: `Ok(the part it replaced)`, `Err(())` when the upload is gone.
    pub fn put_part(
        &self,
        id: &str,
        n: u32,
        part: &Part,
    ) -> Result<std::result::Result<Option<Part>, ()>> {
        let mut replaced = Err(());
        self.uploads.update_and_fetch(id, |old| {
            let mut u: Upload = serde_json::from_slice(old?).ok()?;
            replaced = Ok(u.parts.insert(n, part.clone()));
            Some(serde_json::to_vec(&u).expect("an upload encodes"))
        })?;
        self.commit()?;
        Ok(replaced)
    }

    /// End upload `id` (completed or aborted); what it was.
    pub fn remove_upload(&self, id: &str) -> Result<Option<Upload>> {
        let old = self.uploads.remove(id)?;
        self.commit()?;
        Ok(old.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// The uploads under way in `bucket`, by key then ID.
    pub fn uploads_in(&self, bucket: &str) -> Result<Vec<(String, Upload)>> {
        let mut out = Vec::new();
        for r in self.uploads.iter() {
            let (k, v) = r?;
            if let Ok(u) = serde_json::from_slice::<Upload>(&v) {
                if u.bucket == bucket {
                    out.push((String::from_utf8_lossy(&k).into_owned(), u));
                }
            }
        }
        out.sort_by(|a, b| (&a.1.key, &a.0).cmp(&(&b.1.key, &b.0)));
        Ok(out)
    }

    /// A page of `bucket`'s keys under `prefix`, after `after`; keys with `delimiter` past the prefix are rolled
    /// up into common prefixes; at most `max` entries (keys and prefixes together).
    pub fn list(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: &str,
        after: &str,
        max: usize,
    ) -> Result<Page> {
        let base = format!("{bucket}/");
        let mut page = Page::default();
        // Where to scan from: the prefix, or past `after` when that is further.
        let mut from: Vec<u8> = if after >= prefix {
            let mut k = object_key(bucket, after);
            k.push(0);
            k
        } else {
            object_key(bucket, prefix)
        };
        let within = format!("{base}{prefix}");
        'scan: loop {
            for r in self.objects.range(from.clone()..) {
                let (k, v) = r?;
                let Ok(full) = std::str::from_utf8(&k) else {
                    continue;
                };
                if !full.starts_with(&within) {
                    break 'scan;
                }
                let key = &full[base.len()..];
                if key <= after {
                    continue;
                }
                let rolled = (!delimiter.is_empty())
                    .then(|| key[prefix.len()..].find(delimiter))
                    .flatten()
                    .map(|p| key[..prefix.len() + p + delimiter.len()].to_owned());
                if page.objects.len() + page.prefixes.len() == max {
                    page.truncated = true;
                    break 'scan;
                }
                match rolled {
                    Some(cp) => {
                        if cp.as_str() <= after {
                            // `after` is this prefix (a continuation): skip what is under it.
                        } else {
                            page.prefixes.push(cp.clone());
                            page.last = Some(cp.clone());
                        }
                        // Past everything under the common prefix (0xFF never occurs in UTF-8).
                        from = object_key(bucket, &cp);
                        from.push(0xFF);
                        continue 'scan;
                    }
                    None => {
                        if let Some(o) = decode(&v) {
                            page.last = Some(key.to_owned());
                            page.objects.push((key.to_owned(), o));
                        }
                    }
                }
            }
            break;
        }
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn obj(n: u64) -> Object {
        Object {
            file_id: format!("group1/M00/00/00/f{n}"),
            size: n,
            etag: "e".into(),
            content_type: "text/plain".into(),
            modified: 0,
            meta: BTreeMap::new(),
        }
    }

    /// A new namespace is due for a rebuild until one finishes, across restarts (a rebuild cut short runs
    /// again); a whole one is not, nor one in use that predates the record.
    #[test]
    fn a_namespace_is_rebuilt_until_a_rebuild_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let ns = Embedded::open(dir.path()).unwrap();
        assert!(ns.lost);
        assert!(!ns.whole().unwrap());
        ns.create_bucket("b", 1, None).unwrap();
        drop(ns);
        let ns = Embedded::open(dir.path()).unwrap();
        assert!(ns.lost, "a rebuild cut short runs again");
        ns.rebuilt().unwrap();
        assert!(ns.whole().unwrap());
        drop(ns);
        let ns = Embedded::open(dir.path()).unwrap();
        assert!(!ns.lost);
        // In use before wholeness was recorded: taken as whole.
        ns.meta.remove(WHOLE).unwrap();
        ns.commit().unwrap();
        drop(ns);
        let ns = Embedded::open(dir.path()).unwrap();
        assert!(!ns.lost);
        assert!(ns.whole().unwrap());
        // Empty and never recorded whole (its creation was cut short): rebuilt.
        ns.delete_bucket("b").unwrap().unwrap();
        ns.meta.remove(WHOLE).unwrap();
        ns.commit().unwrap();
        drop(ns);
        assert!(Embedded::open(dir.path()).unwrap().lost);
    }

    #[test]
    fn a_conditional_put_changes_the_key_only_when_it_holds_what_is_expected() {
        let dir = tempfile::tempdir().unwrap();
        let ns = Embedded::open(dir.path()).unwrap();
        let obj = |f: &str, etag: &str| Object {
            file_id: f.into(),
            size: 1,
            etag: etag.into(),
            content_type: "text/plain".into(),
            modified: 1,
            meta: Default::default(),
        };
        let etag = |e: &str| Expect::Etag(e.into());
        assert_eq!(
            ns.put_if("b", "k", &obj("f1", "e1"), &etag("e1")).unwrap(),
            Err(())
        );
        assert_eq!(
            ns.put_if("b", "k", &obj("f1", "e1"), &Expect::Absent)
                .unwrap(),
            Ok(None)
        );
        assert_eq!(
            ns.put_if("b", "k", &obj("f2", "e2"), &Expect::Absent)
                .unwrap(),
            Err(())
        );
        assert_eq!(
            ns.put_if("b", "k", &obj("f2", "e2"), &etag("e9")).unwrap(),
            Err(())
        );
        assert_eq!(
            ns.put_if("b", "k", &obj("f2", "e2"), &etag("e1")).unwrap(),
            Ok(Some(obj("f1", "e1")))
        );
        assert_eq!(ns.get("b", "k").unwrap(), Some(obj("f2", "e2")));
        // Racing creators: exactly one wins.
        let won: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|i| {
                    let ns = &ns;
                    s.spawn(move || {
                        ns.put_if("b", "race", &obj(&format!("r{i}"), "e"), &Expect::Absent)
                            .unwrap()
                            .is_ok() as usize
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(won, 1);
    }

    #[test]
    fn listing_rolls_up_prefixes_and_pages() {
        let dir = tempfile::tempdir().unwrap();
        let ns = Embedded::open(dir.path()).unwrap();
        assert!(ns
            .create_bucket("b", 1, Some("group1/M00/00/00/marker"))
            .unwrap());
        assert!(!ns.create_bucket("b", 2, None).unwrap());
        assert_eq!(ns.bucket("b").unwrap(), Some(1));
        assert_eq!(
            ns.bucket_marker("b").unwrap(),
            Some(Some("group1/M00/00/00/marker".into()))
        );
        for (i, k) in ["a.txt", "d/1", "d/2", "d/e/3", "z"].iter().enumerate() {
            ns.put("b", k, &obj(i as u64)).unwrap();
        }
        ns.put("bb", "x", &obj(9)).unwrap();
        let all = ns.list("b", "", "", "", 1000).unwrap();
        let keys: Vec<&str> = all.objects.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a.txt", "d/1", "d/2", "d/e/3", "z"]);
        let top = ns.list("b", "", "/", "", 1000).unwrap();
        assert_eq!(top.prefixes, ["d/"]);
        assert_eq!(top.objects.len(), 2);
        let d = ns.list("b", "d/", "/", "", 1000).unwrap();
        assert_eq!(d.prefixes, ["d/e/"]);
        assert_eq!(d.objects.len(), 2);
        // Pages of two, continuing after the last entry (a prefix included).
        let p1 = ns.list("b", "", "/", "", 2).unwrap();
        assert!(p1.truncated);
        assert_eq!(p1.last.as_deref(), Some("d/"));
        let p2 = ns.list("b", "", "/", "d/", 2).unwrap();
        assert!(!p2.truncated);
        assert_eq!(p2.objects[0].0, "z");
        assert!(p2.prefixes.is_empty());
        assert_eq!(ns.delete_bucket("b").unwrap(), Err(DeleteBucket::NotEmpty));
        for k in ["a.txt", "d/1", "d/2", "d/e/3", "z"] {
            assert!(ns.remove("b", k).unwrap().is_some());
        }
        assert_eq!(
            ns.delete_bucket("b").unwrap(),
            Ok(Some("group1/M00/00/00/marker".into()))
        );
        assert_eq!(ns.bucket_marker("b").unwrap(), None);
        // A bucket recorded before markers gets one, once.
        assert!(ns.create_bucket("old", 3, None).unwrap());
        assert_eq!(ns.bucket_marker("old").unwrap(), Some(None));
        assert!(ns.mark_bucket("old", "group1/M00/00/00/m1").unwrap());
        assert!(!ns.mark_bucket("old", "group1/M00/00/00/m2").unwrap());
        assert!(!ns.mark_bucket("none", "group1/M00/00/00/m3").unwrap());
        assert_eq!(ns.bucket("old").unwrap(), Some(3));
        assert_eq!(
            ns.bucket_marker("old").unwrap(),
            Some(Some("group1/M00/00/00/m1".into()))
        );
        assert_eq!(ns.delete_bucket("b").unwrap(), Err(DeleteBucket::Missing));
    }
}
