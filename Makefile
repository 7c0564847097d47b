# Thin aliases: every target is one line calling a Python entry point (see README.md).
PY := .venv/bin/python
STAMP := .venv/.groundcache-installed
DATASET ?= synthetic
MODEL ?= span
ARGS ?=
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test test-slow lint extract train data zoo serve bench-cache bench-extract bench-train bench-import bench-predict bench-watch bench-accuracy

setup: $(STAMP)

# One venv with exact pins (requirements.lock); torch/torchvision come from this machine's wheel store.
$(STAMP): requirements.lock pyproject.toml
	python3 -m venv .venv && .venv/bin/pip install -q -r requirements.lock && .venv/bin/pip install -q --no-deps --no-build-isolation -e . && touch $(STAMP)

demo: $(STAMP)
	$(PY) -m ground demo $(ARGS)

# One worker per core (at most 4), each test file on one worker so its module fixtures are built once.
test: $(STAMP)
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadfile -m "not slow and not gpu" $(ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check cache_schema extract ground tests

extract: $(STAMP)
	$(PY) -m extract --config extract/configs/$(DATASET).yaml $(ARGS)

train: $(STAMP)
	$(PY) -m ground fit --data ground/configs/data/$(DATASET).yaml --model ground/configs/model/$(MODEL).yaml $(ARGS)

data: $(STAMP)
	$(PY) -m extract.datasets info $(DATASET)

zoo: $(STAMP)
	$(PY) -m ground zoo $(ARGS)

serve: $(STAMP)
	$(PY) -m ground serve $(ARGS)

bench-cache: $(STAMP)
	$(PY) -m cache_schema.bench $(ARGS)

bench-extract: $(STAMP)
	$(PY) -m extract.bench $(ARGS)

bench-train: $(STAMP)
	$(PY) -m ground.bench $(ARGS)

bench-import: $(STAMP)
	$(PY) -m extract.bench_import $(ARGS)

bench-predict: $(STAMP)
	$(PY) -m ground.bench_predict $(ARGS)

bench-watch: $(STAMP)
	$(PY) -m ground bench-watch $(ARGS)

bench-accuracy: $(STAMP)
	$(PY) -m ground.bench_accuracy $(ARGS)
