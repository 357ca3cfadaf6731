# Two entry points for a fresh machine (Python 3.11 + pip): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= workdirs/demo

.PHONY: demo test install bench repro-table5 clean-demo

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Trains a tiny BERT and a tiny GPT on the vendored Austen corpus (a few minutes on a laptop
# CPU), prints held-out metrics beside a unigram baseline and a greedy GPT continuation.
# Re-running resumes (and finishes at once); `make clean-demo` starts over.
demo: $(STAMP)
	$(PY) -m research.demo --workdir=$(DEMO_DIR)

# CI: every test but the long end-to-end ones (marked slow).
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

test-all: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) -m research.benchmarks.train_throughput

# On one GPU: GPT-2 124M (sequence 1024) and BERT-base training MFU in bfloat16 against the
# datasheet peak, KV-cache decoding tokens/s (+ HF PyTorch `generate` when torch is installed).
.PHONY: test-all bench-gpu
bench-gpu: $(STAMP)
	$(PY) -m research.benchmarks.gpu

# BERT Table 5 "why bidirectional" in miniature: pretrain 3 models, fine-tune 5 settings x
# 3 tasks x 3 seeds (two runs at a time), write runs/table5/table.md + table.png
# (configs/repro/bert_table5.py).
repro-table5: $(STAMP)
	$(PY) -m launch.repro --config=configs/repro/bert_table5.py:variant=tiny --root=runs/table5 --parallel=2

clean-demo:
	rm -rf $(DEMO_DIR)
