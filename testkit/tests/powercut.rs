//! The power-cut simulator ([`fdfs_testkit::powercut`]) against real file operations on a real mount: what
//! was never synced is gone after a cut (the harness can fail), what was synced stays, under concurrent load
//! too, and a real database (sled) recovers what it flushed. Needs root and `/dev/fuse`; skipped (saying so)
//! only when `/dev/fuse` cannot be opened.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use fdfs_testkit::content;
use fdfs_testkit::powercut::{unavailable, Cut, CutReport, Disk};

/// A mounted disk in a temp dir (the disk is dropped, so unmounted, before its directories).
struct Rig {
    disk: Disk,
    dir: fdfs_testkit::TestDir,
}

impl Rig {
    fn path(&self, rel: &str) -> PathBuf {
        self.disk.path().join(rel)
    }

    fn cut(&mut self, how: Cut) -> CutReport {
        self.disk.cut(how).expect("cut")
    }
}

/// A fresh disk, or `None` (the test is skipped, saying why) when `/dev/fuse` cannot be opened.
fn rig() -> Option<Rig> {
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
        return None;
    }
    let dir = fdfs_testkit::tempdir(256 << 20);
    let (state, mnt) = (dir.path().join("state"), dir.path().join("mnt"));
    fs::create_dir(&state).unwrap();
    fs::create_dir(&mnt).unwrap();
    let disk = Disk::mount(&state, &mnt).expect("mount");
    Some(Rig { disk, dir })
}

fn fsync(path: &Path) {
    File::open(path)
        .and_then(|f| f.sync_all())
        .unwrap_or_else(|e| panic!("fsync {}: {e}", path.display()));
}

/// Write `bytes` to `path` (created or replaced), fsync it, fsync its directory.
fn write_durably(path: &Path, bytes: &[u8]) {
    let mut f = File::create(path).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
    fsync(path.parent().unwrap());
}

fn read(path: &Path) -> Option<Vec<u8>> {
    match fs::read(path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("read {}: {e}", path.display()),
    }
}

#[test]
fn power_cut_empties_a_file_whose_data_was_never_synced() {
    let Some(mut r) = rig() else { return };
    fs::write(r.path("a"), b"never synced").unwrap();
    fsync(r.disk.path());
    let report = r.cut(Cut::LoseAll);
    assert_eq!(read(&r.path("a")).as_deref(), Some(&b""[..]), "{report:?}");
    assert_eq!(report.files_reverted, 1);
}

#[test]
fn power_cut_drops_a_synced_file_whose_directory_was_never_synced() {
    let Some(mut r) = rig() else { return };
    let mut f = File::create(r.path("a")).unwrap();
    f.write_all(b"synced data").unwrap();
    f.sync_all().unwrap();
    drop(f);
    let report = r.cut(Cut::LoseAll);
    assert_eq!(read(&r.path("a")), None, "{report:?}");
    assert_eq!(report.entries_reverted, 1);
}

#[test]
fn power_cut_keeps_a_file_synced_with_its_directory() {
    let Some(mut r) = rig() else { return };
    let body = content(1, 100_000);
    write_durably(&r.path("a"), &body);
    assert_eq!(r.cut(Cut::LoseAll), CutReport::default());
    assert_eq!(read(&r.path("a")), Some(body));
    // What survived is durable: a second cut changes nothing.
    r.cut(Cut::LoseAll);
    assert_eq!(read(&r.path("a")), Some(content(1, 100_000)));
    assert_eq!(r.disk.syncs(), (1, 1));
}

#[test]
fn power_cut_brings_back_the_old_file_under_a_name_renamed_over_without_a_directory_sync() {
    let Some(mut r) = rig() else { return };
    write_durably(&r.path("name"), b"old");
    let mut f = File::create(r.path("name.tmp")).unwrap();
    f.write_all(b"new").unwrap();
    f.sync_all().unwrap();
    drop(f);
    fs::rename(r.path("name.tmp"), r.path("name")).unwrap();
    assert_eq!(read(&r.path("name")).as_deref(), Some(&b"new"[..]));
    r.cut(Cut::LoseAll);
    assert_eq!(read(&r.path("name")).as_deref(), Some(&b"old"[..]));
    assert_eq!(read(&r.path("name.tmp")), None);

    // The same with the directory synced after the rename: the new content stays.
    write_durably(&r.path("name.tmp"), b"new");
    fs::rename(r.path("name.tmp"), r.path("name")).unwrap();
    fsync(r.disk.path());
    r.cut(Cut::LoseAll);
    assert_eq!(read(&r.path("name")).as_deref(), Some(&b"new"[..]));
    assert_eq!(read(&r.path("name.tmp")), None);
}

#[test]
fn power_cut_keeps_a_renamed_file_under_both_names_when_only_the_target_directory_was_synced() {
    let Some(mut r) = rig() else { return };
    for d in ["src", "dst"] {
        fs::create_dir(r.path(d)).unwrap();
    }
    fsync(r.disk.path());
    write_durably(&r.path("src/f"), b"moved");
    fs::rename(r.path("src/f"), r.path("dst/f")).unwrap();
    fsync(&r.path("dst"));
    r.cut(Cut::LoseAll);
    assert_eq!(read(&r.path("src/f")).as_deref(), Some(&b"moved"[..]));
    assert_eq!(read(&r.path("dst/f")).as_deref(), Some(&b"moved"[..]));
    let (a, b) = (
        fs::metadata(r.path("src/f")).unwrap(),
        fs::metadata(r.path("dst/f")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "one inode, two names");
}

#[test]
fn power_cut_drops_appends_after_the_last_fsync() {
    let Some(mut r) = rig() else { return };
    let log = r.path("log");
    write_durably(&log, b"first ");
    let mut f = OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(b"second ").unwrap();
    f.sync_data().unwrap();
    f.write_all(b"third").unwrap();
    drop(f);
    assert_eq!(read(&log).as_deref(), Some(&b"first second third"[..]));
    r.cut(Cut::LoseAll);
    assert_eq!(read(&log).as_deref(), Some(&b"first second "[..]));

    // After a cut the file exists from the start of the mount: a change in place goes back too.
    let f = OpenOptions::new().write(true).open(&log).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"FIRST", 0).unwrap();
    f.sync_all().unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"SECOND", 6).unwrap();
    drop(f);
    r.cut(Cut::LoseAll);
    assert_eq!(read(&log).as_deref(), Some(&b"FIRST second "[..]));
}

#[test]
fn power_cut_undoes_a_truncation_that_was_not_synced() {
    let Some(mut r) = rig() else { return };
    let body = content(2, 50_000);
    write_durably(&r.path("f"), &body);
    let f = OpenOptions::new().write(true).open(r.path("f")).unwrap();
    f.set_len(10).unwrap();
    f.set_len(30_000).unwrap(); // zeros from 10 on
    drop(f);
    assert_eq!(fs::metadata(r.path("f")).unwrap().len(), 30_000);
    r.cut(Cut::LoseAll);
    assert_eq!(read(&r.path("f")), Some(body.clone()));

    // Synced, the truncation (and the zeros after it) stay.
    let f = OpenOptions::new().write(true).open(r.path("f")).unwrap();
    f.set_len(10).unwrap();
    f.set_len(30_000).unwrap();
    f.sync_all().unwrap();
    drop(f);
    r.cut(Cut::LoseAll);
    let mut want = body[..10].to_vec();
    want.resize(30_000, 0);
    assert_eq!(read(&r.path("f")), Some(want));
}

#[test]
fn power_cut_keeps_hard_links_one_inode() {
    let Some(mut r) = rig() else { return };
    fs::create_dir(r.path("other")).unwrap();
    fsync(r.disk.path());
    write_durably(&r.path("a"), b"shared");
    fs::hard_link(r.path("a"), r.path("b")).unwrap();
    fs::hard_link(r.path("a"), r.path("other/c")).unwrap();
    fsync(r.disk.path());
    fsync(&r.path("other"));
    // A link made after the last sync of its directory goes.
    fs::hard_link(r.path("a"), r.path("other/d")).unwrap();
    r.cut(Cut::LoseAll);
    let ino = fs::metadata(r.path("a")).unwrap().ino();
    for name in ["a", "b", "other/c"] {
        let m = fs::metadata(r.path(name)).unwrap();
        assert_eq!((m.ino(), m.nlink()), (ino, 3), "{name}");
        assert_eq!(read(&r.path(name)).as_deref(), Some(&b"shared"[..]));
    }
    assert_eq!(read(&r.path("other/d")), None);

    // Unlinking one name without syncing its directory: it is back after the cut, still the same inode.
    fs::remove_file(r.path("b")).unwrap();
    r.cut(Cut::LoseAll);
    let m = fs::metadata(r.path("b")).unwrap();
    assert_eq!(
        (m.ino(), m.nlink()),
        (fs::metadata(r.path("a")).unwrap().ino(), 3)
    );
}

#[test]
fn power_cut_keeps_a_directory_tree_made_durable_level_by_level() {
    let Some(mut r) = rig() else { return };
    let body = content(3, 4096);
    let mut dir = r.disk.path().to_owned();
    for level in ["data", "AB", "CD"] {
        fs::create_dir(dir.join(level)).unwrap();
        fsync(&dir);
        dir.push(level);
    }
    write_durably(&dir.join("file"), &body);
    // A second tree whose middle level was never synced in its parent.
    fs::create_dir_all(r.path("data/EF/01")).unwrap();
    write_durably(&r.path("data/EF/01/file"), &body);
    fsync(&r.path("data/EF"));
    let report = r.cut(Cut::LoseAll);
    assert_eq!(read(&r.path("data/AB/CD/file")), Some(body));
    assert!(!r.path("data/EF").exists(), "{report:?}");
}

#[test]
fn power_cut_brings_back_a_file_unlinked_without_a_directory_sync() {
    let Some(mut r) = rig() else { return };
    write_durably(&r.path("kept"), b"still here");
    write_durably(&r.path("gone"), b"deleted for good");
    fs::remove_file(r.path("gone")).unwrap();
    fsync(r.disk.path());
    fs::remove_file(r.path("kept")).unwrap();
    fs::write(r.path("late"), b"x").unwrap();
    r.cut(Cut::LoseAll);
    assert_eq!(read(&r.path("kept")).as_deref(), Some(&b"still here"[..]));
    assert_eq!(read(&r.path("gone")), None);
    assert_eq!(read(&r.path("late")), None);
}

#[test]
fn power_cut_random_keeps_a_subset_and_never_mixes_contents() {
    let Some(mut r) = rig() else { return };
    const N: usize = 40;
    let durable = |i: usize| content(100 + i, 1000 + i * 37);
    let live = |i: usize| content(200 + i, 500 + i * 53);
    for i in 0..N {
        let mut f = File::create(r.path(&format!("f{i}"))).unwrap();
        f.write_all(&durable(i)).unwrap();
        f.sync_all().unwrap();
    }
    fsync(r.disk.path());
    for i in 0..N {
        // Rewritten in place (not synced), and a new unsynced file beside each.
        fs::write(r.path(&format!("f{i}")), live(i)).unwrap();
        fs::write(r.path(&format!("new{i}")), live(i)).unwrap();
    }
    let report = r.cut(Cut::Random(7));
    let (mut kept, mut reverted, mut new_kept) = (0, 0, 0);
    for i in 0..N {
        let got = read(&r.path(&format!("f{i}"))).expect("a durable name stays");
        if got == live(i) {
            kept += 1;
        } else {
            assert_eq!(
                got,
                durable(i),
                "f{i} is neither its durable nor its live content"
            );
            reverted += 1;
        }
        if let Some(got) = read(&r.path(&format!("new{i}"))) {
            assert!(
                got == live(i) || got.is_empty(),
                "new{i}: {} bytes",
                got.len()
            );
            new_kept += 1;
        }
    }
    assert!(kept > 0 && reverted > 0, "kept {kept}, reverted {reverted}");
    assert!(new_kept > 0 && new_kept < N, "{new_kept} new files kept");
    assert_eq!(report.entries_reverted, N - new_kept);
    assert!(report.files_reverted >= reverted, "{report:?}");
}

#[test]
fn power_cut_random_with_one_seed_loses_the_same_changes() {
    let outcome = || -> Option<Vec<Option<Vec<u8>>>> {
        let mut r = rig()?;
        for i in 0..20 {
            write_durably(&r.path(&format!("f{i}")), &content(i, 100));
            fs::write(r.path(&format!("f{i}")), content(50 + i, 200)).unwrap();
            fs::write(r.path(&format!("g{i}")), content(80 + i, 300)).unwrap();
        }
        r.cut(Cut::Random(42));
        Some(
            (0..20)
                .flat_map(|i| [format!("f{i}"), format!("g{i}")])
                .map(|n| read(&r.path(&n)))
                .collect(),
        )
    };
    let Some(first) = outcome() else { return };
    assert_eq!(Some(first), outcome());
}

#[test]
fn power_cut_keeps_every_file_synced_by_many_threads_at_once() {
    let Some(mut r) = rig() else { return };
    const THREADS: usize = 8;
    const FILES: usize = 200;
    let size = |t: usize, i: usize| 4096 + ((t * FILES + i) * 7919) % (60 * 1024);
    let run = |root: &Path| -> f64 {
        for t in 0..THREADS {
            fs::create_dir(root.join(format!("t{t}"))).unwrap();
        }
        fsync(root);
        let start = Instant::now();
        std::thread::scope(|s| {
            for t in 0..THREADS {
                s.spawn(move || {
                    // Half the threads share one directory, the others have their own.
                    let dir = root.join(format!("t{}", if t % 2 == 0 { 0 } else { t }));
                    for i in 0..FILES {
                        let body = content(t * FILES + i, size(t, i));
                        write_durably(&dir.join(format!("{t}-{i}")), &body);
                    }
                });
            }
        });
        (THREADS * FILES) as f64 / start.elapsed().as_secs_f64()
    };
    let through_fuse = run(r.disk.path());
    // Noise the cut must drop: unsynced files and an unsynced rewrite.
    fs::write(r.path("t0/0-0"), b"rewritten").unwrap();
    fs::write(r.path("t1/unsynced"), b"x").unwrap();
    let report = r.cut(Cut::LoseAll);
    assert_eq!(
        report,
        CutReport {
            files_reverted: 1,
            entries_reverted: 1
        }
    );
    for t in 0..THREADS {
        let dir = format!("t{}", if t % 2 == 0 { 0 } else { t });
        for i in 0..FILES {
            let got = read(&r.path(&format!("{dir}/{t}-{i}")));
            assert!(
                got.as_deref() == Some(&content(t * FILES + i, size(t, i))[..]),
                "{dir}/{t}-{i}: {:?} bytes",
                got.map(|g| g.len())
            );
        }
    }
    let direct = r.dir.path().join("direct");
    fs::create_dir(&direct).unwrap();
    let on_backing = run(&direct);
    let (files, dirs) = r.disk.syncs();
    eprintln!(
        "{} files of 4-64 KiB by {THREADS} threads, each with fsync of file and directory: \
         {through_fuse:.0} files/s through the simulator, {on_backing:.0} files/s on its backing \
         directory ({files} file syncs, {dirs} directory syncs seen)",
        THREADS * FILES
    );
}

#[test]
fn power_cut_keeps_what_sled_flushed() {
    let Some(mut r) = rig() else { return };
    let path = r.path("db");
    let key = |i: u32| format!("key-{i:05}");
    let open = |p: &Path| {
        sled::Config::new()
            .path(p)
            .flush_every_ms(None)
            .open()
            .expect("open sled")
    };
    let db = open(&path);
    for i in 0..1000 {
        db.insert(key(i), content(i as usize, 100)).unwrap();
    }
    db.flush().unwrap();
    // sled 0.34 syncs its data files but never a directory (nor its `conf`): without these, a power cut
    // on a strict filesystem may take the whole database, as this disk shows (see the module docs).
    for p in [
        path.join("conf"),
        path.join("blobs"),
        path.clone(),
        r.path(""),
    ] {
        fsync(&p);
    }
    for i in 1000..2000 {
        db.insert(key(i), content(i as usize, 100)).unwrap();
    }
    drop(db);
    let report = r.cut(Cut::LoseAll);
    let db = open(&path);
    for i in 0..1000 {
        assert_eq!(
            db.get(key(i)).unwrap().as_deref(),
            Some(&content(i as usize, 100)[..]),
            "flushed {} lost ({report:?})",
            key(i)
        );
    }
    let unflushed = (1000..2000)
        .filter(|&i| db.get(key(i)).unwrap().is_some())
        .count();
    eprintln!("sled after a cut: 1000 flushed keys all there, {unflushed} of 1000 unflushed kept ({report:?})");
}
