"""Settings of the test suites (tests/): read by the tests, the fault suite, the container
images' build and the deploy rehearsal, never by the pipeline.  Declared with the rest so
that docs/SETTINGS.md lists every variable the project reads and a bad value is refused
with its name.  Imported through :mod:`common.settings`.

An empty variable means its default, as in the local stack's settings.
"""

from __future__ import annotations

from pydantic import Field

from common.settings_base import CONFIG, ProjectSettings

_CONFIG = {**CONFIG, "env_ignore_empty": True}


class SuiteSettings(ProjectSettings):
    """The test suites (make test, make test-faults, make test-containers): how long a test
    waits, which opt-in suites run inside a plain pytest, and how much the fault suite sends."""

    model_config = _CONFIG

    ci: str = Field("", description=(
        "true under CI (.ci/run sets it, as most CI services do): a test that cannot find what the project "
        "installs fails instead of skipping (tests/binaries.py). Anything else: it skips, saying why."))
    hang_guard_s: float = Field(600.0, gt=0, description=(
        "Longest any test waits for something to happen before it fails: a guard against a hang, "
        "never a time the test asserts."))
    run_faults: bool = Field(False, description=(
        "Also run the fault suite (tests/faults) when pytest is not given -m faults (make test-faults gives it)."))
    run_broker_storage_faults: bool = Field(False, description=(
        "Also run the broker's storage faults (s3rver killed, its disk full) when pytest is not given "
        "-m broker_storage (make test-faults-broker-storage gives it)."))
    fault_images: int = Field(1000, ge=1, description="Images each fault scenario sends.")
    fault_rate: float = Field(40.0, gt=0, description="Images per second each fault scenario sends.")
    faults_gunicorn_workers: int = Field(2, ge=1, description=(
        "GUNICORN_WORKERS of the fault suite's inference service."))
    run_containers: bool = Field(False, description=(
        "Also run the container suite (tests/containers: images built, compose.yaml run) when pytest is "
        "not given -m containers (make test-containers gives it)."))
    dashboard_screenshot: str | None = Field(None, description=(
        "A PNG file the dashboard's browser test saves its screenshot to. Unset: none."))
    report_screenshot: str | None = Field(None, description=(
        "A PNG file the report page's browser test saves its screenshot to. Unset: none."))


class RehearsalSettings(ProjectSettings):
    """The deploy rehearsal (tests/rehearsal, make deploy-rehearsal) and the container images'
    build (tests/containers/images.py): where their caches and runs live, and the opt-in
    pytest wrappers of the whole rehearsal.  The IOT_FAKE_CLOUD_* variables are set by the
    harness for the fake cloud's Ansible modules; their descriptions say so."""

    model_config = _CONFIG

    iot_rehearsal: bool = Field(False, description=(
        "Run the whole rehearsal (root, Docker, about an hour) as the pytest test "
        "tests/rehearsal/test_rehearsal.py::test_deploy_rehearsal; make deploy-rehearsal runs it directly."))
    iot_rehearsal_smoke: bool = Field(False, description=(
        "Run the rehearsal's smoke (the harness's smoke command: Docker, root) as the pytest test "
        "tests/rehearsal/test_fakes.py::test_rehearsal_smoke."))
    iot_rehearsal_cache: str = Field("/var/cache/iot-rehearsal", description=(
        "Cache outside the clone: the VM image's rootfs, the .deb files, the wheelhouse (kept across runs)."))
    iot_rehearsal_wheelhouse: str | None = Field(None, description=(
        "Directory of the rehearsal's wheelhouse (pip download for the VMs' Python). Unset: "
        "<IOT_REHEARSAL_CACHE>/wheelhouse."))
    iot_rehearsal_run_dir: str = Field("/tmp/iot-rehearsal", description=(
        "Directory of one harness run (its state, keys, logs) when --run-dir is not given."))
    iot_rehearsal_debian_mirror: str = Field("http://deb.debian.org/debian", description=(
        "Debian mirror debootstrap builds the VM and base images from."))
    iot_rehearsal_timeout_factor: float = Field(1.0, gt=0, description=(
        "Multiplies the rehearsal's hang guards (--timeout-factor's default) on a slow machine."))
    iot_rehearsal_extra_packages: str = Field("", description=(
        "More Debian packages for scripts/install-system-packages.sh to install, space-separated "
        "(an apt-cacher-ng, say)."))
    iot_containers_cache: str = Field("/var/cache/iot-containers", description=(
        "Cache outside the clone of the container images' build: the debootstrap base and the wheelhouse."))
    iot_containers_wheel_port: int = Field(8775, ge=1, le=65535, description=(
        "Port the container images' build serves its wheelhouse on (127.0.0.1) when it is free, else any "
        "free port; a fixed one keeps Docker's layer cache."))
    iot_fake_cloud_real_collection: str | None = Field(None, description=(
        "Set by the harness for the fake cloud: the installed openstack.cloud collection whose argument "
        "specs the fakes validate against. Unset: found on the Python path."))
    iot_fake_cloud_state: str | None = Field(None, description=(
        "Set by the harness for the fake cloud's modules: the JSON file of the fake cloud's state."))
    iot_rehearsal_events: str | None = Field(None, description=(
        "Set by the rehearsal for its Ansible callback: the file each playbook's events are written to."))
