"""The production topology on loopback: two `workshop serve` hosts on one database, and Debian's
nginx in front running deploy/nginx.conf (only ports and paths rewritten). Used by the topology
and fault tests, and by bench/soak.py."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
NGINX = os.environ.get("WORKSHOP_TEST_NGINX", "/usr/sbin/nginx")
IN_CI = os.environ.get("CI", "").lower() == "true"


def nginx_missing_reason() -> str | None:
    """Why nginx cannot run here, or None when it can."""
    if not (Path(NGINX).is_file() or shutil.which(NGINX)):
        return f"nginx not found at {NGINX} (apt-get install nginx)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def render_nginx_conf(directory: Path, port: int, upstreams: list[str]) -> str:
    """deploy/nginx.conf with loopback ports, and every path nginx writes under `directory`."""
    text = NGINX_CONF.read_text()
    servers = "".join(
        f"        server {u.removeprefix('http://')} max_fails=2 fail_timeout=5s;\n"
        for u in upstreams
    )
    text, found = re.subn(r"(?m)^\s*server app\d+:8000[^\n]*\n", "", text)
    assert found, "deploy/nginx.conf no longer names app1:8000 / app2:8000"
    text = text.replace("upstream workshop {\n", "upstream workshop {\n" + servers, 1)
    replacements = {
        "listen 80;": f"listen 127.0.0.1:{port};",
        "pid /run/nginx.pid;": f"pid {directory}/nginx.pid;\nuser root;",
        "error_log /dev/stderr warn;": f"error_log {directory}/error.log warn;",
        "access_log /dev/stdout workshop;": (
            f"access_log {directory}/access.log workshop;\n"
            f"    client_body_temp_path {directory}/client_body;\n"
            f"    proxy_temp_path {directory}/proxy_temp;\n"
            f"    fastcgi_temp_path {directory}/fastcgi_temp;\n"
            f"    uwsgi_temp_path {directory}/uwsgi_temp;\n"
            f"    scgi_temp_path {directory}/scgi_temp;"
        ),
        "/var/cache/nginx/workshop": f"{directory}/cache",
        "worker_processes auto;": "worker_processes 1;",
    }
    for old, new in replacements.items():
        assert old in text, f"deploy/nginx.conf no longer has {old!r}"
        text = text.replace(old, new)
    if os.geteuid() != 0:
        text = text.replace("user root;", "")
    return text


@dataclass
class Nginx:
    url: str
    process: subprocess.Popen[bytes]
    directory: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # fast shutdown of master and workers
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in self.directory.glob("*.log") if p.is_file()
        )


def start_nginx(directory: Path, upstreams: list[str]) -> Nginx:
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(render_nginx_conf(directory, port, upstreams))
    process = subprocess.Popen(
        [NGINX, "-p", str(directory), "-c", str(conf), "-g", "daemon off;"],
        stdout=(directory / "stdout.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    nginx = Nginx(f"http://127.0.0.1:{port}", process, directory)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited: {nginx.log()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return nginx
        except OSError:
            time.sleep(0.05)
    nginx.stop()
    raise RuntimeError(f"nginx did not start: {nginx.log()}")


@dataclass
class Topology:
    hosts: list  # [conftest.LiveServer, ...]
    proxy: Nginx
    database_url: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def proxy_url(self) -> str:
        return self.proxy.url

    def cli(self, *args: str) -> str:
        """Run `workshop ARGS...` against the shared database, as the operator would."""
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", *args],
            env={**os.environ, **self.env, "WORKSHOP_DATABASE_URL": self.database_url},
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"workshop {' '.join(args)} failed: {done.stderr}")
        return done.stdout.strip()


def worker_pids(host_pid: int) -> list[int]:
    """Uvicorn's worker processes under a `workshop serve --workers N` supervisor."""
    children = Path(f"/proc/{host_pid}/task/{host_pid}/children")
    if not children.exists():
        return []
    found = [int(p) for p in children.read_text().split()]
    # multiprocessing's resource tracker is a child too; workers are the ones running uvicorn.
    return [p for p in found if "resource_tracker" not in _cmdline(p)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def rss_kib(pid: int) -> int:
    """Resident memory of a process in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def wait_until_up(url: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def require_nginx() -> None:
    """Skip (with the reason) when nginx is missing; under CI=true that is an error instead."""
    import pytest

    reason = nginx_missing_reason()
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


@contextmanager
def running_topology(
    database_url: str, directory: Path, hosts: int = 2, workers: int = 1, **env: str
) -> Iterator[Topology]:
    """`hosts` Workshop hosts on `database_url` and nginx in front; everything stopped after."""
    from conftest import start_server, stop_server, test_settings

    settings = test_settings(database_url)
    # The proxy is on loopback: believe its X-Forwarded-For, as an operator configures it.
    env = {"WORKSHOP_TRUSTED_PROXIES": "127.0.0.1/32", "WORKSHOP_LOG_JSON": "true", **env}
    started: list = []
    proxy: Nginx | None = None
    try:
        # Side by side: each host spends a while importing; a failure stops the ones that started.
        with ThreadPoolExecutor(hosts) as pool:
            futures = [
                pool.submit(start_server, settings, directory, workers=workers, **env)
                for _ in range(hosts)
            ]
        failures = [f.exception() for f in futures if f.exception() is not None]
        started.extend(f.result() for f in futures if f.exception() is None)
        if failures:
            raise failures[0]  # type: ignore[misc]
        proxy = start_nginx(directory / "nginx", [h.url for h in started])
        yield Topology(started, proxy, database_url, env)
    finally:
        if proxy is not None:
            proxy.stop()
        for host in started:
            stop_server(host)
