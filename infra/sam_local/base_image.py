"""The stand-in for AWS's Lambda Python 3.12 base image, built locally once per machine.

    python -m infra.sam_local.base_image      # with the engine running (python -m infra.sam_local.engine start)

No image registry is reachable here, so `public.ecr.aws/lambda/python:3.12-x86_64` is built from parts that are:
a debootstrapped Debian (minbase, from the Debian mirror in /etc/apt/sources.list*, imported as an image), the
host's CPython 3.12 tree under /var/lang, and awslambdaric + boto3 from PyPI under /var/runtime
(stand_in/requirements.txt). `sam local invoke --skip-pull-image` then builds its own image on top of it exactly as
it would on AWS's. Both images are tagged with a hash of their inputs; a change of any input (a pin, a script, the
Python build, the mirror) builds again, otherwise nothing is done (~0.1 s).

How faithful: SAM's steps, its emulator and the runtime interface client are the real ones; the OS (Debian, not
Amazon Linux 2023), the CPython patch level and AWS's own bootstrap (approximated in stand_in/bootstrap) are not.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from infra.sam_local.engine import EnginePaths, SetupFailed, api_get, default_paths, docker_cli

STAND_IN_DIR = Path(__file__).resolve().parent / "stand_in"
LAMBDA_IMAGE = "public.ecr.aws/lambda/python:3.12-x86_64"  # what SAM 1.170 builds zip functions on
STAND_IN_REPO = "tickstream/lambda-python-stand-in"
DEBIAN_REPO = "tickstream/debian-minbase"
DEBIAN_SUITE = "bookworm"
# Shared libraries the host's CPython modules link against (ssl, sqlite3, curses, ctypes, pyexpat) beyond minbase.
DEBIAN_PACKAGES = ("libssl3", "libsqlite3-0", "libncursesw6", "libffi8", "libexpat1", "ca-certificates")
# Parts of the CPython tree a Lambda runtime does not ship: the test suite, the static library, GUI and the
# host's site-packages (pip and whatever the machine added); __pycache__ stays for fast imports.
PYTHON_TREE_IGNORED = ("test", "idlelib", "tkinter", "turtledemo", "site-packages", "config-3.12-*", "*.a",
                       "pkgconfig", "_tkinter*", "ensurepip")


@dataclass(frozen=True)
class StandInInputs:
    mirror: str
    python_prefix: Path
    python_version: str

    def debian_key(self) -> str:
        return _digest(["debootstrap --variant=minbase", DEBIAN_SUITE, self.mirror, *DEBIAN_PACKAGES])

    def stand_in_key(self) -> str:
        files = sorted(path for path in STAND_IN_DIR.iterdir() if path.is_file())
        return _digest([self.debian_key(), str(self.python_prefix), self.python_version,
                        *PYTHON_TREE_IGNORED, *(f"{path.name}\n{path.read_text()}" for path in files)])

    @property
    def debian_image(self) -> str:
        return f"{DEBIAN_REPO}:{self.debian_key()}"

    @property
    def stand_in_image(self) -> str:
        return f"{STAND_IN_REPO}:{self.stand_in_key()}"


def _digest(parts: Sequence[str]) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def debian_mirror(sources: Sequence[Path] | None = None) -> str:
    """The Debian archive (not -security) named in /etc/apt/sources.list or /etc/apt/sources.list.d/*."""
    if sources is None:
        sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for source in sources:
        if not source.is_file():
            continue
        for line in source.read_text(errors="replace").splitlines():
            line = line.split("#", 1)[0].strip()
            one_line = re.match(r"deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)  # deb [opts] URI suite ...
            deb822 = re.match(r"URIs:\s*(.+)", line)  # .sources files
            uris = [one_line.group(1)] if one_line else deb822.group(1).split() if deb822 else []
            for uri in uris:
                if re.fullmatch(r"https?://[^/]+(/.*)?/debian/?", uri):
                    return uri.rstrip("/")
    raise SetupFailed("no Debian mirror (…/debian) in /etc/apt/sources.list*: debootstrap needs one")


def inputs_from_host() -> StandInInputs:
    return StandInInputs(mirror=debian_mirror(), python_prefix=Path(sys.base_prefix),
                         python_version=sys.version)


def image_exists(paths: EnginePaths, image: str) -> bool:
    return api_get(paths, f"/images/{image}/json")[0] == 200


def ensure_stand_in(paths: EnginePaths | None = None, inputs: StandInInputs | None = None,
                    log: IO[str] = sys.stderr) -> str:
    """Build the stand-in if its inputs changed and tag it as AWS's image; returns the stand-in's own tag."""
    paths = paths or default_paths()
    inputs = inputs or inputs_from_host()
    if not image_exists(paths, inputs.stand_in_image):
        if not image_exists(paths, inputs.debian_image):
            _build_debian(paths, inputs, log)
        _build_stand_in(paths, inputs, log)
    _docker(paths, "tag", inputs.stand_in_image, LAMBDA_IMAGE)
    return inputs.stand_in_image


def _build_debian(paths: EnginePaths, inputs: StandInInputs, log: IO[str]) -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="debootstrap-", dir=paths.cache_dir) as scratch:
        rootfs = Path(scratch) / "rootfs"
        command = ["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}", DEBIAN_SUITE,
                   str(rootfs), inputs.mirror]
        if subprocess.run(command, stdout=log, stderr=log, check=False).returncode != 0:
            raise SetupFailed(f"debootstrap from {inputs.mirror} failed (see the log above)")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):  # downloaded .debs: 40 MB of nothing
            for item in (rootfs / cache).glob("*.deb" if "archives" in cache else "*_*"):
                item.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        _docker(paths, "import", "-", inputs.debian_image, stdin=tar.stdout)
        if tar.wait() != 0:
            raise SetupFailed("tar of the debootstrapped root failed")
    print(f"sam_local: {inputs.debian_image} built in {time.monotonic() - started:.1f} s", file=log)


def _build_stand_in(paths: EnginePaths, inputs: StandInInputs, log: IO[str]) -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="stand-in-", dir=paths.cache_dir) as scratch:
        context = Path(scratch)
        shutil.copytree(inputs.python_prefix, context / "lang", symlinks=True,
                        ignore=shutil.ignore_patterns(*PYTHON_TREE_IGNORED))
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
               "--target", str(context / "runtime"), "--only-binary=:all:", "--implementation", "cp",
               "--python-version", "3.12", "--platform", "manylinux2014_x86_64",
               "-r", str(STAND_IN_DIR / "requirements.txt")]
        if subprocess.run(pip, stdout=log, stderr=log, check=False).returncode != 0:
            raise SetupFailed("pip install of the stand-in's runtime (awslambdaric, boto3) failed")
        shutil.copy2(STAND_IN_DIR / "bootstrap", context / "runtime" / "bootstrap")
        shutil.copy2(STAND_IN_DIR / "lambda-entrypoint.sh", context / "lambda-entrypoint.sh")
        dockerfile = (STAND_IN_DIR / "Dockerfile").read_text()
        dockerfile = dockerfile.replace("{debian_image}", inputs.debian_image)
        (context / "Dockerfile").write_text(dockerfile.replace("{inputs}", inputs.stand_in_key()))
        # --network none: the build starts no container (no RUN), and if it did, that one would see no network.
        _docker(paths, "build", "--quiet", "--network", "none", "--pull=false", "-t", inputs.stand_in_image,
                str(context))
    print(f"sam_local: {inputs.stand_in_image} built in {time.monotonic() - started:.1f} s", file=log)


def _docker(paths: EnginePaths, *args: str, stdin: IO[bytes] | None = None) -> str:
    result = subprocess.run([docker_cli(), "--host", paths.docker_host, *args], stdin=stdin, capture_output=True,
                            check=False)
    if result.returncode != 0:
        raise SetupFailed(f"docker {args[0]} failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout.decode()


if __name__ == "__main__":
    print(ensure_stand_in())
