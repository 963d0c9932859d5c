"""A Docker engine for `sam local`, started and stopped by pid, that can only ever use the host's loopback.

    python -m infra.sam_local.engine install   # apt-get docker.io and debootstrap if missing (root)
    python -m infra.sam_local.engine start     # prints `export DOCKER_HOST=unix://…`
    python -m infra.sam_local.engine stop

The daemon gets its own socket, exec root and pid file under a run directory (/tmp/tickstream-sam-local by hand;
the tests use one of their own) and its images under the per-machine cache ($XDG_CACHE_HOME, default ~/.cache,
/tickstream/sam-local), so the stand-in base image is built once per machine. No bridge, no iptables, no
userland proxy: with `--bridge=none` only the `host` and `none` networks exist and no interface is created. It
listens on a unix socket only (no TCP port). One daemon per cache at a time: a lock file guards the data root.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

APT_PACKAGES = ("docker.io", "debootstrap")
# Every flag that would let the daemon make an interface, a NAT rule or a listener beyond the socket is turned off.
LOOPBACK_ONLY_FLAGS = ("--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-forward=false",
                       "--ip-masq=false", "--userland-proxy=false")
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0
LOCK_TIMEOUT_SECONDS = 900.0


class EngineUnavailable(RuntimeError):
    """Docker cannot run on this machine; the message says why."""


class SetupFailed(RuntimeError):
    """Docker could run here but installing or building what it needs failed: a fault to fix, not a reason to skip."""


@dataclass(frozen=True)
class EnginePaths:
    cache_dir: Path  # per machine: data root (images), debootstrap inputs
    run_dir: Path  # per daemon: socket, exec root, pid file, log

    @property
    def data_root(self) -> Path:
        return self.cache_dir / "docker"

    @property
    def socket(self) -> Path:
        return self.run_dir / "docker.sock"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "dockerd.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "dockerd.log"

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"


def machine_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tickstream" / "sam-local"


def default_paths() -> EnginePaths:
    return EnginePaths(machine_cache_dir(), Path("/tmp/tickstream-sam-local"))  # short: socket paths ≤ 107 bytes


# --- packages -----------------------------------------------------------------------------------------------------

def missing_programs() -> list[str]:
    return [name for name in ("dockerd", "containerd", "runc", "debootstrap")
            if shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None]


def ensure_packages(log: IO[str] = sys.stderr) -> None:
    """Install docker.io and debootstrap from the Debian mirror if a program is missing (needs root)."""
    missing = missing_programs()
    if not missing:
        return
    if os.geteuid() != 0:
        raise EngineUnavailable(f"{', '.join(missing)} not installed and not root to apt-get install "
                                f"{' '.join(APT_PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"sam_local: installing {' '.join(APT_PACKAGES)} (missing: {', '.join(missing)})", file=log)
    started = time.monotonic()
    with _services_never_started():
        subprocess.run(["apt-get", "update", "-q"], env=env, check=False, stdout=log, stderr=log)
        result = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *APT_PACKAGES],
                                env=env, check=False, stdout=log, stderr=log)
    if result.returncode != 0 or missing_programs():
        raise SetupFailed(f"apt-get install {' '.join(APT_PACKAGES)} failed (exit {result.returncode})")
    print(f"sam_local: installed in {time.monotonic() - started:.1f} s", file=log)


@contextlib.contextmanager
def _services_never_started() -> Iterator[None]:
    """The package's init script would start a stock dockerd with the default bridge (172.17.0.0/16): forbidden
    here. policy-rc.d exit 101 tells invoke-rc.d not to start any service while installing."""
    policy = Path("/usr/sbin/policy-rc.d")
    if policy.exists():
        yield
        return
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    try:
        yield
    finally:
        policy.unlink()


# --- the daemon ---------------------------------------------------------------------------------------------------

def docker_cli() -> str:
    """Debian's client, matching the daemon, before whatever else is on PATH."""
    return shutil.which("docker", path="/usr/bin") or shutil.which("docker") or "docker"


def dockerd_command(paths: EnginePaths) -> list[str]:
    return [shutil.which("dockerd", path="/usr/sbin:/usr/bin:/sbin:/bin") or "dockerd",
            "--host", paths.docker_host, "--data-root", str(paths.data_root),
            "--exec-root", str(paths.run_dir / "exec"), "--pidfile", str(paths.pid_file),
            "--config-file", str(paths.run_dir / "daemon.json"),  # not /etc/docker/daemon.json
            "--storage-driver", "overlay2", "--log-level", "warn", *LOOPBACK_ONLY_FLAGS]


def start(paths: EnginePaths) -> int:
    """Start dockerd and wait until it answers; returns its pid. Raises EngineUnavailable if it cannot run."""
    for directory in (paths.cache_dir, paths.run_dir, paths.data_root):
        directory.mkdir(parents=True, exist_ok=True)
    if is_running(paths):
        raise EngineUnavailable(f"a dockerd (pid {read_pid(paths)}) already runs for {paths.run_dir}")
    paths.socket.unlink(missing_ok=True)
    (paths.run_dir / "daemon.json").write_text("{}\n")
    with paths.log_file.open("ab") as log:
        process = subprocess.Popen(dockerd_command(paths), stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EngineUnavailable(f"dockerd exited with {process.returncode}: {_log_tail(paths)}")
        if ping(paths):
            _check_loopback_only(paths)
            return process.pid
        time.sleep(0.1)
    stop(paths, process.pid)
    raise EngineUnavailable(f"dockerd did not answer within {START_TIMEOUT_SECONDS:.0f} s: {_log_tail(paths)}")


def stop(paths: EnginePaths, pid: int | None = None) -> None:
    """SIGTERM the daemon by its pid (it stops its containers and its containerd), SIGKILL after the timeout."""
    pid = pid or read_pid(paths)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    paths.pid_file.unlink(missing_ok=True)
    unmount_leftovers(paths.run_dir)


def mounts_under(directory: Path) -> list[str]:
    """Mount points below `directory`, deepest first (from /proc/self/mountinfo; octal escapes as written)."""
    prefix = str(directory.resolve()).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as mountinfo:
        points = [line.split()[4] for line in mountinfo]
    return sorted((point for point in points if point.startswith(prefix)), key=len, reverse=True)


def unmount_leftovers(run_dir: Path) -> None:
    """dockerd leaves its default network namespace bind-mounted under the exec root (exec/netns/default) after a
    clean stop; unmount whatever is left so the run directory can be removed."""
    for point in mounts_under(run_dir):
        subprocess.run(["umount", point], check=False, capture_output=True)


def read_pid(paths: EnginePaths) -> int | None:
    try:
        return int(paths.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def is_running(paths: EnginePaths) -> bool:
    pid = read_pid(paths)
    return pid is not None and _alive(pid)


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return False  # our child, and it has exited
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def api_get(paths: EnginePaths, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET on the daemon's API over its unix socket."""
    connection = _UnixConnection(paths.socket, timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def ping(paths: EnginePaths) -> bool:
    try:
        return api_get(paths, "/_ping", timeout=1.0)[0] == 200
    except OSError:
        return False


def _check_loopback_only(paths: EnginePaths) -> None:
    """Refuse to go on with a daemon that has any network beyond host/none (a bridge would leave 127.0.0.0/8)."""
    _, body = api_get(paths, "/networks")
    drivers = {network["Name"]: network["Driver"] for network in json.loads(body)}
    if set(drivers.values()) - {"host", "null"}:
        stop(paths)
        raise SetupFailed(f"dockerd came up with networks beyond host/none: {drivers}")


def _log_tail(paths: EnginePaths, lines: int = 8) -> str:
    try:
        return " | ".join(paths.log_file.read_text(errors="replace").strip().splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@contextlib.contextmanager
def cache_lock(paths: EnginePaths, timeout: float = LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
    """One daemon per data root: a second run on the same machine waits for the first to finish."""
    paths.cache_dir.mkdir(parents=True, exist_ok=True)
    with (paths.cache_dir / "lock").open("w") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SetupFailed(
                        f"{paths.cache_dir} stayed locked by another run for {timeout:.0f} s") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["install", "start", "stop", "status"])
    command = parser.parse_args(argv).command
    paths = default_paths()
    try:
        if command == "install":
            ensure_packages()
        elif command == "start":
            ensure_packages()
            pid = start(paths)
            print(f"export DOCKER_HOST={paths.docker_host}  # dockerd pid {pid}; stop: python -m "
                  "infra.sam_local.engine stop")
        elif command == "stop":
            stop(paths)
        else:
            print(f"dockerd pid {read_pid(paths)} running" if is_running(paths) else "dockerd not running")
    except (EngineUnavailable, SetupFailed) as error:
        print(f"sam_local: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
