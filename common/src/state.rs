//! A server's own state on disk (the tracker's `data_dir`, a storage node's store paths): checked writable
//! before the server announces anything, and small files written atomically. Errors name the setting and the
//! path, so that an operator reading `fdfs: error: ...` knows what to fix.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A state directory or file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{setting} {}: {what}: {source}{hint}", path.display())]
pub struct StateError {
    /// The config key (and flag) that names the path, e.g. `data_dir`.
    pub setting: String,
    /// The directory or file.
    pub path: PathBuf,
    /// What was being done, e.g. `cannot create the directory`.
    pub what: &'static str,
    /// The system's error.
    pub source: std::io::Error,
    /// How to fix it, when the error says (permissions).
    hint: &'static str,
}

impl StateError {
    /// The error of `what` on `path`, named by its `setting`.
    pub fn new(setting: &str, path: &Path, what: &'static str, source: std::io::Error) -> Self {
        let hint = if matches!(
            source.kind(),
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
        ) {
            " (make it writable by the user the server runs as: the shipped systemd units get \
             /var/lib/fdfs from StateDirectory=fdfs; see docs/DEPLOY.md)"
        } else {
            ""
        };
        StateError {
            setting: setting.to_owned(),
            path: path.to_owned(),
            what,
            source,
            hint,
        }
    }
}

/// Create `dir` if needed and prove it writable: a probe file is created, fsynced and removed. Blocking.
pub fn check_writable(dir: &Path, setting: &str) -> Result<(), StateError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StateError::new(setting, dir, "cannot create the directory", e))?;
    let probe = dir.join(format!(".fdfs-write-probe-{}", std::process::id()));
    let written = std::fs::File::create(&probe).and_then(|mut f| {
        f.write_all(b"probe")?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&probe);
    written.map_err(|e| StateError::new(setting, dir, "cannot write in the directory", e))
}

/// Write `bytes` to `path` atomically and durably: temp file beside it, fsync, rename, fsync the directory.
/// Blocking.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| "state".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_writable_dir_passes_and_an_unwritable_one_names_setting_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/b");
        check_writable(&state, "data_dir").unwrap();
        assert!(state.is_dir());
        assert_eq!(
            std::fs::read_dir(&state).unwrap().count(),
            0,
            "probe left behind"
        );

        write_atomic(&state.join("x.json"), b"{}").unwrap();
        assert_eq!(std::fs::read(state.join("x.json")).unwrap(), b"{}");

        // Root ignores permission bits: the refusal of a read-only directory is checked where it can be.
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o555)).unwrap();
        if let Err(e) = check_writable(&state, "data_dir") {
            let e = e.to_string();
            assert!(e.starts_with("data_dir "), "{e}");
            assert!(e.contains(&state.display().to_string()), "{e}");
            assert!(e.contains("docs/DEPLOY.md"), "{e}");
        }
        // A file where the directory should be.
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let e = check_writable(&file.join("sub"), "store_path")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("store_path "), "{e}");
        assert!(e.contains("cannot create the directory"), "{e}");
    }
}
