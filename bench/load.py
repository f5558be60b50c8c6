"""Load generation on loopback: the server as an operator starts it, wrk, nginx, and RSS."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.build import SITE_URL

WRK = shutil.which("wrk") or "/usr/bin/wrk"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
WRK_THREADS = 2
WRK_OPTS = [f"-t{WRK_THREADS}", "-c32"]


def wait_for_tools(timeout: float = 600) -> None:
    """apt may still be installing wrk and nginx on a fresh machine."""
    deadline = time.monotonic() + timeout
    while not (Path(WRK).exists() and Path(NGINX).exists()):
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {WRK} or {NGINX} is missing")
        time.sleep(5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: str = ""


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(
    url: str,
    seconds: int,
    script: Path | None = None,
    opts: list[str] | None = None,
    headers: dict[str, str] | None = None,
) -> Result:
    cmd = [WRK, *(opts or WRK_OPTS), f"-d{seconds}s", "--timeout", "30s", "--latency"]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    if script is not None:
        cmd += ["-s", str(script)]
    return parse(subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout)


def wrk_pass(url: str, script: Path, limit_seconds: int = 900) -> Result:
    """Run a `one_pass_script` (bench/endpoints.py) through: wrk waits out its `-d` even once
    every thread has stopped, so it is interrupted when each thread has left its file."""
    for old in script.parent.glob(script.name + ".done-*"):
        old.unlink()
    cmd = [WRK, *WRK_OPTS, f"-d{limit_seconds}s", "--timeout", "30s", "--latency"]
    cmd += ["-s", str(script)]
    proc = subprocess.Popen([*cmd, url], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + limit_seconds
    while len(list(script.parent.glob(script.name + ".done-*"))) < WRK_THREADS:
        if proc.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # wrk's own stop: it reports what it did
    return parse(proc.communicate()[0])


def first_passes(urls: list[str], script: Path) -> list[Result]:
    """Every page read once on each side (`Endpoint.first_pass`), one side after the other,
    then what the passes wrote synced to disk before anything is measured: PostgreSQL's page
    copy is 1.5 GB at 100,000 essays, and its writeback stalled the rows after it (p99 60-750
    ms against 4.6 ms without)."""
    done = [wrk_pass(url, script) for url in urls]
    os.sync()
    return done


def parse(out: str) -> Result:
    """wrk's --latency report -> requests/s, p50, p99 (ms) and any error counts."""
    rps = float(re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = "; ".join(
        m.strip() for m in re.findall(r"^\s*(Non-2xx.*|Socket errors.*)$", out, re.M)
    )
    return Result(rps, p50, p99, total, errors)


def mean(results: list[Result]) -> Result:
    """Runs of one measurement as one: the mean requests/s, p50 and p99."""
    n = len(results)
    return Result(
        sum(r.rps for r in results) / n,
        sum(r.p50_ms for r in results) / n,
        sum(r.p99_ms for r in results) / n,
        sum(r.requests for r in results),
        "; ".join(r.errors for r in results if r.errors),
    )


# --- the server -------------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    peak_total: int = 0  # bytes: the sum of the workers' RSS, sampled
    peak_worker: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _sampler: threading.Thread | None = None

    def workers(self) -> list[int]:
        """The uvicorn worker processes (spawned children of the serve process)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.process.pid and b"resource_tracker" not in cmdline:
                pids.append(int(entry.name))
        return pids

    def sample(self) -> None:
        sizes = []
        for pid in self.workers():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
            if found:
                sizes.append(int(found.group(1)) * 1024)
        if sizes:
            self.peak_total = max(self.peak_total, sum(sizes))
            self.peak_worker = max(self.peak_worker, max(sizes))

    def start_sampling(self) -> None:
        def loop() -> None:
            while not self._stop.wait(0.2):
                self.sample()

        self._sampler = threading.Thread(target=loop, daemon=True)
        self._sampler.start()

    def stop(self) -> None:
        self._stop.set()
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def serve(database_url: str, workers: int, cache: bool, log: Path) -> Server:
    """`workshop serve --workers N`, exactly as an operator starts it."""
    port = free_port()
    env = {
        **os.environ,
        "WORKSHOP_DATABASE_URL": database_url,
        "WORKSHOP_SITE_URL": SITE_URL,
        "WORKSHOP_RESPONSE_CACHE": "true" if cache else "false",
    }
    workshop = Path(sys.executable).with_name("workshop")
    command = [str(workshop)] if workshop.exists() else [sys.executable, "-m", "app.cli"]
    command += ["serve", "--port", str(port), "--workers", str(workers)]
    return _started(command, env, port, log, "/healthz")


def serve_bare(body: Path, content_type: str, workers: int, log: Path) -> Server:
    """The calibration (bench/bare.py): a bare ASGI callable under stock uvicorn."""
    port = free_port()
    env = {**os.environ, "BENCH_BARE_BODY": str(body), "BENCH_BARE_TYPE": content_type}
    command = [sys.executable, "-m", "uvicorn", "bench.bare:app", "--port", str(port)]
    command += ["--app-dir", str(Path(__file__).parent.parent), "--workers", str(workers)]
    command += ["--lifespan", "off", "--no-access-log"]
    return _started([*command, "--log-level", "warning"], env, port, log, "/")


def _started(command: list[str], env: dict[str, str], port: int, log: Path, probe: str) -> Server:
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(command, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"bench: the server exited; see {log}")
        try:
            if httpx.get(url + probe, timeout=1).status_code == 200:
                server = Server(url, process)
                # Both workers answer only once each has imported the app.
                for _ in range(20):
                    httpx.get(url + probe, timeout=5)
                server.start_sampling()
                return server
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"bench: the server did not start; see {log}")


# --- nginx serving the same bytes ----------------------------------------------------------


_PLAIN_NAME = re.compile(r"[A-Za-z0-9._~-]+")


class Nginx:
    """nginx on loopback serving each endpoint's body as a static file (same bytes, same type)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
        self.dir.chmod(0o755)
        self.port = free_port()
        self.files: dict[str, str] = {}
        self.pages = 0  # essay pages under /read/ (`add_page`)
        self.page_type = ""
        self.process: subprocess.Popen[bytes] | None = None

    def add(self, name: str, body: bytes, content_type: str) -> str:
        path = self.dir / name
        path.write_bytes(body)
        path.chmod(0o644)
        self.files[name] = content_type.replace('"', "")
        return f"http://127.0.0.1:{self.port}/{name}"

    def add_page(self, path: str, body: bytes, content_type: str) -> None:
        """An essay page served at its own path (`/read/<id>/<slug>`), as the app serves it."""
        parts = path.split("/")
        if (
            len(parts) != 4
            or parts[:2] != ["", "read"]
            or not all(_PLAIN_NAME.fullmatch(p) for p in parts[2:])
        ):
            raise SystemExit(f"bench: {path!r} is not a plain /read/<id>/<slug> path")
        folder = self.dir / "read" / parts[2]
        if not folder.is_dir():
            folder.mkdir(parents=True)  # nginx's workers (nobody) must read them
            folder.chmod(0o755)
            folder.parent.chmod(0o755)
        page = folder / parts[3]
        page.write_bytes(body)
        page.chmod(0o644)
        self.pages += 1
        self.page_type = content_type.replace('"', "")

    def start(self) -> None:
        locations = "\n".join(
            f'    location = /{name} {{ default_type "{ctype}"; try_files /{name} =404; }}'
            for name, ctype in self.files.items()
        )
        if self.pages:
            locations += f'\n    location /read/ {{ default_type "{self.page_type}"; }}'
        temp = " ".join(
            f"{k}_temp_path {self.dir}/{k};"
            for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (self.dir / "nginx.conf").write_text(f"""
worker_processes auto;
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off; sendfile on; tcp_nopush on; keepalive_requests 10000000;
  types {{ }}
  {temp}
  server {{
    listen 127.0.0.1:{self.port};
    root {self.dir};
{locations}
  }}
}}
""")
        conf = self.dir / "nginx.conf"
        self.process = subprocess.Popen(
            [NGINX, "-p", str(self.dir), "-c", str(conf), "-e", str(self.dir / "error.log")]
        )
        for _ in range(50):
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise SystemExit("bench: nginx did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
