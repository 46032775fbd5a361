"""The rehearsal's "VM" image: Debian bookworm made with debootstrap (no registry), with
systemd as PID 1, sshd and a `cc` user with passwordless sudo like Chameleon's CC-* images,
and every apt package the roles install baked in.  Cached under CACHE_DIR keyed by a hash
of the package list and of the recipe, so only the first run pays for the build."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import shutil
import subprocess
import time
from pathlib import Path

from common.settings import RehearsalSettings

from . import docker

log = logging.getLogger("rehearsal.image")

HERE = Path(__file__).resolve().parent
PACKAGES_FILE = HERE / "vm-packages.txt"
SUITE = "bookworm"
MIRROR = RehearsalSettings().iot_rehearsal_debian_mirror
REPO = "iot-rehearsal-vm"
# Bumped when the recipe below changes in a way the hash of its text would not catch.
RECIPE_VERSION = "1"

# debootstrap --include: just enough for apt to install the rest inside the chroot.
BOOTSTRAP_INCLUDE = ["ca-certificates", "gnupg", "apt-utils", "systemd", "systemd-sysv"]

# Runs inside the chroot after the packages are installed.
CONFIGURE = r"""
set -eu
export DEBIAN_FRONTEND=noninteractive
# --- the login user of Chameleon's images: cc, passwordless sudo, key login only -------
id cc >/dev/null 2>&1 || useradd --create-home --shell /bin/bash --user-group cc
usermod -aG sudo cc
passwd -l cc >/dev/null
install -d -m 0700 -o cc -g cc /home/cc/.ssh
: > /home/cc/.ssh/authorized_keys
chown cc:cc /home/cc/.ssh/authorized_keys
chmod 0600 /home/cc/.ssh/authorized_keys
echo 'cc ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/90-cloud-init-users
chmod 0440 /etc/sudoers.d/90-cloud-init-users
# --- sshd: public keys only; host keys made at first boot (one set per container) ------
cat > /etc/ssh/sshd_config.d/50-rehearsal.conf <<'EOF'
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
PubkeyAuthentication yes
UseDNS no
AllowTcpForwarding yes
EOF
rm -f /etc/ssh/ssh_host_*
install -d /etc/systemd/system/ssh.service.d
cat > /etc/systemd/system/ssh.service.d/10-hostkeys.conf <<'EOF'
[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
EOF
systemctl enable ssh.service
# --- systemd in a container: no consoles, no udev, no hardware --------------------------
systemctl set-default multi-user.target
for unit in getty@tty1.service serial-getty@console.service console-getty.service \
    getty.target systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket \
    systemd-udev-trigger.service systemd-udev-settle.service systemd-modules-load.service \
    sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount sys-fs-fuse-connections.mount \
    systemd-remount-fs.service systemd-firstboot.service e2scrub_reap.service \
    apt-daily.timer apt-daily-upgrade.timer; do
  systemctl mask "$unit" >/dev/null 2>&1 || true
done
# Docker bind-mounts /etc/hosts, /etc/hostname and /etc/resolv.conf: Ansible's atomic
# rename onto them fails (EBUSY).  With CAP_SYS_ADMIN this unit turns them back into plain
# files with the same content at boot, so the roles edit them as on a VM.
cat > /usr/local/sbin/rehearsal-unbind-etc <<'EOF'
#!/bin/sh
for f in /etc/hosts /etc/hostname /etc/resolv.conf; do
  if mountpoint -q "$f"; then
    tmp=$(mktemp)
    cat "$f" > "$tmp"
    if umount "$f" 2>/dev/null; then
      cat "$tmp" > "$f"
      chmod 0644 "$f"
    else
      echo "rehearsal-unbind-etc: cannot unmount $f (no CAP_SYS_ADMIN): it stays bind-mounted" >&2
    fi
    rm -f "$tmp"
  fi
done
exit 0
EOF
chmod 0755 /usr/local/sbin/rehearsal-unbind-etc
cat > /etc/systemd/system/rehearsal-unbind-etc.service <<'EOF'
[Unit]
Description=Rehearsal: make Docker's /etc/hosts, /etc/hostname, /etc/resolv.conf plain files
DefaultDependencies=no
After=local-fs.target
Before=sysinit.target network-pre.target ssh.service systemd-hostnamed.service
ConditionVirtualization=container

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/rehearsal-unbind-etc

[Install]
WantedBy=sysinit.target
EOF
systemctl enable rehearsal-unbind-etc.service
# Each container gets its own machine-id at boot (systemd writes a transient one).
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
ln -sf /etc/machine-id /var/lib/dbus/machine-id
ln -sf /usr/share/zoneinfo/Etc/UTC /etc/localtime
echo Etc/UTC > /etc/timezone
# --- cloud-init is absent: `cloud-init status --wait` answers like a finished boot -----
cat > /usr/local/bin/cloud-init <<'EOF'
#!/bin/sh
# Rehearsal stand-in: the container has no cloud-init; report a finished boot.
case "$1" in
  status) echo "status: done"; exit 0 ;;
  --version|-v) echo "/usr/bin/cloud-init 0.0-rehearsal"; exit 0 ;;
  *) echo "cloud-init (rehearsal stand-in): '$*' not supported" >&2; exit 0 ;;
esac
EOF
chmod 0755 /usr/local/bin/cloud-init
# --- apt: no route to the mirrors from the test network.  No sources: `apt-get update`
# succeeds and every baked package is "installed"; anything else fails loudly.
mkdir -p /etc/apt/rehearsal-disabled
mv /etc/apt/sources.list /etc/apt/rehearsal-disabled/ 2>/dev/null || true
: > /etc/apt/sources.list
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/dpkg.log /tmp/* /var/tmp/*
# The rehearsal image's identity (the harness checks it).
echo "REHEARSAL_IMAGE=1" > /etc/iot-rehearsal-image
"""


def read_packages(path: Path = PACKAGES_FILE) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.extend(line.split())
    # order-preserving de-duplication
    return list(dict.fromkeys(names))


def recipe_hash(packages: list[str]) -> str:
    h = hashlib.sha256()
    for part in (RECIPE_VERSION, SUITE, " ".join(BOOTSTRAP_INCLUDE), " ".join(sorted(packages)), CONFIGURE):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def image_tag(packages: list[str] | None = None) -> str:
    return f"{REPO}:{recipe_hash(packages or read_packages())}"


def _run(cmd: list[str], timeout: float = 3600, **kw) -> None:
    log.info("+ %s", " ".join(cmd)[:300])
    proc = subprocess.run(cmd, timeout=timeout, text=True, capture_output=True, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)[:200]} failed ({proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


class _Mounts:
    """proc, sys, dev and dev/pts inside the chroot while packages install."""

    def __init__(self, root: Path):
        self.root = root
        self.done: list[Path] = []

    def __enter__(self):
        for src, dst, args in (("proc", "proc", ["-t", "proc"]), ("sysfs", "sys", ["-t", "sysfs"]),
                               ("/dev", "dev", ["--bind"]), ("devpts", "dev/pts", ["-t", "devpts"])):
            target = self.root / dst
            target.mkdir(parents=True, exist_ok=True)
            _run(["mount", *args, src, str(target)])
            self.done.append(target)
        return self

    def __exit__(self, *exc):
        for target in reversed(self.done):
            subprocess.run(["umount", "-l", str(target)], check=False)
        self.done.clear()


def build_rootfs(root: Path, packages: list[str]) -> None:
    if root.exists():
        subprocess.run(["umount", "-R", "-l", str(root)], capture_output=True, check=False)
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    debs = docker.CACHE_DIR / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    cmd = ["debootstrap", "--variant=minbase", "--components=main",
           f"--include={','.join(BOOTSTRAP_INCLUDE)}", f"--cache-dir={debs}", SUITE, str(root), MIRROR]
    t0 = time.monotonic()
    _run(cmd)
    log.info("debootstrap: %.0fs", time.monotonic() - t0)
    (root / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")
    (root / "usr/sbin/policy-rc.d").chmod(0o755)
    (root / "etc/apt/sources.list").write_text(f"deb {MIRROR} {SUITE} main\n")
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    # The host's resolver, for apt inside the chroot.
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    with _Mounts(root):
        t0 = time.monotonic()
        _run(["chroot", str(root), "apt-get", "update", "-q"], env=env)
        _run(["chroot", str(root), "apt-get", "install", "-y", "-q", "--no-install-recommends",
              "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold", *packages],
             env=env)
        log.info("apt-get install (%d packages): %.0fs", len(packages), time.monotonic() - t0)
        _run(["chroot", str(root), "/bin/bash", "-c", CONFIGURE], env=env)
    (root / "usr/sbin/policy-rc.d").unlink()
    (root / "etc/resolv.conf").write_text("")


def ensure_image(packages: list[str] | None = None, rebuild: bool = False) -> str:
    """The tag of the VM image, built (cold) or imported from the cached tarball (warm)."""
    packages = packages or read_packages()
    digest = recipe_hash(packages)
    tag = f"{REPO}:{digest}"
    if not rebuild and docker.image_exists(tag):
        log.info("VM image %s present", tag)
        return tag
    images = docker.CACHE_DIR / "images"
    images.mkdir(parents=True, exist_ok=True)
    tarball = images / f"{digest}.tar"
    with open(images / f"{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if rebuild and tarball.exists():
            tarball.unlink()
        if not tarball.exists():
            root = docker.CACHE_DIR / "build" / digest
            t0 = time.monotonic()
            build_rootfs(root, packages)
            partial = tarball.with_suffix(".tar.partial")
            _run(["tar", "-C", str(root), "--numeric-owner", "--xattrs", "--xattrs-include=security.capability",
                  "-cf", str(partial), "."])
            partial.rename(tarball)
            shutil.rmtree(root)
            log.info("VM rootfs built in %.0fs: %s (%.0f MB)", time.monotonic() - t0, tarball,
                     tarball.stat().st_size / 1e6)
        docker.import_rootfs(tarball, tag)
    return tag


def remove_stale(keep: str) -> list[str]:
    """Removes cached tarballs and images of other package lists (keeps `keep`'s digest)."""
    removed = []
    digest = keep.split(":", 1)[-1]
    images = docker.CACHE_DIR / "images"
    for path in images.glob("*.tar") if images.exists() else []:
        if path.stem != digest:
            path.unlink()
            removed.append(str(path))
    proc = docker.docker("images", REPO, "--format", "{{.Repository}}:{{.Tag}}", check=False)
    for tag in proc.stdout.split():
        if tag != keep:
            docker.docker("rmi", tag, check=False)
            removed.append(tag)
    return removed
