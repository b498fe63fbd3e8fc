"""A real local fdfs cluster for tests: runs `fdfs up --port 0` and reads the layout it prints.

    with LocalCluster("target/debug/fdfs", tmp_path) as cluster:
        client = Client(cluster.gateway)

Standard library only. `kill_member` SIGKILLs one storage node (a child of `fdfs up`) to test failures;
`start_gateway` starts one more gateway on the cluster (with an S3 door sharing a PostgreSQL namespace, say).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

__all__ = ["Gateway", "LocalCluster", "Member", "fdfs_binary"]

_MEMBER = re.compile(r"^  (?P<label>\S*)\s+(?P<url>http://\S+)\s+node\s+(?P<node>\d+)\s+(?P<data>\S.*?)\s*$")
_S3 = re.compile(
    r"^  s3\s+(?P<url>http://\S+)\s+\(path-style; access key (?P<key>\S+), secret key (?P<secret>[^;\s]+);"
)
_GATEWAY = re.compile(r"^  gateway\s+(?P<url>http://\S+)\s*$")
_TRACKER = re.compile(r"^  tracker\s+(?P<addr>\S+)\s*$")


def fdfs_binary(repo: str | os.PathLike[str]) -> Path:
    """The `fdfs` binary to test with: `$FDFS_BIN`, else the debug build of the repository at `repo` (in
    `$CARGO_TARGET_DIR` when set, as cargo builds it)."""
    if env := os.environ.get("FDFS_BIN"):
        return Path(env)
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(repo, "target")
    return Path(target, "debug", "fdfs")


@dataclass(frozen=True)
class Member:
    """One storage node of the cluster as `fdfs up` printed it."""

    group: str
    url: str
    node_id: int
    data_dir: str


@dataclass
class Gateway:
    """A gateway started with `LocalCluster.start_gateway` (stopped with the cluster, or by `stop()`)."""

    url: str
    s3: str
    proc: subprocess.Popen[str]
    log: Path

    def stop(self) -> None:
        """SIGTERM, SIGKILL after 30 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class LocalCluster:
    """`fdfs up` in a temp dir on free ports; `start()` returns once every storage node is active."""

    def __init__(
        self,
        fdfs: str | os.PathLike[str],
        data_dir: str | os.PathLike[str],
        *,
        groups: int = 2,
        members: int = 2,
        env: Mapping[str, str] | None = None,
        timeout: float = 180.0,
        api_key: str | None = None,
        cluster_secret: str | None = None,
        thumbnail_sizes: str | Iterable[str] | None = None,
        restart: bool = True,
        s3_port: int | None = None,
        s3_postgres: str | None = None,
    ) -> None:
        """`api_key`, `cluster_secret`, `thumbnail_sizes`, `restart=False`, `s3_port` and `s3_postgres` are
        `fdfs up`'s `--api-key`, `--cluster-secret`, `--thumbnail-sizes`, `--no-restart`, `--s3-port` (0: a free
        port; then `s3`, `s3_access_key` and `s3_secret_key` say where and how) and `--s3-postgres` (the S3
        namespace in that PostgreSQL database); `env` is added to its environment."""
        self.fdfs = os.fspath(fdfs)
        self.data_dir = Path(data_dir)
        self.groups = groups
        self.members_per_group = members
        self.env = dict(env or {})
        self.timeout = timeout
        self.api_key = api_key
        self.cluster_secret = cluster_secret
        sizes = thumbnail_sizes
        self.thumbnail_sizes = sizes if sizes is None or isinstance(sizes, str) else ",".join(sizes)
        self.restart = restart
        self.s3_port = s3_port
        self.s3_postgres = s3_postgres
        self.gateways: list[Gateway] = []
        self.s3 = ""
        self.s3_access_key = ""
        self.s3_secret_key = ""
        self.gateway = ""
        self.trackers: list[str] = []
        self.members: list[Member] = []
        self._proc: subprocess.Popen[str] | None = None
        self._lines: list[str] = []
        self._done = threading.Event()
        self._stderr: IO[str] | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stderr = open(self.data_dir / "up.stderr", "w")  # noqa: SIM115 - closed in stop()
        cmd = [
            self.fdfs,
            "up",
            "--port",
            "0",
            "--data",
            str(self.data_dir),
            "--groups",
            str(self.groups),
            "--members",
            str(self.members_per_group),
            "--timeout",
            str(int(self.timeout)),
        ]
        for flag, value in [
            ("--api-key", self.api_key),
            ("--cluster-secret", self.cluster_secret),
            ("--thumbnail-sizes", self.thumbnail_sizes),
        ]:
            if value is not None:
                cmd += [flag, value]
        if not self.restart:
            cmd.append("--no-restart")
        if self.s3_port is not None:
            cmd += ["--s3-port", str(self.s3_port)]
        if self.s3_postgres is not None:
            cmd += ["--s3-postgres", self.s3_postgres]
        self._proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **self.env},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.timeout + 30
        while not self._ready():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"fdfs up did not become ready:\n{self.output()}")
            time.sleep(0.1)
        self._parse()
        if self.s3:
            self._wait_s3_ready(deadline)

    def _wait_s3_ready(self, deadline: float, s3: str | None = None) -> None:
        """A new S3 door builds its namespace from the storage nodes first, answering 503 until then."""
        import httpx

        while httpx.get(f"{s3 or self.s3}/").status_code == 503:
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the S3 door never became ready:\n{self.output()}")
            time.sleep(0.2)

    def start_gateway(self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 60.0) -> Gateway:
        """One more gateway on this cluster's trackers, on free ports, with an S3 door that has this cluster's
        access key and `--s3-postgres` (when the cluster has one); `args` are more `fdfs gateway` flags, `env`
        more environment. Returns once it listens (and its S3 door answers other than 503)."""
        n = len(self.gateways) + 1
        log = self.data_dir / "logs" / f"gateway-{n + 1}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [self.fdfs, "gateway", "--listen", "127.0.0.1:0", "--tracker", ",".join(self.trackers)]
        if self.api_key is not None:
            cmd += ["--api-key", self.api_key]
        if self.s3:
            cmd += ["--s3-listen", "127.0.0.1:0", "--s3-access-key", self.s3_access_key]
            if self.s3_postgres is not None:
                cmd += ["--s3-postgres", self.s3_postgres]
            else:
                cmd += ["--s3-data-dir", str(self.data_dir / f"s3-{n + 1}")]
        cmd += list(args)
        environ = {**os.environ, **self.env, **(env or {}), "FDFS_CLUSTER_SECRET": self.secret, "NO_COLOR": "1"}
        environ.pop("FDFS_CONFIG", None)
        if self.s3:
            environ["FDFS_S3_SECRET_KEY"] = self.s3_secret_key
        with open(log, "a") as err:
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True, env=environ
            )
        assert proc.stdout is not None
        # It prints `listening on ADDR` for its HTTP listener, then `s3 listening on ADDR` for its S3 door.
        http, door = "", ""
        while not http or (self.s3 and not door):
            line = proc.stdout.readline()
            if not line:
                proc.wait()
                raise RuntimeError(f"the gateway exited before listening:\n{log.read_text(errors='replace')}")
            if line.startswith("listening on "):
                http = line.split()[-1]
            elif line.startswith("s3 listening on "):
                door = line.split()[-1]
        gw = Gateway(f"http://{http}", f"http://{door}" if door else "", proc, log)
        self.gateways.append(gw)
        if gw.s3:
            self._wait_s3_ready(time.monotonic() + timeout, gw.s3)
        return gw

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.append(line.rstrip("\n"))
            if line.startswith("ctrl-c stops the cluster"):
                self._done.set()
        self._done.set()

    def _ready(self) -> bool:
        return self._done.is_set() and any(line.startswith("fdfs cluster is up") for line in self._lines)

    def _parse(self) -> None:
        group = ""
        for line in self._lines:
            if m := _GATEWAY.match(line):
                self.gateway = m["url"]
            elif m := _S3.match(line):
                self.s3, self.s3_access_key, self.s3_secret_key = m["url"], m["key"], m["secret"]
            elif m := _TRACKER.match(line):
                self.trackers.append(m["addr"])
            elif m := _MEMBER.match(line):
                group = m["label"] or group
                self.members.append(Member(group, m["url"], int(m["node"]), m["data"]))
        if not self.gateway or len(self.members) != self.groups * self.members_per_group:
            raise RuntimeError(f"cannot read the layout fdfs up printed:\n{self.output()}")

    @property
    def secret(self) -> str:
        """The cluster secret (for `/cluster` details, `fdfs verify`, a server joining the cluster): the one
        given, else the one `fdfs up` keeps in `<data>/cluster-secret`."""
        if self.cluster_secret is not None:
            return self.cluster_secret
        return (self.data_dir / "cluster-secret").read_text().strip()

    def output(self) -> str:
        """What `fdfs up` printed so far (stdout, then stderr)."""
        err = ""
        p = self.data_dir / "up.stderr"
        if p.exists():
            err = p.read_text(errors="replace")
        return "\n".join(self._lines) + "\n" + err

    def pid_of(self, member: Member) -> int:
        """Process id of a storage node: the child of `fdfs up` whose command line has its store path."""
        return self._child_with(member.data_dir.encode())

    def gateway_pid(self) -> int:
        """Process id of the gateway: the child of `fdfs up` whose command line says `gateway`."""
        return self._child_with(b"gateway")

    def _child_with(self, word: bytes) -> int:
        for pid, cmdline in self._children():
            if word in cmdline:
                return pid
        raise LookupError(f"no child of fdfs up with {word!r} in its command line")

    def _children(self) -> list[tuple[int, list[bytes]]]:
        """The children of `fdfs up`: process id and command line."""
        assert self._proc is not None
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except (OSError, ValueError, IndexError):
                continue
            if ppid == self._proc.pid:
                found.append((int(entry), cmdline))
        return found

    def processes(self) -> dict[str, int]:
        """Every process of the cluster by name: `up` (the supervisor), then its servers as `tracker-1`,
        `gateway` and each storage node's store path base name (`storage-g1-m1`), with their process ids."""
        assert self._proc is not None
        named = {"up": self._proc.pid}
        trackers = 0
        for pid, cmdline in sorted(self._children()):
            role = cmdline[1].decode() if len(cmdline) > 1 else "?"
            if role == "tracker":
                trackers += 1
                named[f"tracker-{trackers}"] = pid
            elif role == "storage" and b"--store-path" in cmdline:
                named[Path(cmdline[cmdline.index(b"--store-path") + 1].decode()).name] = pid
            else:
                named[role] = pid
        return named

    def peak_rss(self) -> dict[str, int]:
        """Each process's peak resident set so far (`VmHWM`, bytes), by the names of `processes()`."""
        peaks = {}
        for name, pid in self.processes().items():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks[name] = int(line.split()[1]) * 1024
        return peaks

    def kill_member(self, member: Member) -> None:
        """SIGKILL one storage node (the rest of the cluster keeps running; `fdfs up` restarts it unless
        `restart=False`)."""
        os.kill(self.pid_of(member), signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM the gateways `start_gateway` started, then `fdfs up` (it stops its children in order); SIGKILL
        after 30 s."""
        for gw in self.gateways:
            gw.stop()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(10)
        if proc is not None and proc.stdout is not None and (self._reader is None or not self._reader.is_alive()):
            proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
