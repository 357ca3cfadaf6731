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

.PHONY: demo test test-all chaos install bench bench-peers bench-gpu repro-table5 \
	repro-bart-table1 repro-t5-table2 clean-demo

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

# CI: every test but the long end-to-end ones (marked slow), one test file per worker on
# every core (pytest-xdist).
test: $(STAMP)
	$(PY) -m pytest -q -n auto --dist loadfile -m "not slow" tests

test-all: $(STAMP)
	$(PY) -m pytest -q -n auto --dist loadfile tests

# A real run killed 10 times with SIGKILL (at random moments, mid-save, mid-eval, at start-up)
# and once with SIGTERM; prints each kill and the final eval loss beside the uninterrupted
# run's (tests/test_chaos.py). A few minutes.
chaos: $(STAMP)
	$(PY) -m pytest -q -s -m slow tests/test_chaos.py

bench: $(STAMP)
	$(PY) -m research.benchmarks.train_throughput

# On one GPU: GPT-2 124M (sequence 1024) and BERT-base training MFU in bfloat16 against the
# datasheet peak, KV-cache decoding tokens/s (+ HF PyTorch `generate` when torch is installed).
bench-gpu: $(STAMP)
	$(PY) -m research.benchmarks.gpu

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

# BART Table 1 in miniature: 10 pretraining objectives (LM, permuted LM, MLM, multitask MLM,
# five BART noises + infilling/shuffling) with equal compute, each fine-tuned on paraphrase,
# sentiment and modernize x 3 seeds, beside a no-pretraining control
# (configs/repro/bart_table1.py; runs/bart_table1/table.md + table.png).
repro-bart-table1: $(STAMP)
	$(PY) -m launch.repro --config=configs/repro/bart_table1.py:variant=tiny --root=runs/bart_table1 --parallel=2

# T5 Table 2 in miniature: encoder-decoder (2P), shared (P), half (P, M/2), LM and prefix LM,
# each with span corruption and the LM objective, fine-tuned text to text on paraphrase and
# modernize x 3 seeds (configs/repro/t5_table2.py; runs/t5_table2/table.md + table.png).
repro-t5-table2: $(STAMP)
	$(PY) -m launch.repro --config=configs/repro/t5_table2.py:variant=tiny --root=runs/t5_table2 --parallel=2

clean-demo:
	rm -rf $(DEMO_DIR)
