"""T5 pretraining (Raffel et al. 2020): span corruption on the vendored Jane Austen corpus.

  python -m research.main --config=configs/t5.py:variant=tiny --workdir=/tmp/t5_tiny

variant: tiny / mini (laptop encoder-decoders with BERT-tiny / BERT-mini shapes per stack),
small / base / large (T5 v1.0), 1.1-small / 1.1-base (T5.1.1: GeGLU, untied output);
research/models/presets.py. The encoder reads 128 tokens, i.e. 141 raw tokens with 15% of
them dropped in spans of mean length 3 and replaced by sentinels; the decoder writes the
29-token target (t5 `random_spans_helper`).

Expected (variant=tiny, defaults, 2-core CPU): a few minutes for 600 steps; held-out
perplexity of the span targets well below the unigram baseline's (docs/finetuning.md,
seq2seq tasks).
"""
from configs import base


def get_config(arg: str = ''):
  args = base.parse_arg(arg, variant='tiny')
  v = args['variant']
  c = base.get_config()
  c.model.size = f't5-{v}' if not v.startswith('1.1') else f't5.{v}'
  c.objective.name = 'span_corruption'
  # T5 pretrains with Adafactor at 1e-2 (inverse square root); AdamW at BERT-like rates is
  # the stable choice for the small models trained here.
  base.laptop_pretraining(c, v)
  return c.lock()
