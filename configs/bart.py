"""BART pretraining (Lewis et al. 2020): a denoising autoencoder on the vendored Jane Austen
corpus.

  python -m research.main --config=configs/bart.py:variant=tiny --workdir=/tmp/bart_tiny
  python -m research.main --config=configs/bart.py:variant=tiny,noise=masking --workdir=...

variant: tiny / mini (laptop encoder-decoders with BERT-tiny / BERT-mini shapes per stack),
base / large (research/models/presets.py). noise: comma-separated fairseq noises
(research/objectives/denoising.py NOISES): one of masking | deletion | infilling, and any of
permute, insert, rotate; the default infilling,permute is BART's best (Sec 4.2): 30% of
words masked in Poisson(3) spans, one [MASK] each, sentences shuffled.

Expected (variant=tiny, defaults, 2-core CPU): a few minutes for 600 steps; held-out
reconstruction perplexity far below the unigram baseline's (docs/finetuning.md, seq2seq tasks).
"""
from configs import base


def get_config(arg: str = ''):
  args = base.parse_arg(arg, variant='tiny', noise='infilling,permute')
  v = args['variant']
  c = base.get_config()
  c.model.size = f'bart-{v}'
  c.objective.name = 'denoising'
  c.objective.noises = args['noise']
  base.laptop_pretraining(c, v)
  return c.lock()
