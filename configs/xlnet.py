"""XLNet-style permutation LM pretraining (Yang et al. 2019) with two-stream attention on Austen.

  python -m research.main --config=configs/xlnet.py:variant=tiny --workdir=/tmp/xlnet_tiny

variant: a BERT size (tiny ... large) with `two_stream` on: the query stream runs the same
Blocks (research/objectives/plm.py); the last 1/K of each sampled factorization order is
predicted (--config.objective.partial_prediction, K = 6). Transformer-XL memory and relative
encodings are left out, as in BART's permuted-LM baseline.

Expected (variant=tiny, 2-core CPU): a few minutes for 600 steps, and held-out accuracy of the
predicted tokens at the most frequent token's rate (measured 0.0575 at steps 200, 400 and 600,
loss 6.36 against the unigram model's 6.33): at this budget the query stream has not yet
learned where to look (research/objectives/plm.py). It shows the plumbing and the step's cost.
"""
from configs import base


def get_config(arg: str = ''):
  args = base.parse_arg(arg, variant='tiny')
  c = base.get_config()
  c.model.size = f"bert-{args['variant']}"
  c.model.two_stream = True
  c.objective.name = 'plm'
  base.laptop_pretraining(c, args['variant'])
  return c.lock()
