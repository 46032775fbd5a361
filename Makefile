# Quick start: `make demo` runs the whole pipeline once on the embedded local stack;
# `make test` runs every test.  Both create .venv and install what they need.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-deploy.txt requirements/*.txt | cksum | cut -d' ' -f1)

.PHONY: venv up down status demo test test-faults test-faults-broker-storage soak test-pythons test-pythons-ci lint experiment bench serve train deploy \
        teardown clean deploy-venv logs ssh deploy-rehearsal test-containers test-containers-torch pouchdb-server s3rver

# PyTorch's CPU build (MODEL_ENGINE=torch, requirements/runtime-torch.txt), installed from
# PyTorch's index before the rest: on Linux PyPI's torch is the CUDA build (several GB of
# nvidia-* packages).  Where that index cannot be reached (a failure make ignores: the `-`)
# the pin comes from pip's usual indexes with the rest.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

$(STAMP): requirements.txt requirements-deploy.txt $(wildcard requirements/*.txt)
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	-$(PYTHON) -m pip install --quiet --retries 0 --timeout 15 --no-deps --index-url $(TORCH_INDEX) \
	  $$(grep -E '^torch==' requirements/runtime-torch.txt)
	$(PYTHON) -m pip install --quiet -r requirements.txt
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

# pouchdb-server (npm), the local stack's CouchDB with STORE=couchdb (stack/couchdb.py), from
# pouchdb/package-lock.json into pouchdb/node_modules (not in git, not in the bundle).
# --ignore-scripts: leveldown loads the binary it ships, and no install script fetches or
# compiles anything (sqlite3, a backend the stack does not use, stays unbuilt).
POUCHDB_STAMP := pouchdb/node_modules/.installed-$(shell cat pouchdb/package.json pouchdb/package-lock.json | cksum | cut -d' ' -f1)

$(POUCHDB_STAMP): pouchdb/package.json pouchdb/package-lock.json
	@command -v npm >/dev/null || { echo "npm is not installed: sudo scripts/install-system-packages.sh" >&2; exit 1; }
	npm ci --prefix pouchdb --ignore-scripts --no-audit --no-fund --loglevel=error
	rm -f pouchdb/node_modules/.installed-* && touch $@

pouchdb-server: $(POUCHDB_STAMP) ## install pouchdb-server (npm) for STORE=couchdb

# s3rver (npm), where the local stack's broker keeps its data with STACK_BROKER_STORAGE=s3
# (stack/broker.py; the fault suite's broker scenarios and make test use it), from s3rver/package-lock.json into s3rver/node_modules (not in
# git, not in the bundle).  Pure JavaScript: nothing to build, no install script.
S3RVER_STAMP := s3rver/node_modules/.installed-$(shell cat s3rver/package.json s3rver/package-lock.json | cksum | cut -d' ' -f1)

$(S3RVER_STAMP): s3rver/package.json s3rver/package-lock.json
	@command -v npm >/dev/null || { echo "npm is not installed: sudo scripts/install-system-packages.sh" >&2; exit 1; }
	npm ci --prefix s3rver --ignore-scripts --no-audit --no-fund --loglevel=error
	rm -f s3rver/node_modules/.installed-* && touch $@

s3rver: $(S3RVER_STAMP) ## install s3rver (npm), the local broker's persistent storage

# What `make up` and `make demo` need besides the virtualenv: pouchdb-server with STORE=couchdb,
# s3rver with STACK_BROKER_STORAGE=s3.
STORE_SERVER := $(if $(filter couchdb,$(shell echo '$(STORE)' | tr A-Z a-z)),pouchdb-server) \
  $(if $(filter s3,$(shell echo '$(STACK_BROKER_STORAGE)' | tr A-Z a-z)),s3rver)

# The deployment controller: its own light virtualenv (Ansible, the OpenStack client,
# the analysis; no TensorFlow, no test tools), so `make deploy` works on a Mac too.
DEPLOY_VENV ?= .venv-deploy
DEPLOY_STAMP := $(DEPLOY_VENV)/.installed-$(shell cat requirements-deploy.txt requirements/analysis.txt requirements/core.txt | cksum | cut -d' ' -f1)
# The deployment's name prefix (iot_name_prefix): .deploy/$(PREFIX)/ssh_config
PREFIX ?= iot-pipeline

$(DEPLOY_STAMP): requirements-deploy.txt requirements/analysis.txt requirements/core.txt
	test -x $(DEPLOY_VENV)/bin/python || $(PY) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(DEPLOY_VENV)/bin/python -m pip install --quiet -r requirements-deploy.txt
	rm -f $(DEPLOY_VENV)/.installed-* && touch $@

deploy-venv: $(DEPLOY_STAMP)

up: venv $(STORE_SERVER) ## start the local stack (broker, MongoDB, Gunicorn, consumers, Prometheus if installed, dashboard)
	$(PYTHON) -m stack up

down:             ## stop the local stack, leaving no process behind; the stores' data (.run/data) stays for the next `make up`
	@test -x $(PYTHON) && $(PYTHON) -m stack down || true

status: venv
	$(PYTHON) -m stack status

demo: venv $(STORE_SERVER) ## the whole pipeline once: 300 images, results/latest/
	$(PYTHON) -m experiments.demo

test: venv pouchdb-server s3rver ## unit + integration tests (starts and stops its own stack)
	$(PYTHON) -m pytest -q tests

test-faults: venv pouchdb-server s3rver ## fault injection: kill each part mid-stream, 1,000 images per scenario (~6 min)
	$(PYTHON) -m pytest -q -m faults tests/faults

# The broker's storage faults (tests/faults/broker_storage.py, docs/RELIABILITY.md): s3rver killed
# mid-stream, and its disk (a tmpfs mounted for the run: root) full for 30 s.  Not in test-faults,
# whose CI budget they would overrun; run before changing the broker's storage.  ARGS="-k broker-disk-full": one.
test-faults-broker-storage: venv s3rver ## the broker's storage killed and its disk full (root; ~3 min; not in CI)
	$(PYTHON) -m pytest -q -m broker_storage tests/faults $(ARGS)

# The soak (tests/soak, docs/RELIABILITY.md "Soak"): half the measured capacity for DURATION while
# a component is killed every KILL_EVERY (seeded: SEED replays a schedule), a rolling upgrade
# mid-run, the leak detector tested on a leaky build; results/soak/<ts>/soak.json and soak.png.
DURATION ?= 30m
KILL_EVERY ?= 1m
# make exports command-line variables to the recipe, and the producers the soak starts read
# DURATION from their environment as their own setting (seconds): env -u keeps it theirs.
soak: venv s3rver $(STORE_SERVER) ## the soak: make soak DURATION=5m [SEED=N] [KILL_EVERY=1m] [BROKER_STORAGE=memory] (default 30 min, plus ~20 min of ramp, catch-up probe, detector and checks)
	env -u DURATION -u KILL_EVERY $(PYTHON) -m tests.soak --duration $(DURATION) --kill-every $(KILL_EVERY) $(if $(SEED),--seed $(SEED)) \
	  $(if $(STORE),--store $(STORE)) $(if $(BROKER_STORAGE),--broker-storage $(BROKER_STORAGE)) $(ARGS)

# Every Python that pyproject's requires-python promises and this machine has (pyenv's versions,
# /usr/bin/python3, python3.N on PATH), as a new user would install it: a venv each under
# results/pythons/<version>/ (make venv's recipe, kept while the requirements are unchanged),
# every product module imported, tests/unit; a table at the end (scripts/try_pythons.py).
# The first run downloads everything once per interpreter (tens of minutes).
test-pythons:     ## install + import + unit tests on every Python requires-python promises (results/pythons/)
	$(PY) scripts/try_pythons.py --full $(ARGS)

# The cheap part: pip resolves requirements.txt on each of them (a throw-away venv each),
# the install and unit tests only on the oldest (3.10).
test-pythons-ci:  ## requirements resolve on every promised Python; unit tests on the oldest
	$(PY) scripts/try_pythons.py --unit-oldest $(ARGS)

# The images (Dockerfile) on a debootstrap base and compose.yaml's pipeline with the embedded
# Kafka/MongoDB stand-ins, 200 images end to end (tests/containers, docs/CONTAINERS.md).
# Root (Docker, debootstrap); the base tarball and wheelhouse are cached in /var/cache/iot-containers.
test-containers: venv ## images + Compose pipeline end to end (root, Docker): 200 images stored once each
	scripts/install-system-packages.sh
	$(PYTHON) -m pytest -q -m "containers and not torch_image" tests/containers

# The inference-torch image alone (tests/containers/test_torch_image.py): built the same way, run
# as the service (/v1/model, /v1/predict) and as the embedded inference consumer; its size logged.
# Opt-in, not in .ci/run.  Root (Docker, debootstrap).
test-containers-torch: venv ## the inference-torch image built and run: service and embedded consumer (root, Docker)
	scripts/install-system-packages.sh
	$(PYTHON) -m pytest -q -m "containers and torch_image" -o log_cli=true --log-cli-level=WARNING tests/containers/test_torch_image.py

# pip-audit needs PyPI's JSON API / OSV; offline it reports every package as
# "not found" and skipped, so its verdict only counts where those are reachable.
lint: venv        ## static checks: Python (ruff, layer contract) and the Ansible tree (yamllint, ansible-lint, syntax)
	$(VENV)/bin/ruff check common producer consumers inference analysis stack experiments dashboard bench tests
	$(VENV)/bin/lint-imports
	$(VENV)/bin/yamllint --strict playbook_master.yaml playbooks roles inventory tests/deploy compose.yaml deploy tests/containers
	$(VENV)/bin/ansible-lint --offline --profile production playbook_master.yaml playbooks roles inventory tests/deploy
	$(VENV)/bin/ansible-playbook --syntax-check -i tests/deploy/inventory.yml \
	  -e @inventory/group_vars/all/vault.yml.example playbook_master.yaml playbooks/*.yaml
	$(VENV)/bin/pip-audit -l --progress-spinner off

deploy: deploy-venv ## Chameleon: lease, VMs, everything installed, the experiment (docs/DEPLOY.md)
	$(DEPLOY_VENV)/bin/ansible-playbook playbook_master.yaml $(ARGS)

teardown: deploy-venv ## Chameleon: delete every cloud resource the deployment created (lease too)
	$(DEPLOY_VENV)/bin/ansible-playbook playbooks/teardown.yaml $(ARGS)

# The whole deployment against the cloud-less rehearsal (tests/rehearsal/README.md): four
# systemd containers as VMs, a fake cloud and Blazar, tansu and nx-27017 for Kafka and
# MongoDB; three runs of playbook_master.yaml (cold, idempotence, upgrade), teardown.
# Root (Docker, debootstrap); slow (about an hour on 2 busy cores).  ARGS: --keep ...
deploy-rehearsal: venv ## rehearse `make deploy` end to end without a cloud (root): results/rehearsal/summary.json
	scripts/install-system-packages.sh
	$(PYTHON) -m tests.rehearsal.run $(ARGS)

logs:             ## follow a VM's service journals: make logs VM=inference [COMPONENT=iot-inference]
	@test -n "$(VM)" || { echo "usage: make logs VM=<producer|inference|kafka|mongodb (the store VM)> [COMPONENT=<unit>]"; exit 2; }
	ssh -F .deploy/$(PREFIX)/ssh_config $(PREFIX)-$(VM) sudo journalctl -f -n 50 -u '$(or $(COMPONENT),iot-*)'

ssh:              ## a shell on a VM: make ssh VM=inference
	@test -n "$(VM)" || { echo "usage: make ssh VM=<producer|inference|kafka|mongodb (the store VM)>"; exit 2; }
	ssh -F .deploy/$(PREFIX)/ssh_config $(PREFIX)-$(VM)

bench: venv $(STORE_SERVER) ## throughput/latency vs the bare model and the per-message design, 32 px and 224 px (~25 min; ARGS="--sizes 32" ~8 min)
	$(PYTHON) -m experiments.bench $(ARGS)

serve: venv       ## the inference service alone, in the foreground
	$(PYTHON) -m gunicorn -c inference/gunicorn.conf.py 'inference:create_app()'

train: venv       ## train ResNet50 on CIFAR-10 (DATASET_SOURCE) for MODEL_WEIGHTS=<file>; MODEL=cifar10_resnet20 ...: a CIFAR ResNet (torch)
	$(PYTHON) -m inference.train $(if $(DATASET_SOURCE),--dataset-source $(DATASET_SOURCE)) \
	  $(if $(filter cifar%,$(MODEL)),--model $(MODEL) --out results/$(MODEL).pt,--out results/resnet50-cifar10.weights.h5) $(ARGS)

experiment: venv $(STORE_SERVER) ## latency sweep over 1..N producers: make experiment PRODUCERS="1 2" IMAGES=100 RATE=10 REPEAT=3
	$(PYTHON) -m experiments.experiment $(if $(PRODUCERS),--producers $(PRODUCERS)) \
	  $(if $(IMAGES),--images $(IMAGES)) $(if $(RATE),--rate $(RATE)) $(if $(REPEAT),--repeat $(REPEAT)) \
	  $(if $(UNTIL_CI),--until-ci $(UNTIL_CI)) $(if $(OUT),--out $(OUT)) $(ARGS)

clean:            ## stop the local stack and delete what it keeps (.run/: the stores' data, logs), saying what it removed
	@if test -x $(PYTHON); then $(PYTHON) -m stack clean; else rm -rf .run; fi
	rm -rf .pytest_cache
