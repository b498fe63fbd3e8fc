//! The deployment an operator makes from the shipped files (issue 22), on simulated hosts: one network
//! namespace per host (`fdfs_testkit::netns`), every server started exactly as its systemd unit in
//! `deploy/systemd/` says (`ExecStart`, `User`, `EnvironmentFile`, `StateDirectory`; see `fdfs_testkit::unit`),
//! with the configs of `deploy/config/` changed only in the keys their comments mark "(set per host)" (plus
//! `internal_listen`, which they say to set when nginx is in front), the real nginx from
//! `deploy/nginx/fdfs-storage.conf` in front of every storage node and `deploy/nginx/fdfs-gateway.conf` (TLS) in
//! front of both gateways. It uploads, downloads through the returned URL, the gateways and nginx (conditional
//! requests too), kills a storage host under load, adds a group, drains and removes a member, and restarts every
//! server in turn under load: no request may fail.
//!
//! Needs root, iproute2 and nginx (`.ci/run` installs nginx); like the partition tests it FAILS without them
//! unless `FDFS_SKIP_NETNS_TESTS=1` asks to skip.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fdfs_common::wire::{ClusterView, MemberState, CLUSTER_SECRET_HEADER};
use fdfs_testkit::netns::Net;
use fdfs_testkit::unit::{HostRoot, Unit};

const SECRET: &str = "deploy-test-secret-0123456789abcdef";
const WAIT: Duration = Duration::from_secs(90);

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn nginx() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Whether the test can run here; panics with the reason unless a skip was asked for.
fn runnable() -> bool {
    let why = match (Net::check(), nginx()) {
        (Ok(()), Some(_)) => return true,
        (Err(e), _) => e,
        (_, None) => "nginx is not installed (apt-get install nginx)".to_owned(),
    };
    if std::env::var_os("FDFS_SKIP_NETNS_TESTS").is_some() {
        eprintln!("SKIPPED deploy test: {why} (FDFS_SKIP_NETNS_TESTS is set)");
        return false;
    }
    panic!("the deployment test needs root, network namespaces and nginx: {why}");
}

/// `text` (a shipped TOML) with `key` set to `value` (TOML), where the file's comments say to set it.
fn set_key(text: &str, key: &str, value: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| {
            let l = l.trim_start_matches("# ");
            l.starts_with(&format!("{key} =")) || l.starts_with(&format!("{key}="))
        })
        .unwrap_or_else(|| panic!("no key {key} in the shipped config"));
    let comment: Vec<&str> = lines[..at]
        .iter()
        .rev()
        .take_while(|l| l.starts_with('#'))
        .copied()
        .collect();
    let said = comment.iter().any(|l| l.contains("(set per host"));
    assert!(
        said,
        "the shipped config does not say to set `{key}` per host: {comment:?}"
    );
    let mut out: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    out[at] = format!("{key} = {value}");
    out.join("\n") + "\n"
}

/// One host's server, started from its unit.
struct Service {
    unit: Unit,
    child: Option<Child>,
    log: PathBuf,
}

/// nginx running on a host from a shipped server block.
struct Nginx {
    child: Child,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Deployment {
    services: HashMap<String, Service>,
    nginxes: Vec<Nginx>,
    hosts: HashMap<String, HostRoot>,
    net: Net,
    dir: fdfs_testkit::TestDir,
    http: reqwest::Client,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for s in self.services.values_mut() {
            if let Some(mut c) = s.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.nginxes.clear();
    }
}

impl Deployment {
    fn ip(&self, host: &str) -> String {
        self.net.ip(host).to_string()
    }

    /// Lay out `host` as the install guide says: binaries, configs, the environment file.
    fn install(&mut self, host: &str, role: &str, config: &str) {
        let h = HostRoot::new(self.dir.path(), host);
        for bin in ["fdfs", "fdfs-tracker", "fdfs-storage", "fdfs-gateway"] {
            let link = h.path(&format!("/usr/local/bin/{bin}"));
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(fdfs_testkit::node::bin(), &link).unwrap();
        }
        std::fs::write(h.path(&format!("/etc/fdfs/{role}.toml")), config).unwrap();
        let env = h.path("/etc/fdfs/fdfs.env");
        std::fs::write(&env, format!("FDFS_CLUSTER_SECRET={SECRET}\n")).unwrap();
        let (_, gid) = fdfs_testkit::unit::system_user("fdfs");
        std::os::unix::fs::chown(&env, Some(0), Some(gid)).unwrap();
        std::fs::set_permissions(&env, std::os::unix::fs::PermissionsExt::from_mode(0o640))
            .unwrap();
        self.hosts.insert(host.to_owned(), h);
        let unit = Unit::load(&repo(&format!("deploy/systemd/fdfs-{role}.service")));
        let log = self.dir.path().join(format!("{host}.log"));
        self.services.insert(
            host.to_owned(),
            Service {
                unit,
                child: None,
                log,
            },
        );
    }

    /// `systemctl start` on `host`; returns once `/livez` answers at `probe`.
    async fn start(&mut self, host: &str, probe: &str) {
        let s = self.services.get_mut(host).unwrap();
        s.child = Some(fdfs_testkit::unit::start(
            &self.net,
            &self.hosts[host],
            &s.unit,
            &s.log,
        ));
        let url = format!("{probe}/livez");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self
                .services
                .get_mut(host)
                .unwrap()
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("{host} exited with {status}:\n{}", self.log_of(host));
            }
            if self
                .http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return;
            }
            assert!(Instant::now() < deadline, "{host} never answered {url}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `systemctl stop`: SIGTERM, then wait for the exit (status 0).
    async fn stop(&mut self, host: &str) {
        let mut child = self.services.get_mut(host).unwrap().child.take().unwrap();
        fdfs_common::sys::kill(child.id(), fdfs_common::sys::Signal::TERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "{host} did not stop");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            status.success(),
            "{host} stopped with {status}:\n{}",
            self.log_of(host)
        );
    }

    fn kill9(&mut self, host: &str) {
        let mut child = self.services.get_mut(host).unwrap().child.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    fn log_of(&self, host: &str) -> String {
        std::fs::read_to_string(&self.services[host].log).unwrap_or_default()
    }

    /// nginx on `host` with a shipped server block, placeholders filled as its comments say.
    fn nginx(&mut self, host: &str, conf: &str, fill: &[(&str, String)]) {
        let prefix = self.dir.path().join(format!("nginx-{host}"));
        std::fs::create_dir_all(prefix.join("logs")).unwrap();
        let mut block = std::fs::read_to_string(repo(conf)).unwrap();
        for (k, v) in fill {
            block = block.replace(k, v);
        }
        let placeholder = regex::Regex::new("@[A-Z_]+@").unwrap();
        assert!(
            !placeholder.is_match(&block),
            "unfilled placeholder in {conf}"
        );
        let p = prefix.display();
        let main = format!(
            "worker_processes 1;\nerror_log {p}/logs/error.log;\npid {p}/nginx.pid;\nuser www-data;\n\
             events {{ worker_connections 512; }}\nhttp {{\n include /etc/nginx/mime.types;\n\
             access_log {p}/logs/access.log;\n client_body_temp_path {p}/body;\n proxy_temp_path {p}/proxy;\n\
             fastcgi_temp_path {p}/fcgi;\n uwsgi_temp_path {p}/uwsgi;\n scgi_temp_path {p}/scgi;\n{block}\n}}\n"
        );
        std::fs::write(prefix.join("nginx.conf"), main).unwrap();
        let mut cmd = Command::new(nginx().unwrap());
        self.net.enter(host, &mut cmd);
        cmd.args([
            "-p",
            &p.to_string(),
            "-c",
            &format!("{p}/nginx.conf"),
            "-g",
            "daemon off;",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(prefix.join("logs/stderr")).unwrap(),
        ));
        let child = cmd.spawn().expect("start nginx");
        self.nginxes.push(Nginx { child });
    }

    /// A tracker's full view (with the secret).
    async fn view(&self, tracker: &str) -> Option<ClusterView> {
        let r = self
            .http
            .get(format!("http://{}:22122/cluster", self.ip(tracker)))
            .header(CLUSTER_SECRET_HEADER, SECRET)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// Node id and state of storage host `host` on tracker `tracker` (by its internal address).
    async fn member(&self, tracker: &str, host: &str) -> Option<(u32, MemberState, bool)> {
        let addr = format!("{}:23100", self.ip(host));
        let v = self.view(tracker).await?;
        v.groups
            .iter()
            .flat_map(|g| &g.members)
            .find(|m| m.addr == addr)
            .map(|m| (m.node_id, m.state, m.draining))
    }

    /// Wait until both trackers show `host` active and its `/health` is ready.
    async fn wait_active(&self, host: &str) {
        let health = format!("http://{}:23000/health", self.ip(host));
        let deadline = Instant::now() + WAIT;
        loop {
            let mut ok = self
                .http
                .get(&health)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            for t in ["t1", "t2"] {
                ok &= matches!(
                    self.member(t, host).await,
                    Some((_, MemberState::Active, _))
                );
            }
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{host} never active and ready; log:\n{}",
                self.log_of(host)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_ready(&self, url: &str) {
        let deadline = Instant::now() + WAIT;
        while !self
            .http
            .get(format!("{url}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            assert!(Instant::now() < deadline, "{url} never ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn lb(&self) -> String {
        format!("http://{}", self.ip("lb"))
    }
}

/// Upload `data` through `base` (PUT /upload/NAME[?group=G]); the JSON answer.
async fn upload(
    http: &reqwest::Client,
    base: &str,
    name: &str,
    group: Option<&str>,
    data: Vec<u8>,
) -> Result<serde_json::Value, String> {
    let mut url = format!("{base}/upload/{name}");
    if let Some(g) = group {
        url.push_str(&format!("?group={g}"));
    }
    let r = http
        .put(&url)
        .body(data)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let body = r.text().await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("{status}: {body}"));
    }
    serde_json::from_str(&body).map_err(|e| e.to_string())
}

/// GET `url`, following one redirect; the bytes of a 200.
async fn fetch(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let mut r = http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if r.status().is_redirection() {
        let to = r.headers()["location"].to_str().unwrap().to_owned();
        r = http
            .get(&to)
            .send()
            .await
            .map_err(|e| format!("{to}: {e}"))?;
    }
    if r.status() != 200 {
        return Err(format!("{url}: {}", r.status()));
    }
    Ok(r.bytes().await.map_err(|e| e.to_string())?.to_vec())
}

/// Uploads and downloads through the load balancer until stopped; counts successes and keeps failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(
        http: &reqwest::Client,
        lb: &str,
        known: &[(String, String, Vec<u8>)],
        workers: usize,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let known = Arc::new(known.to_vec());
        let tasks = (0..workers)
            .map(|w| {
                let (stop, ok, failures, known) =
                    (stop.clone(), ok.clone(), failures.clone(), known.clone());
                let (http, lb) = (http.clone(), lb.to_owned());
                tokio::spawn(async move {
                    let mut i = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let data = fdfs_testkit::content(w * 100_000 + i, 20_000 + i % 5000);
                        let got =
                            match upload(&http, &lb, &format!("l{w}-{i}.bin"), None, data.clone())
                                .await
                            {
                                Err(e) => Err(format!("upload: {e}")),
                                Ok(v) => {
                                    let url = v["url"].as_str().unwrap_or_default().to_owned();
                                    match fetch(&http, &url).await {
                                        Ok(b) if b == data => Ok(()),
                                        Ok(_) => Err(format!("{url}: other bytes")),
                                        Err(e) => Err(format!("download by url: {e}")),
                                    }
                                }
                            };
                        // An older file through the gateways (redirect to a member that holds it).
                        let (id, _, bytes) = &known[i % known.len()];
                        let old = match fetch(&http, &format!("{lb}/{id}")).await {
                            Ok(b) if b == *bytes => Ok(()),
                            Ok(_) => Err(format!("{id}: other bytes")),
                            Err(e) => Err(format!("download through the gateway: {e}")),
                        };
                        for r in [got, old] {
                            match r {
                                Ok(()) => {
                                    ok.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => failures.lock().unwrap().push(e),
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }

    fn done(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }
}

/// Wait until the load made `n` more successful requests (the cluster serves between two steps).
async fn progress(load: &Load, n: usize) {
    let start = load.done();
    fdfs_testkit::eventually(120, "the load to go on", || async {
        (load.done() >= start + n).then_some(())
    })
    .await;
}

/// Uploads a gateway answered (its `/metrics`).
async fn gateway_uploads(http: &reqwest::Client, url: &str) -> u64 {
    let Ok(r) = http.get(format!("{url}/metrics")).send().await else {
        return 0;
    };
    r.text()
        .await
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.starts_with("fdfs_http_requests_total{") && l.contains("route=\"/upload/{filename}\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Storage host `host` of `group` as the install guide sets one up: its unit started with `config` (the shipped
/// one, edited), then nginx from the shipped server block in front of it.
async fn storage_host(d: &mut Deployment, host: &str, group: &str, config: &str) {
    d.install(host, "storage", config);
    d.start(host, &format!("http://{}:23000", d.ip(host))).await;
    let store = d.hosts[host].path("/var/lib/fdfs/m00");
    let ip = d.ip(host);
    d.nginx(
        host,
        "deploy/nginx/fdfs-storage.conf",
        &[
            ("@LISTEN@", format!("{ip}:80")),
            ("@GROUP@", group.to_owned()),
            ("@STORE_PATH@", store.display().to_string()),
            ("@NODE@", format!("{ip}:23000")),
        ],
    );
}

fn fdfs_cli(args: &[&str], trackers: &str) -> std::process::Output {
    Command::new(fdfs_testkit::node::bin())
        .args(args)
        .args(["--tracker", trackers])
        .env("FDFS_CLUSTER_SECRET", SECRET)
        .env_remove("FDFS_TRACKER")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_deploys_from_the_shipped_files() {
    if !runnable() {
        return;
    }
    let storage_hosts = ["s11", "s12", "s21", "s22", "s31", "s32"];
    let mut hosts = vec!["t1", "t2", "gw1", "gw2", "lb"];
    hosts.extend(storage_hosts);
    let net = Net::new(&hosts);
    let dir = fdfs_testkit::tempdir(2 << 30);
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let mut d = Deployment {
        services: HashMap::new(),
        nginxes: Vec::new(),
        hosts: HashMap::new(),
        net,
        dir,
        http: http.clone(),
    };
    let trackers = format!("[\"{}:22122\", \"{}:22122\"]", d.ip("t1"), d.ip("t2"));
    let tracker_list = format!("{}:22122,{}:22122", d.ip("t1"), d.ip("t2"));

    // Trackers.
    let tracker_toml = std::fs::read_to_string(repo("deploy/config/tracker.toml")).unwrap();
    for t in ["t1", "t2"] {
        let c = set_key(&tracker_toml, "listen", &format!("\"{}:22122\"", d.ip(t)));
        d.install(t, "tracker", &c);
        d.start(t, &format!("http://{}:22122", d.ip(t))).await;
    }

    // Storage nodes behind nginx (public_url names nginx, so the node gets an internal_listen).
    let storage_toml = std::fs::read_to_string(repo("deploy/config/storage.toml")).unwrap();
    let storage_config = |d: &Deployment, host: &str, group: &str| {
        let ip = d.ip(host);
        let c = set_key(&storage_toml, "group", &format!("\"{group}\""));
        let c = set_key(&c, "tracker", &trackers);
        let c = set_key(&c, "public_url", &format!("\"http://{ip}\""));
        set_key(&c, "internal_listen", &format!("\"{ip}:23100\""))
    };
    for (host, group) in [
        ("s11", "group1"),
        ("s12", "group1"),
        ("s21", "group2"),
        ("s22", "group2"),
    ] {
        let c = storage_config(&d, host, group);
        storage_host(&mut d, host, group, &c).await;
    }
    for host in ["s11", "s12", "s21", "s22"] {
        d.wait_active(host).await;
    }

    // Gateways, and nginx with TLS in front of both.
    let gateway_toml = std::fs::read_to_string(repo("deploy/config/gateway.toml")).unwrap();
    for gw in ["gw1", "gw2"] {
        let c = set_key(&gateway_toml, "tracker", &trackers);
        d.install(gw, "gateway", &c);
        d.start(gw, &format!("http://{}:8080", d.ip(gw))).await;
        d.wait_ready(&format!("http://{}:8080", d.ip(gw))).await;
    }
    let tls = d.dir.path().join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let lb_ip = d.ip("lb");
    let openssl = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        ])
        .arg(format!("/CN={lb_ip}"))
        .arg("-addext")
        .arg(format!("subjectAltName=IP:{lb_ip}"))
        .arg("-keyout")
        .arg(tls.join("key.pem"))
        .arg("-out")
        .arg(tls.join("cert.pem"))
        .output()
        .expect("openssl");
    assert!(openssl.status.success(), "{openssl:?}");
    let gateways = ["gw1", "gw2"]
        .map(|g| format!("server {}:8080 max_fails=1 fail_timeout=2s;", d.ip(g)))
        .join(" ");
    d.nginx(
        "lb",
        "deploy/nginx/fdfs-gateway.conf",
        &[
            ("@LISTEN@", format!("{lb_ip}:80")),
            ("@TLS_LISTEN@", format!("{lb_ip}:443")),
            ("@CERT@", tls.join("cert.pem").display().to_string()),
            ("@KEY@", tls.join("key.pem").display().to_string()),
            ("@GATEWAYS@", gateways),
        ],
    );
    d.wait_ready(&d.lb()).await;
    let curl = Command::new("curl")
        .args(["-sS", "--fail", "--cacert"])
        .arg(tls.join("cert.pem"))
        .arg(format!("https://{lb_ip}/health"))
        .output()
        .unwrap();
    assert!(curl.status.success(), "HTTPS through nginx: {curl:?}");

    // Upload; download by the URL (nginx), the gateway (redirect) and nginx with conditional requests.
    let mut known: Vec<(String, String, Vec<u8>)> = Vec::new();
    for i in 0..8 {
        let data = fdfs_testkit::content(i, 50_000 + i);
        let v = upload(&http, &d.lb(), &format!("f{i}.jpg"), None, data.clone())
            .await
            .unwrap();
        let (id, url) = (v["file_id"].as_str().unwrap(), v["url"].as_str().unwrap());
        assert!(
            storage_hosts
                .iter()
                .any(|h| url.starts_with(&format!("http://{}/", d.ip(h)))),
            "the URL names the node's nginx: {url}"
        );
        assert_eq!(fetch(&http, url).await.unwrap(), data);
        assert_eq!(
            fetch(&http, &format!("{}/{id}", d.lb())).await.unwrap(),
            data
        );
        known.push((id.to_owned(), url.to_owned(), data));
    }
    let (id, url, _) = &known[0];
    let name = id.rsplit('/').next().unwrap();
    let host_ip = url.trim_start_matches("http://").split('/').next().unwrap();
    let node_url = format!("http://{host_ip}:23000/{id}");
    let at_nginx = http.get(url).send().await.unwrap();
    let at_node = http.get(&node_url).send().await.unwrap();
    let h = |r: &reqwest::Response, k: &str| r.headers()[k].to_str().unwrap().to_owned();
    assert_eq!(h(&at_nginx, "etag"), format!("\"{name}\""));
    assert_eq!(
        h(&at_nginx, "etag"),
        h(&at_node, "etag"),
        "one ETag on nginx and the node"
    );
    let last_modified = h(&at_node, "last-modified");
    for target in [url.clone(), node_url.clone()] {
        for (k, v) in [
            ("if-none-match", format!("\"{name}\"")),
            ("if-modified-since", last_modified.clone()),
        ] {
            let r = http.get(&target).header(k, &v).send().await.unwrap();
            assert_eq!(r.status(), 304, "{k} at {target}");
        }
        let r = http
            .get(&target)
            .header("range", "bytes=0-9")
            .header("if-range", format!("\"{name}\""))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206, "If-Range at {target}");
    }
    // Trackers show internal addresses only with the secret.
    let public: ClusterView = http
        .get(format!("http://{}:22122/cluster", d.ip("t1")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(public
        .groups
        .iter()
        .flat_map(|g| &g.members)
        .all(|m| !m.addr.contains(":23100")));

    // kill -9 of a storage host under upload load: nothing fails.
    let load = Load::start(&http, &d.lb(), &known, 4);
    progress(&load, 20).await;
    d.kill9("s11");
    progress(&load, 60).await;
    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {ok} failed: {failures:?}",
        failures.len()
    );
    eprintln!("kill -9 of s11 under load: {ok} requests, 0 failed");
    d.start("s11", &format!("http://{}:23000", d.ip("s11")))
        .await;
    d.wait_active("s11").await;

    // A group added online takes uploads.
    for host in ["s31", "s32"] {
        let c = storage_config(&d, host, "group3");
        storage_host(&mut d, host, "group3", &c).await;
    }
    d.wait_active("s31").await;
    d.wait_active("s32").await;
    let t0 = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let data = fdfs_testkit::content(900 + n, 1000);
        let v = upload(&http, &d.lb(), "g3.bin", None, data.clone())
            .await
            .unwrap();
        if v["group"] == "group3" {
            assert_eq!(
                fetch(&http, v["url"].as_str().unwrap()).await.unwrap(),
                data
            );
            break;
        }
        assert!(t0.elapsed() < WAIT, "group3 never got an upload");
    }
    eprintln!(
        "group3 took an upload {:.1}s after it was active",
        t0.elapsed().as_secs_f64()
    );

    // Drain s12, stop it, remove it at once; then the host comes back wiped, as a new member.
    let (s12_id, _, _) = d.member("t1", "s12").await.unwrap();
    let out = fdfs_cli(
        &[
            "monitor",
            "drain",
            "group1",
            &s12_id.to_string(),
            "--timeout-secs",
            "120",
        ],
        &tracker_list,
    );
    assert!(out.status.success(), "drain: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("is drained"),
        "{out:?}"
    );
    assert!(
        d.member("t2", "s12").await.unwrap().2,
        "draining on every tracker"
    );
    for i in 0..6 {
        let v = upload(
            &http,
            &d.lb(),
            "d.bin",
            Some("group1"),
            fdfs_testkit::content(700 + i, 500),
        )
        .await
        .unwrap();
        assert!(
            !v["url"]
                .as_str()
                .unwrap()
                .starts_with(&format!("http://{}/", d.ip("s12"))),
            "a draining member got an upload: {v}"
        );
    }
    // The node learns it is drained with its next heartbeat.
    let s12_health = format!("http://{}:23000/health", d.ip("s12"));
    fdfs_testkit::eventually(30, "the draining node unready", || async {
        let r = http.get(&s12_health).send().await.ok()?;
        let v: serde_json::Value = r.json().await.ok()?;
        (v["reason"].as_str()?.starts_with("draining")).then_some(())
    })
    .await;
    d.stop("s12").await;
    let out = fdfs_cli(
        &["monitor", "delete", "group1", &s12_id.to_string()],
        &tracker_list,
    );
    assert!(
        out.status.success(),
        "removing a cleanly stopped member at once: {out:?}"
    );
    assert!(d.member("t1", "s12").await.is_none());
    for (id, _, data) in &known {
        assert_eq!(
            &fetch(&http, &format!("{}/{id}", d.lb())).await.unwrap(),
            data,
            "{id}"
        );
    }
    std::fs::remove_dir_all(d.hosts["s12"].path("/var/lib/fdfs/m00")).unwrap();
    d.start("s12", &format!("http://{}:23000", d.ip("s12")))
        .await;
    d.wait_active("s12").await;
    let (new_id, _, _) = d.member("t1", "s12").await.unwrap();
    assert_ne!(new_id, s12_id, "a wiped host is a new member");

    // Rolling restart of every server under load through both gateways: nothing fails.
    let load = Load::start(&http, &d.lb(), &known, 4);
    progress(&load, 10).await;
    let order = [
        "t1", "t2", "s11", "s12", "s21", "s22", "s31", "s32", "gw1", "gw2",
    ];
    for host in order {
        d.stop(host).await;
        let port = match host {
            h if h.starts_with('t') => 22122,
            h if h.starts_with('s') => 23000,
            _ => 8080,
        };
        let url = format!("http://{}:{port}", d.ip(host));
        d.start(host, &url).await;
        if host.starts_with('s') {
            d.wait_active(host).await;
        } else {
            d.wait_ready(&url).await;
        }
        if host.starts_with("gw") {
            // nginx leaves a gateway it could not reach alone for fail_timeout: wait until it sends it
            // requests again before the next one stops (the procedure docs/DEPLOY.md gives).
            let served = gateway_uploads(&http, &url).await;
            fdfs_testkit::eventually(60, "nginx sending to the restarted gateway", || async {
                (gateway_uploads(&http, &url).await > served).then_some(())
            })
            .await;
        }
        progress(&load, 10).await;
    }
    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {ok} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    eprintln!(
        "rolling restart of {} servers under load: {ok} requests, 0 failed",
        order.len()
    );

    // Logs go to files without colour escapes.
    for host in order {
        assert!(
            !d.log_of(host).contains('\u{1b}'),
            "{host} log has ANSI escapes"
        );
    }
}
