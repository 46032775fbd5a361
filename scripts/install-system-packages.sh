#!/usr/bin/env bash
# Installs the Debian packages the tests need on the CI machine: for the cloud-less
# rehearsal (tests/rehearsal/) and the container test (tests/containers/, make
# test-containers) the Docker engine (the "VMs" are systemd containers), debootstrap
# (the VM and base images are built from the Debian archive, no registry needed),
# docker-compose, the SSH client; for the observability tests Prometheus, promtool and
# a headless Chromium; for STORE=postgres (the local stack's store and its tests) PostgreSQL;
# Node.js and npm, which install pouchdb-server for STORE=couchdb (make pouchdb-server) and
# s3rver for STACK_BROKER_STORAGE=s3 (make s3rver).
# kubectl (tests/containers/test_k8s.py: `kubectl kustomize`) is not in this list:
# Debian's kubernetes-client is 1.20 (kustomize v2, too old) and conflicts with the
# upstream `kubectl` package (pkgs.k8s.io) that CI images carry.
#
#   sudo scripts/install-system-packages.sh            # install what is missing
#   sudo scripts/install-system-packages.sh --update   # always run apt-get update first
#   scripts/install-system-packages.sh --check         # exit 1 if something is missing
#
# Idempotent: when every package is already installed it changes nothing (and does not
# even refresh the apt lists unless --update is given).  Needs root, a Debian/Ubuntu
# apt and access to the Debian mirrors (or a local apt proxy).
set -euo pipefail

# The tools the tests call, and where they come from: dockerd (docker.io), docker-compose,
# debootstrap, prometheus and promtool (prometheus), chromium, chromedriver
# (chromium-driver), initdb and postgres (postgresql, in /usr/lib/postgresql/<version>/bin), node
# and npm (nodejs, npm), curl;
# the install below is, in effect,
#   apt-get install docker.io debootstrap docker-compose prometheus chromium chromium-driver postgresql nodejs ...
PACKAGES=(
  docker.io              # dockerd + containerd + runc (started by tests/rehearsal/docker.py)
  debootstrap            # builds the bookworm "VM" image and the containers' base image
  docker-compose         # compose.yaml in make test-containers (1.29 reads the compose spec)
  debian-archive-keyring # debootstrap checks the archive's signatures
  ca-certificates
  openssh-client         # ssh, ssh-keygen (Ansible's connection, the per-run key pair)
  tar
  procps                 # pgrep/ps used by the harness's diagnostics
  curl                   # the VMs' HTTP client, run here by the rehearsal's refusal check's test
  prometheus             # prometheus + promtool: the stack's scrapes, the rules' tests (docs/OBSERVABILITY.md)
  chromium               # the live dashboard's headless-browser test (tests/integration/test_dashboard.py)
  chromium-driver
  postgresql             # the local stack's PostgreSQL with STORE=postgres (stack/postgres.py) and its tests
  nodejs                 # node: pouchdb-server (STORE=couchdb, stack/couchdb.py) and s3rver (STACK_BROKER_STORAGE=s3, stack/broker.py)
)
# npm (make pouchdb-server, make s3rver) comes with NodeSource's nodejs; Debian packages it apart.
command -v npm >/dev/null 2>&1 || PACKAGES+=(npm)
# Extra packages, e.g. IOT_REHEARSAL_EXTRA_PACKAGES="apt-cacher-ng"
read -r -a EXTRA <<<"${IOT_REHEARSAL_EXTRA_PACKAGES:-}"
PACKAGES+=("${EXTRA[@]}")

mode=install
for arg in "$@"; do
  case "$arg" in
    --check) mode=check ;;
    --update) mode=update ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

missing=()
for pkg in "${PACKAGES[@]}"; do
  [ -n "$pkg" ] || continue
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [ "$status" = installed ] || missing+=("$pkg")
done

if [ "$mode" = check ]; then
  if [ ${#missing[@]} -gt 0 ]; then
    echo "missing: ${missing[*]}" >&2
    exit 1
  fi
  echo "all installed: ${PACKAGES[*]}"
  exit 0
fi

if [ ${#missing[@]} -eq 0 ] && [ "$mode" != update ]; then
  echo "install-system-packages: already installed: ${PACKAGES[*]}"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-system-packages: run as root (missing: ${missing[*]})" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# The whole list; --no-upgrade leaves the installed ones as they are.
apt-get install -y -q --no-install-recommends --no-upgrade "${PACKAGES[@]}"
echo "install-system-packages: done (${PACKAGES[*]})"
