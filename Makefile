# nicheloop: every target is idempotent. `make demo` and `make test` install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
KAFKA_VERSION ?= 4.1.1
KAFKA_LIBS ?= $(HOME)/.cache/nicheloop/kafka-$(KAFKA_VERSION)/libs
CHROMIUM ?= /usr/bin/chromium
AXE_VERSION ?= 4.14.1
AXE_JS ?= $(HOME)/.cache/nicheloop/axe-core-$(AXE_VERSION)/axe.min.js
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: setup python-deps kafka-jars postgres promtool chromium axe demo test test-unit test-integration soak bench bench-serving bench-sampling bench-train bench-drift bench-rollout bench-loop bench-hostile bench-review-ui lint stack-up stack-down clean

TEST_ENV = NICHELOOP_KAFKA_LIBS=$(KAFKA_LIBS) NICHELOOP_TEST_POSTGRES_URL=$$(deploy/local/postgres.sh url) \
	NICHELOOP_CHROMIUM=$(CHROMIUM) NICHELOOP_AXE_JS=$(AXE_JS)

setup: python-deps kafka-jars

python-deps: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (3.11 or 3.12)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@# torchvision must match torch (DESIGN.md, pitfalls); timm imports it: check here, not at run time.
	$(PY) -c "import timm, torchvision, ray, mlflow, evidently, faiss, kafka; print('python deps ok: torch', __import__('torch').__version__, 'timm', timm.__version__)"
	$(PY) -c "from nicheloop.pretrained import PACKAGES, weights_file; print('ImageNet weights:', *(weights_file(p).name for p in PACKAGES.values()))"
	touch $@

kafka-jars: $(KAFKA_LIBS)/.resolved

$(KAFKA_LIBS)/.resolved: deploy/local/kafka/pom.xml
	@command -v java >/dev/null || { echo "need Java 17+ on PATH for the Kafka broker"; exit 1; }
	@command -v mvn >/dev/null || { echo "need Maven on PATH to resolve the Kafka broker's jars"; exit 1; }
	rm -rf $(KAFKA_LIBS) && mkdir -p $(KAFKA_LIBS)
	mvn -q -B -f deploy/local/kafka/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
	    -Dkafka.version=$(KAFKA_VERSION) -DoutputDirectory=$(KAFKA_LIBS)
	touch $@

# The browser tests drive Debian's Chromium (Playwright's own download cannot reach its CDN here).
chromium:
	@test -x $(CHROMIUM) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	    { echo "need Chromium at $(CHROMIUM) for the browser tests: apt-get install chromium, or set CHROMIUM="; exit 1; }

# axe-core from the npm registry, pinned: the pages' accessibility check in the test browser.
axe: $(AXE_JS)

$(AXE_JS):
	@command -v npm >/dev/null || { echo "need npm to fetch axe-core $(AXE_VERSION) for the accessibility tests"; exit 1; }
	mkdir -p $(dir $(AXE_JS)) && cd $(dir $(AXE_JS)) && npm pack -q axe-core@$(AXE_VERSION) >/dev/null && \
	    tar -xzf axe-core-$(AXE_VERSION).tgz package/axe.min.js && mv package/axe.min.js axe.min.js && \
	    rm -rf package axe-core-$(AXE_VERSION).tgz

demo: setup
	NICHELOOP_KAFKA_LIBS=$(KAFKA_LIBS) $(VENV)/bin/nicheloop demo $(DEMO_ARGS)

postgres:
	deploy/local/postgres.sh start

promtool:
	deploy/local/promtool.sh >/dev/null

test: setup postgres promtool chromium axe
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS)

# Unit tests need no service: the PostgreSQL variants of the store tests are marked integration.
test-unit: python-deps promtool chromium axe
	$(PY) -m pytest tests/unit -m "not integration and not e2e" $(PYTEST_ARGS)

test-integration: setup postgres chromium axe
	$(TEST_ENV) $(PY) -m pytest -m "integration or e2e" $(PYTEST_ARGS)

# Full-size fault injection: 10,000 feedback events, 5 broker kills, 3 consumer kills; last line JSON.
soak: setup
	NICHELOOP_KAFKA_LIBS=$(KAFKA_LIBS) $(PY) -m tests.integration.faults --events 10000 --broker-kills 5 --consumer-kills 3

bench: setup
	NICHELOOP_KAFKA_LIBS=$(KAFKA_LIBS) $(PY) benchmarks/event_logging.py

# The endpoint against the bare model, under overload and a replica kill; needs wrk (Debian's). Then the
# floor under its added latency: one Ray call between processes that do nothing.
bench-serving: setup
	command -v wrk >/dev/null || apt-get install -y -q wrk || { echo "install wrk (apt-get install wrk)"; exit 1; }
	NICHELOOP_KAFKA_LIBS=$(KAFKA_LIBS) $(PY) -m benchmarks.serving
	$(PY) -m benchmarks.serving_floor

# Active sampling: labels saved against random (NEU when ../shared/datasets/neu-steel is there), and scale.
# Training: Ray Train over a plain loop; transfer with few labels (NEU when ../shared/datasets/neu-steel is there).
bench-train: python-deps
	$(PY) benchmarks/train_overhead.py --threads 1
	$(PY) benchmarks/transfer.py

bench-sampling: python-deps
	$(PY) benchmarks/sampling_efficiency.py
	$(PY) benchmarks/sampling_scale.py

bench-drift: python-deps
	$(PY) -m benchmarks.drift

bench-rollout: python-deps
	$(PY) -m benchmarks.rollout

# The loop after a shift against static, periodic and drift-triggered retraining (BENCH_ARGS=--quick: 15 min).
bench-loop: python-deps
	$(PY) -m benchmarks.closed_loop $(BENCH_ARGS)

bench-review-ui: setup chromium
	NICHELOOP_KAFKA_LIBS=$(KAFKA_LIBS) NICHELOOP_CHROMIUM=$(CHROMIUM) $(PY) -m benchmarks.review_ui

bench-hostile: python-deps kafka-jars
	NICHELOOP_KAFKA_LIBS=$(KAFKA_LIBS) $(PY) -m benchmarks.hostile

lint: python-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

stack-up: setup
	NICHELOOP_KAFKA_LIBS=$(KAFKA_LIBS) $(VENV)/bin/nicheloop stack up

stack-down:
	$(VENV)/bin/nicheloop stack down

clean: stack-down
	rm -rf .nicheloop
