# Two entry points for a fresh machine (Python 3.11 + pip): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The peers' venv: transformers 4.57 (the last with Flax classes) pins older tokenizers and
# huggingface_hub than ours, so it lives apart (constraints-bench.txt).
BENCH_VENV ?= .venv-bench
BENCH_PY := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.installed
DEMO_DIR ?= workdirs/demo

.PHONY: demo test install bench bench-peers repro-table5 clean-demo

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

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) -m research.benchmarks.train_throughput

$(BENCH_STAMP): setup.py constraints-bench.txt
	test -x $(BENCH_PY) || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install -q --upgrade pip
	$(BENCH_PY) -m pip install -q -c constraints-bench.txt -e '.[bench]'
	touch $(BENCH_STAMP)

# Ours beside HF Flax 4.57 and PyTorch 2.13 at the same shapes, back to back in one run, twice
# (the spread between rounds is the machine's noise): training steps of BERT, GPT, T5 and BART
# at tiny, small and base, then GPT-2 124M decoding at batch 1 and 8. About an hour on an idle
# 2-core CPU.
bench-peers: $(BENCH_STAMP)
	$(BENCH_PY) -m research.benchmarks.train_throughput --peers --rounds=2 \
	  --shapes=tiny,small,base --steps=20 --max_seconds=15
	$(BENCH_PY) -m research.benchmarks.generation --peers --rounds=2 --contexts=

# BERT Table 5 "why bidirectional" in miniature: pretrain 3 models, fine-tune 5 settings x
# 3 tasks x 3 seeds (two runs at a time), write runs/table5/table.md + table.png
# (configs/repro/bert_table5.py).
repro-table5: $(STAMP)
	$(PY) -m launch.repro --config=configs/repro/bert_table5.py:variant=tiny --root=runs/table5 --parallel=2

clean-demo:
	rm -rf $(DEMO_DIR)
