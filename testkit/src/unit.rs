//! Servers started the way systemd starts them from the shipped units (`deploy/systemd/*.service`), inside a
//! network namespace of [`crate::netns`]: the unit's `ExecStart`, as its `User`/`Group`, with the variables of
//! its `EnvironmentFile`s and `Environment=` lines only, its `StateDirectory`s made and owned by that user (with
//! `StateDirectoryMode`), stdout and stderr to a log file (the journal).
//!
//! Each simulated host has its own root directory; in a private mount namespace of the child, the host's
//! `etc/fdfs`, `var/lib/fdfs` and `usr/local/bin` are bind-mounted on `/etc/fdfs`, `/var/lib/fdfs` and
//! `/usr/local/bin`, so the unit's absolute paths are used as written. Those mount points are created on this
//! machine (empty directories) when missing. Needs root, like the namespaces.
//!
//! The second module with `unsafe` (after `fdfs_common::sys`): the child's set-up between fork and exec (mount
//! namespace, bind mounts, the unit's user), with libc; test support only.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use crate::netns::Net;

/// The paths a host's directories are mounted on, relative to its root directory and to `/`.
pub const MOUNTED: [&str; 3] = ["etc/fdfs", "var/lib/fdfs", "usr/local/bin"];

/// What the `[Service]` section of a unit says about starting it.
#[derive(Debug, Clone, Default)]
pub struct Unit {
    /// `User=`.
    pub user: Option<String>,
    /// `Group=`.
    pub group: Option<String>,
    /// `EnvironmentFile=` paths; a leading `-` (optional file) is kept.
    pub environment_files: Vec<String>,
    /// `Environment=` assignments.
    pub environment: Vec<(String, String)>,
    /// `StateDirectory=` names (under `/var/lib`).
    pub state_directories: Vec<String>,
    /// `StateDirectoryMode=` (octal).
    pub state_directory_mode: Option<u32>,
    /// `ExecStart=`, split on whitespace (the shipped units quote nothing).
    pub exec_start: Vec<String>,
}

impl Unit {
    /// Parse a unit file; panics on a missing `ExecStart` or a directive this harness does not understand
    /// among those that change how the process starts.
    pub fn load(path: &Path) -> Unit {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let mut unit = Unit::default();
        let mut section = String::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if line.starts_with('[') {
                section = line.to_owned();
                continue;
            }
            if section != "[Service]" {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: bad line {line:?}", path.display()));
            let value = value.trim();
            match key.trim() {
                "User" => unit.user = Some(value.to_owned()),
                "Group" => unit.group = Some(value.to_owned()),
                "EnvironmentFile" => unit.environment_files.push(value.to_owned()),
                "Environment" => {
                    for kv in value.split_whitespace() {
                        let (k, v) = kv.split_once('=').expect("Environment=K=V");
                        unit.environment
                            .push((k.to_owned(), v.trim_matches('"').to_owned()));
                    }
                }
                "StateDirectory" => unit
                    .state_directories
                    .extend(value.split_whitespace().map(str::to_owned)),
                "StateDirectoryMode" => {
                    unit.state_directory_mode =
                        Some(u32::from_str_radix(value, 8).expect("octal StateDirectoryMode"));
                }
                "ExecStart" => {
                    unit.exec_start = value.split_whitespace().map(str::to_owned).collect();
                }
                "WorkingDirectory" | "RootDirectory" | "ExecStartPre" | "DynamicUser" => {
                    panic!(
                        "{}: {key} is not emulated by the test harness",
                        path.display()
                    )
                }
                _ => {}
            }
        }
        assert!(
            !unit.exec_start.is_empty(),
            "{}: no ExecStart",
            path.display()
        );
        unit
    }
}

/// `KEY=VALUE` lines of an environment file (comments and blank lines skipped, quotes removed).
pub fn read_environment_file(path: &Path) -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: bad line {l:?}", path.display()));
            (k.trim().to_owned(), v.trim().trim_matches('"').to_owned())
        })
        .collect()
}

/// uid and gid of a system user, created (`useradd --system`) when missing.
pub fn system_user(name: &str) -> (u32, u32) {
    let id = |flag: &str| {
        std::process::Command::new("id")
            .args([flag, name])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<u32>()
                    .ok()
            })
    };
    if id("-u").is_none() {
        let status = std::process::Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--home-dir",
                "/var/lib/fdfs",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ])
            .status()
            .expect("running useradd");
        assert!(status.success(), "useradd {name}");
    }
    (id("-u").expect("uid"), id("-g").expect("gid"))
}

/// A simulated host: its root directory, holding what the mount points show to its processes.
#[derive(Debug, Clone)]
pub struct HostRoot {
    /// The host (its network namespace in the [`Net`]).
    pub name: String,
    /// Its root directory on this machine.
    pub root: PathBuf,
}

impl HostRoot {
    /// The host's root under `base` (made readable for a service user on the way down).
    pub fn new(base: &Path, name: &str) -> HostRoot {
        let root = base.join(name);
        for rel in MOUNTED {
            std::fs::create_dir_all(root.join(rel)).expect("host dirs");
        }
        for dir in [base, root.as_path()] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        for rel in [
            "etc",
            "etc/fdfs",
            "var",
            "var/lib",
            "usr",
            "usr/local",
            "usr/local/bin",
        ] {
            std::fs::set_permissions(root.join(rel), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        HostRoot {
            name: name.to_owned(),
            root,
        }
    }

    /// The host's view of absolute path `p` (`/etc/fdfs/x` -> `<root>/etc/fdfs/x`).
    pub fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }
}

/// Start `unit` on `host` (its namespace in `net`): what `systemctl start` would run. The process dies with the
/// thread that starts it; its stdout and stderr go to `log`.
pub fn start(net: &Net, host: &HostRoot, unit: &Unit, log: &Path) -> Child {
    let user = unit.user.as_deref().unwrap_or("root");
    let (uid, mut gid) = system_user(user);
    if let Some(g) = &unit.group {
        if g != user {
            gid = group_id(g);
        }
    }
    for dir in &unit.state_directories {
        let path = host.path(&format!("/var/lib/{dir}"));
        std::fs::create_dir_all(&path).expect("state directory");
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown state directory");
        let mode = unit.state_directory_mode.unwrap_or(0o755);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let mut env: Vec<(String, String)> = vec![(
        "PATH".into(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
    )];
    for file in &unit.environment_files {
        let (optional, file) = match file.strip_prefix('-') {
            Some(f) => (true, f),
            None => (false, file.as_str()),
        };
        let path = host.path(file);
        if optional && !path.exists() {
            continue;
        }
        env.extend(read_environment_file(&path));
    }
    env.extend(unit.environment.iter().cloned());
    // Mount points on this machine (empty directories when created here).
    for rel in MOUNTED {
        std::fs::create_dir_all(Path::new("/").join(rel)).expect("mount point");
    }
    let binds: Vec<(CString, CString)> = MOUNTED
        .iter()
        .map(|rel| {
            (
                CString::new(host.root.join(rel).as_os_str().as_encoded_bytes()).expect("path"),
                CString::new(format!("/{rel}")).expect("path"),
            )
        })
        .collect();
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open log");
    let mut cmd = std::process::Command::new(&unit.exec_start[0]);
    net.enter(&host.name, &mut cmd);
    cmd.args(&unit.exec_start[1..])
        .env_clear()
        .envs(env)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_file.try_clone().expect("log")))
        .stderr(Stdio::from(log_file));
    // SAFETY: only async-signal-safe syscalls on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fail = || Err(std::io::Error::last_os_error());
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return fail();
            }
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return fail();
            }
            let root = c"/";
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return fail();
            }
            for (src, dst) in &binds {
                if libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ) != 0
                {
                    return fail();
                }
            }
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return fail();
            }
            Ok(())
        });
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("starting {:?} on {}: {e}", unit.exec_start, host.name))
}

/// gid of a group.
fn group_id(name: &str) -> u32 {
    let out = std::process::Command::new("getent")
        .args(["group", name])
        .output()
        .expect("getent");
    String::from_utf8_lossy(&out.stdout)
        .split(':')
        .nth(2)
        .and_then(|g| g.trim().parse().ok())
        .unwrap_or_else(|| panic!("no group {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_directives_that_start_a_service() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.service");
        std::fs::write(
            &f,
            "[Unit]\nDescription=x\nUser=nobody\n[Service]\nUser=fdfs\nGroup=fdfs\n\
             EnvironmentFile=/etc/fdfs/fdfs.env\nEnvironment=A=1 B=\"2\"\n\
             ExecStart=/usr/local/bin/fdfs-tracker --config /etc/fdfs/tracker.toml\n\
             StateDirectory=fdfs fdfs/t\nStateDirectoryMode=0750\n[Install]\nWantedBy=multi-user.target\n",
        )
        .unwrap();
        let u = Unit::load(&f);
        assert_eq!(u.user.as_deref(), Some("fdfs"));
        assert_eq!(u.environment_files, ["/etc/fdfs/fdfs.env"]);
        assert_eq!(
            u.environment,
            [("A".into(), "1".into()), ("B".into(), "2".into())]
        );
        assert_eq!(u.state_directories, ["fdfs", "fdfs/t"]);
        assert_eq!(u.state_directory_mode, Some(0o750));
        assert_eq!(
            u.exec_start,
            [
                "/usr/local/bin/fdfs-tracker",
                "--config",
                "/etc/fdfs/tracker.toml"
            ]
        );
        std::fs::write(dir.path().join("e"), "# c\nFDFS_X=\"y\"\n\nFDFS_Z=1\n").unwrap();
        assert_eq!(
            read_environment_file(&dir.path().join("e")),
            [("FDFS_X".into(), "y".into()), ("FDFS_Z".into(), "1".into())]
        );
    }
}
