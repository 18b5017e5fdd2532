# recmesh — `make run` to try it, `make test` to prove it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
BENCH_INSTALLED := $(VENV)/.bench-installed
# The console's browser test drives Chromium from Debian's packages (never a downloaded browser).
CHROMIUM := /usr/bin/chromium
BROWSER_INSTALLED := $(VENV)/.browser-installed
PROTOS := $(wildcard protos/recmesh/v1/*.proto)

.PHONY: install protos bootstrap train run test test-unit test-integration bench eval load scale chaos certs images k8s lint clean

install: $(INSTALLED)

# torch first, pinned, from the local CPU wheel: anything looser pulls several GB of CUDA wheels.
$(INSTALLED): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "recmesh needs Python 3.11 or newer, found " + sys.version.split()[0] + ": make PYTHON=python3.11 ...")'
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { echo "$(PYTHON) has no venv/ensurepip: apt-get install -y python3-venv (Debian/Ubuntu)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[serve,dev]'
	touch $@

# What measurements need besides the services: plots, HDR histograms, Locust.
$(BENCH_INSTALLED): $(INSTALLED)
	$(PY) -m pip install -q -c constraints.txt -e '.[bench]'
	touch $@

# Debian's chromium when it is missing: apt-get as root, else one line saying what to install.
$(BROWSER_INSTALLED): $(INSTALLED)
	@if [ ! -x $(CHROMIUM) ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium || exit 1; \
	  else echo "the console's browser test needs Chromium at $(CHROMIUM): apt-get install -y chromium (as root)"; exit 1; fi; \
	fi
	touch $@

# Stubs are checked in (a test keeps them fresh); regenerate after editing protos/.
protos: $(INSTALLED)
	$(PY) -m grpc_tools.protoc -I protos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)

bootstrap: $(INSTALLED)
	$(PY) -m recmesh bootstrap

# Train the served interest model on the var's catalog and events (36-48 min on 2 loaded cores), choose the ranking
# blend on their validation split, install both in the var (var/models/served/, or
# $RECMESH_VAR's) and place the catalog again with the new model (text vectors are cached).
train: $(INSTALLED)
	$(PY) -m recmesh train

# Bootstrap (first time only), start the five services, wait for health, play a scripted session.
# Ctrl-C stops everything.
run: bootstrap
	$(PY) -m recmesh run

# The tests run `recmesh load` and `recmesh eval` too (small): they need the bench extra; the
# console's test a browser.
test: $(BENCH_INSTALLED) $(BROWSER_INSTALLED)
	$(PY) -m pytest

test-unit: $(BENCH_INSTALLED)
	$(PY) -m pytest -m "not integration"

test-integration: $(BENCH_INSTALLED) $(BROWSER_INSTALLED)
	$(PY) -m pytest -m integration

# Measurements, not tests: JSON + PNG under results/.
bench: bootstrap $(BENCH_INSTALLED)
	$(PY) -m recmesh.tools.bench.latency --calls 1000
	$(PY) -m recmesh.tools.bench.encoders
	$(PY) -m recmesh.tools.bench.ingest
	$(PY) -m recmesh.tools.bench.freshness
	$(PY) -m recmesh.tools.bench.ranker
	$(PY) -m recmesh.tools.bench.stores
	$(PY) -m recmesh.tools.bench.similar

# Quality: baselines and the learned interest model on the fixed offline protocol (~10 min),
# the served path against its offline twin (~1 min), typed queries with judged relevance through
# the served path (~1 min), SimilarItems' blend on the held-out users (~1 min), the streaming
# replay through the live mesh (~5 min).
eval: bootstrap $(BENCH_INSTALLED)
	$(PY) -m recmesh.tools.eval.run
	$(PY) -m recmesh.tools.eval.served
	$(PY) -m recmesh.tools.eval.similar
	$(PY) -m recmesh.tools.eval.queries
	$(PY) -m recmesh.tools.eval.streaming
	$(PY) -m recmesh.tools.eval.online

# Open-loop load in steps of Recommend/s (30 % with typed text), on a local mesh: the highest
# rate with p99 within the 100 ms budget (~3 min).
load: bootstrap $(BENCH_INSTALLED)
	$(PY) -m recmesh load

# Catalog scale (docs/scaling.md): for each of SCALE_ITEMS, a var derived from the var's catalog
# (SCALE_MODEL: mix, each synthetic item a mix of 2-3 real items; copies, jittered copies), kept
# under SCALE_DIR: built once - 100 k items take 2-4 min here, 1 M over an hour; recall@100 of
# its HNSW shard against exact search at each SCALE_EF, then `recmesh load` over it; results/scale/.
SCALE_ITEMS ?= 100000 1000000
SCALE_MODEL ?= mix
SCALE_DIR ?= /tmp/recmesh-scale
SCALE_RATES ?= 40,80,100,120
SCALE_EF ?= 128,256,512,1024
scale: bootstrap $(BENCH_INSTALLED)
	for n in $(SCALE_ITEMS); do \
	  v=$(SCALE_DIR)/$(SCALE_MODEL)-$$n; \
	  [ -f $$v/catalog/BUILD.json ] || $(PY) -m recmesh scale derive --base-var $${RECMESH_VAR:-var} \
	    --items $$n --model $(SCALE_MODEL) --out-var $$v --out results/scale || exit 1; \
	  $(PY) -m recmesh scale recall --var $$v --ef $(SCALE_EF) --exact-queries 30 --out results/scale || exit 1; \
	  RECMESH_VAR=$$v $(PY) -m recmesh load --rates $(SCALE_RATES) --seconds 15 --no-floor \
	    --start-timeout-s 900 --out results/scale/load-$$n || exit 1; \
	done
	$(PY) -m recmesh scale plot --results results/scale --png results/scale/scale.png

# Faults under steady load: SIGKILL and SIGSTOP each service and Triton in turn, a local
# supervisor restarts what dies; in-time share, degraded share and recovery per fault (~2 min).
chaos: bootstrap $(BENCH_INSTALLED)
	$(PY) -m recmesh chaos

# A development CA and a service certificate (TLS, mTLS between services) in the var's certs/ (var/certs).
certs: $(INSTALLED)
	$(PY) -m recmesh.tools.devcerts

# Container images (needs a Docker engine) and the Kubernetes manifests of one overlay.
IMAGE_TAG ?= 0.1.0
OVERLAY ?= dev
images:
	for s in gateway encoder retrieval ranker updater console; do \
	  docker build -f services/$$s/Dockerfile -t recmesh/$$s:$(IMAGE_TAG) . || exit 1; done
	docker build -f deploy/triton/Dockerfile -t recmesh/triton:$(IMAGE_TAG) .

k8s: $(INSTALLED)
	$(VENV)/bin/kubectl kustomize deploy/k8s/overlays/$(OVERLAY)

lint: $(INSTALLED)
	$(VENV)/bin/ruff check recmesh services tests deploy

clean:
	rm -rf var results
