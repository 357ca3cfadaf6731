"""GPT-style left-to-right LM pretraining on the vendored Jane Austen corpus.

  python -m research.main --config=configs/gpt.py:variant=tiny --workdir=/tmp/gpt_tiny

variant: tiny / mini (laptop decoders with BERT-tiny / BERT-mini shapes), gpt1,
gpt2-124m ... gpt2-1558m, gpt3-125m ... gpt3-175b (research/models/presets.py).
prefix=1: T5's prefix LM instead (each window split at a random point; the prefix is read
bidirectionally, the rest left to right; research/objectives/prefix_lm.py).

Expected (variant=tiny, defaults, 2-core CPU): ~1 minute for 600 steps; held-out perplexity
far below the unigram baseline (README "Quick start").
"""
from configs import base


def get_config(arg: str = ''):
  args = base.parse_arg(arg, variant='tiny', prefix=0)
  c = base.get_config()
  v = args['variant']
  c.model.size = f'gpt-{v}' if v in ('tiny', 'mini') else v
  c.objective.name = 'prefix_lm' if args['prefix'] else 'clm'
  base.laptop_pretraining(c, v)
  c.optim.learning_rate = 1e-3 if v in ('tiny', 'mini') else 2.5e-4  # GPT-2's rate
  c.optim.weight_decay = 0.1
  return c.lock()
