"""BERT pretraining (Devlin et al. 2019): MLM + NSP on the vendored Jane Austen corpus.

  python -m research.main --config=configs/bert.py:variant=tiny --workdir=/tmp/bert_tiny

variant: a BERT size (tiny, mini, small, medium, base, large; research/models/presets.py).
nsp=0 gives BERT Table 5's "No NSP" ablation.

Expected (variant=tiny, defaults, 2-core CPU): ~1 minute for 600 steps; held-out MLM accuracy
well above the unigram baseline (README "Quick start").
"""
from configs import base


def get_config(arg: str = ''):
  args = base.parse_arg(arg, variant='tiny', nsp=1)
  c = base.get_config()
  c.model.size = f"bert-{args['variant']}"
  c.objective.name = 'mlm_nsp' if args['nsp'] else 'mlm'
  base.laptop_pretraining(c, args['variant'])
  return c.lock()
