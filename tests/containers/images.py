"""The images of the Compose test, built without a registry.

The base is Debian bookworm made with debootstrap (minbase + python3, python3-venv) and
`docker import`ed as ``iot-pipeline/base:<hash>``; the project's Python packages come
from a wheelhouse made on the host (``pip download`` for CPython 3.11, the rehearsal's
tests/rehearsal/wheelhouse.py) and are installed with ``pip --no-index``.  The rootfs
tarball and the wheelhouse are cached outside the clone (IOT_CONTAINERS_CACHE, default
/var/cache/iot-containers); the Docker engine is the rehearsal's (tests/rehearsal/docker.py).

    python -m tests.containers.images                # iot-pipeline/{app,inference,embedded}:latest
    python -m tests.containers.images --postgres     # and iot-pipeline/postgres-debian:latest
    python -m tests.containers.images --target inference-torch   # the torch image, from the same wheelhouse
    python -m tests.containers.images --prune [--base]   # drops the build cache it left
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from common.settings import RehearsalSettings
from tests.rehearsal import docker, wheelhouse
from tests.rehearsal.image import MIRROR, SUITE, _run
from stack.ports import port_free as _port_free, free_port as _free_port

log = logging.getLogger("containers.images")

ROOT = Path(__file__).resolve().parent.parent.parent
CACHE_DIR = Path(RehearsalSettings().iot_containers_cache)
WHEELHOUSE = CACHE_DIR / "wheelhouse"
BASE_REPO = "iot-pipeline/base"
INCLUDE = ["python3", "python3-venv", "ca-certificates"]
RECIPE_VERSION = "1"
# What the images install (requirements/*.txt: -r includes are followed).
# runtime-torch.txt: torch==2.13.0 resolves to the CPU wheel this machine's pip finds (its
# find-links hold torch-2.13.0+cpu), never PyPI's CUDA build.
REQUIREMENTS = [ROOT / "requirements" / name
                for name in ("inference.txt", "runtime-torch.txt", "stack.txt", "analysis.txt")]
LABEL = "iot-pipeline.test=containers"
TARGETS = ("app", "inference", "embedded")  # what make test-containers builds and runs
# Built on request (--target): not part of the Compose test.
OPTIONAL_TARGETS = ("inference-torch",)
WHEEL_PORT = RehearsalSettings().iot_containers_wheel_port


def base_tag() -> str:
    h = hashlib.sha256(f"{RECIPE_VERSION}\0{SUITE}\0{' '.join(INCLUDE)}".encode()).hexdigest()[:16]
    return f"{BASE_REPO}:{h}"


def ensure_base() -> str:
    """The debootstrap base image: present, imported from the cached tarball, or built."""
    tag = base_tag()
    if docker.image_exists(tag):
        return tag
    digest = tag.split(":")[1]
    images = CACHE_DIR / "images"
    images.mkdir(parents=True, exist_ok=True)
    tarball = images / f"base-{digest}.tar"
    with open(images / f"base-{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not tarball.exists():
            root = CACHE_DIR / "build" / digest
            if root.exists():
                shutil.rmtree(root)
            root.parent.mkdir(parents=True, exist_ok=True)
            debs = docker.CACHE_DIR / "debs"  # the rehearsal's .deb cache: shared downloads
            debs.mkdir(parents=True, exist_ok=True)
            t0 = time.monotonic()
            _run(["debootstrap", "--variant=minbase", f"--include={','.join(INCLUDE)}",
                  f"--cache-dir={debs}", SUITE, str(root), MIRROR])
            # Smaller: no apt lists, docs or caches in the image.
            for sub in ("var/lib/apt/lists", "var/cache/apt", "usr/share/doc", "usr/share/man",
                        "usr/share/info", "usr/share/locale"):
                path = root / sub
                if path.exists():
                    shutil.rmtree(path)
                    path.mkdir()
            partial = tarball.with_suffix(".partial")
            _run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."])
            partial.rename(tarball)
            shutil.rmtree(root)
            log.info("base rootfs in %.0fs: %s", time.monotonic() - t0, tarball)
        log.info("docker import %s -> %s", tarball, tag)
        with open(tarball, "rb") as f:
            proc = subprocess.run([docker.docker_bin(), "import", "--change", f"LABEL {LABEL}",
                                   "--change", 'CMD ["/bin/bash"]', "-", tag],
                                  stdin=f, capture_output=True, timeout=1800)
        if proc.returncode != 0:
            raise docker.DockerError(f"docker import failed: {proc.stderr.decode(errors='replace')}")
    return tag


def ensure_wheelhouse() -> Path:
    """Wheels for every requirement the images install (CPython 3.11, manylinux x86_64).
    Seeded from the rehearsal's wheelhouse when present (hard links: no second download)."""
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    if wheelhouse.WHEELHOUSE.is_dir():
        for whl in wheelhouse.WHEELHOUSE.glob("*.whl"):
            target = WHEELHOUSE / whl.name
            if not target.exists():
                try:
                    os.link(whl, target)
                except OSError:
                    shutil.copy2(whl, target)
    return wheelhouse.download(REQUIREMENTS, dest=WHEELHOUSE)


@contextlib.contextmanager
def served_wheelhouse(directory: Path):
    """The wheelhouse over HTTP on the host's loopback (builds run with --network host);
    yields pip's arguments.  The rehearsal's server (wheelhouse.serve), stopped after."""
    # A fixed port keeps PIP_ARGS, hence Docker's layer cache, the same from run to run.
    port = WHEEL_PORT if _port_free(WHEEL_PORT) else _free_port()
    with tempfile.TemporaryDirectory(prefix="iotc-wheels-") as run_dir:
        wheelhouse.serve(directory, "127.0.0.1", port, Path(run_dir))
        try:
            yield f"--no-index --find-links http://127.0.0.1:{port}/"
        finally:
            wheelhouse.stop(Path(run_dir))


def image_names(tag: str = "test", targets=TARGETS) -> dict[str, str]:
    return {target: f"iot-pipeline/{target}:{tag}" for target in targets}


def build_images(tag: str = "test", timeout_s: float = 3600, targets=TARGETS) -> dict[str, str]:
    """docker build of every target of the Dockerfile on the debootstrap base, pip from
    the local wheelhouse; the engine's layer cache makes a second build quick."""
    base = ensure_base()
    wheels = ensure_wheelhouse()
    names = image_names(tag, targets)
    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip() or "unknown"
    with served_wheelhouse(wheels) as pip_args:
        for target, name in names.items():
            t0 = time.monotonic()
            docker.docker("build", "--network", "host", "--target", target, "-t", name,
                          "--label", LABEL, "--build-arg", f"BASE_IMAGE={base}",
                          "--build-arg", f"PIP_ARGS={pip_args}", "--build-arg", f"REVISION={revision}",
                          # offline: torch's CPU wheel from the wheelhouse, not PyTorch's index
                          *(["--build-arg", "TORCH_INDEX="] if target == "inference-torch" else []),
                          "-f", str(ROOT / "Dockerfile"), str(ROOT),
                          timeout=timeout_s)
            log.info("built %s in %.0fs", name, time.monotonic() - t0)
    return names


POSTGRES_REPO = "iot-pipeline/postgres-debian"


def build_postgres_image(tag: str = "test", timeout_s: float = 1800) -> str:
    """PostgreSQL from Debian's package on the same base (tests/containers/postgres.Dockerfile):
    the Compose test's server for STORE=postgres, standing in for the official image.  apt
    reaches the Debian mirror the base was made from (the build runs on the host network)."""
    name = f"{POSTGRES_REPO}:{tag}"
    here = Path(__file__).resolve().parent
    t0 = time.monotonic()
    docker.docker("build", "--network", "host", "-t", name, "--label", LABEL,
                  "--build-arg", f"BASE_IMAGE={ensure_base()}",
                  "-f", str(here / "postgres.Dockerfile"), str(here), timeout=timeout_s)
    log.info("built %s in %.0fs", name, time.monotonic() - t0)
    return name


def remove_images(tag: str = "test") -> None:
    for name in [*image_names(tag).values(), f"{POSTGRES_REPO}:{tag}"]:
        docker.docker("rmi", name, check=False, timeout=120)


def prune(base: bool = False) -> None:
    """Removes the build cache this module left in the engine: the untagged stage images
    (they carry the base image's label), and with base=True the base image and its tarball."""
    docker.docker("image", "prune", "-f", "--filter", f"label={LABEL}", check=False, timeout=600)
    if base:
        tag = base_tag()
        docker.docker("rmi", tag, check=False, timeout=120)
        (CACHE_DIR / "images" / f"base-{tag.split(':')[1]}.tar").unlink(missing_ok=True)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.containers.images", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", default="latest", help="tag of the iot-pipeline/<target> images (latest)")
    parser.add_argument("--prune", action="store_true",
                        help="remove the build cache (untagged stages) instead of building")
    parser.add_argument("--base", action="store_true", help="with --prune: the base image and tarball too")
    parser.add_argument("--postgres", action="store_true",
                        help="also the PostgreSQL image of the STORE=postgres test (Debian's package)")
    parser.add_argument("--target", action="append", choices=TARGETS + OPTIONAL_TARGETS,
                        help="build only this target (repeatable; default: %s)" % ", ".join(TARGETS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    docker.ensure_engine()
    if args.prune:
        prune(base=args.base)
    else:
        for target, name in build_images(tag=args.tag, targets=tuple(args.target or TARGETS)).items():
            print(target, name)
        if args.postgres:
            print("postgres", build_postgres_image(tag=args.tag))
