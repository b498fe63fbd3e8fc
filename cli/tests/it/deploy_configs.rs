//! The example configs in `deploy/config/` are real: each server process starts from its file (with only the
//! listen address and the data paths overridden by flags) and prints `listening on`; every commented-out key
//! is valid too once uncommented; and every key the server's `Config` accepts appears in its example.

use std::path::{Path, PathBuf};

use fdfs_testkit::node::try_spawn_server;
use fdfs_testkit::{args, tempdir, Role};
use serde::de::DeserializeOwned;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/config")
        .join(name)
}

/// Start `role` with `--config file` and the extra flags; it must print `listening on`, then is stopped.
fn starts(role: Role, file: &Path, extra: &[String]) {
    let dir = tempdir(0);
    let log = dir.path().join("server.log");
    let mut a = vec!["--config".to_owned(), file.display().to_string()];
    a.extend(extra.iter().cloned());
    match try_spawn_server(role, "127.0.0.1:0", &a, &log) {
        Ok((mut child, addr)) => {
            assert!(addr.ip().is_loopback(), "--listen did not override: {addr}");
            let _ = child.kill();
            let _ = child.wait();
        }
        Err(e) => panic!(
            "{} does not start from its example config: {e}",
            file.display()
        ),
    }
}

/// The example with every `# key = value` line uncommented.
fn uncommented(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let key = regex::Regex::new(r"^#\s*([a-z0-9_]+\s*=.*)$").unwrap();
    text.lines()
        .map(|l| match key.captures(l) {
            Some(c) => c[1].to_owned(),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Keys of the config file that no flag can carry: a list of tables (the S3 door's access keys with their
/// buckets and rights; `--s3-access-key`/`--s3-secret-key` give one key with every bucket).
const TOML_ONLY: [&str; 1] = ["s3_keys"];

/// Old key names still read for files written before the keys took the flags' names (serde aliases).
const OLD_NAMES: [&str; 2] = ["trackers", "store_paths"];

/// The field names `T` accepts, read from serde's `unknown field` error (which lists the expected ones), without
/// the [`OLD_NAMES`].
fn accepted_keys<T: DeserializeOwned + Default + std::fmt::Debug>() -> Vec<String> {
    let err = toml_from_str::<T>("no_such_key_in_any_config = 1\n").unwrap_err();
    let list = err
        .split_once("expected one of ")
        .or_else(|| err.split_once("expected "))
        .unwrap_or_else(|| panic!("unexpected error shape: {err}"))
        .1;
    let re = regex::Regex::new(r"`([a-z0-9_]+)`").unwrap();
    let keys: Vec<String> = re
        .captures_iter(list)
        .map(|c| c[1].to_owned())
        .filter(|k| !OLD_NAMES.contains(&k.as_str()))
        .collect();
    assert!(!keys.is_empty(), "no keys found in: {err}");
    keys
}

/// Parse TOML through the same loader the servers use (via a temp file).
fn toml_from_str<T: DeserializeOwned + Default + std::fmt::Debug>(text: &str) -> Result<T, String> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, text).unwrap();
    fdfs_common::config::load::<T>(Some(&f)).map_err(|e| e.to_string())
}

fn check_example<T: DeserializeOwned + Default + std::fmt::Debug>(name: &str) {
    let file = example(name);
    fdfs_common::config::load::<T>(Some(&file))
        .unwrap_or_else(|e| panic!("{name} as shipped: {e}"));
    let all = uncommented(&file);
    toml_from_str::<T>(&all).unwrap_or_else(|e| panic!("{name} with every key uncommented: {e}"));
    let set = regex::Regex::new(r"(?m)^([a-z0-9_]+)\s*=").unwrap();
    let present: Vec<&str> = set
        .captures_iter(&all)
        .map(|c| c.get(1).unwrap().as_str())
        .collect();
    let keys = accepted_keys::<T>();
    eprintln!("{name}: {} keys: {keys:?}", keys.len());
    for key in keys {
        assert!(
            present.contains(&key.as_str()),
            "{name} does not show key `{key}`"
        );
    }
}

#[test]
fn example_configs_cover_and_parse() {
    check_example::<fdfs_storage::Config>("storage.toml");
    check_example::<fdfs_gateway::Config>("gateway.toml");
    check_example::<fdfs_tracker::Config>("tracker.toml");
}

#[test]
fn storage_starts_from_its_example() {
    let store = tempdir(0);
    starts(
        Role::Storage,
        &example("storage.toml"),
        &args(&["--store-path", &store.path().display().to_string()]),
    );
}

#[test]
fn gateway_starts_from_its_example() {
    starts(Role::Gateway, &example("gateway.toml"), &[]);
}

#[test]
fn tracker_starts_from_its_example() {
    let data = fdfs_testkit::tempdir(0);
    starts(
        Role::Tracker,
        &example("tracker.toml"),
        &args(&["--data-dir", &data.path().display().to_string()]),
    );
}

/// The flags of server subcommand `sub` as `(long name, env variable)`, leaving out `--config` (the file
/// itself, flag and `FDFS_CONFIG` only) and hidden test hooks.
fn flags(sub: &str) -> Vec<(String, Option<String>)> {
    let cmd = fdfs::Cli::command_line();
    let sc = cmd
        .find_subcommand(sub)
        .unwrap_or_else(|| panic!("no subcommand {sub}"));
    sc.get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| {
            let long = a.get_long()?;
            Some((
                long.to_owned(),
                a.get_env().map(|e| e.to_string_lossy().into_owned()),
            ))
        })
        .filter(|(long, _)| !matches!(long.as_str(), "help" | "version"))
        .collect()
}

fn check_names<T: DeserializeOwned + Default + std::fmt::Debug>(sub: &str) {
    let keys = accepted_keys::<T>();
    let mut flagged = Vec::new();
    for (long, env) in flags(sub) {
        if long == "config" {
            assert_eq!(env.as_deref(), Some("FDFS_CONFIG"));
            continue;
        }
        let key = long.replace('-', "_");
        assert!(
            keys.contains(&key),
            "fdfs {sub} --{long} has no TOML key `{key}` (keys: {keys:?})"
        );
        let want = format!("FDFS_{}", key.to_ascii_uppercase());
        assert_eq!(
            env.as_deref(),
            Some(want.as_str()),
            "fdfs {sub} --{long}: env variable"
        );
        flagged.push(key);
    }
    for key in keys.iter().filter(|k| !TOML_ONLY.contains(&k.as_str())) {
        assert!(
            flagged.contains(key),
            "{sub} TOML key `{key}` has no flag --{}",
            key.replace('_', "-")
        );
    }
}

#[test]
fn every_flag_is_a_toml_key_and_an_env_variable_of_one_name() {
    check_names::<fdfs_tracker::Config>("tracker");
    check_names::<fdfs_storage::Config>("storage");
    check_names::<fdfs_gateway::Config>("gateway");
}

#[test]
fn server_help_has_no_client_gateway_flag() {
    for sub in fdfs::SERVER_SUBCOMMANDS {
        let out = std::process::Command::new(fdfs_testkit::node::bin())
            .args([sub, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{help}");
        assert!(help.contains("--config"), "{help}");
        assert!(!help.contains("--gateway"), "fdfs {sub} --help: {help}");
        let out = std::process::Command::new(fdfs_testkit::node::bin())
            .args([sub, "--gateway", "http://127.0.0.1:8080"])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "fdfs {sub} --gateway must be refused"
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("client commands"));
    }
    // Client commands take it before or after their name.
    let out = std::process::Command::new(fdfs_testkit::node::bin())
        .args(["info", "--offline", "--gateway", "http://127.0.0.1:1"])
        .arg("group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn config_scaffold_prints_the_shipped_files() {
    for (sub, file) in [
        ("tracker", "tracker.toml"),
        ("storage", "storage.toml"),
        ("gateway", "gateway.toml"),
    ] {
        let out = std::process::Command::new(fdfs_testkit::node::bin())
            .args(["config", sub])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let shipped = std::fs::read(example(file)).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&shipped),
            "fdfs config {sub} differs from deploy/config/{file}"
        );
    }
}
