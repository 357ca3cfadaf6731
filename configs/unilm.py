"""UniLM pretraining (Dong et al. 2019): one encoder, four masks in one batch, on Austen.

  python -m research.main --config=configs/unilm.py:variant=tiny --workdir=/tmp/unilm_tiny

variant: a BERT size (tiny, mini, small, medium, base, large); the model is BERT's
architecture with 6 segment types (UniLM's segment embeddings name the LM objective of each
row: bidirectional, seq2seq, left-to-right, right-to-left; research/objectives/unilm.py).
Fine-tunes as an encoder (classification heads) and as a seq2seq generator
(configs/finetune.py:task=modernize,init_from=...: masked targets under the seq2seq mask).

Expected (variant=tiny, 2-core CPU): a few minutes for 600 steps; held-out masked-token
accuracy well above the most-frequent-token baseline.
"""
from configs import base


def get_config(arg: str = ''):
  args = base.parse_arg(arg, variant='tiny')
  c = base.get_config()
  c.model.size = f"bert-{args['variant']}"
  c.model.type_vocab_size = 6
  c.objective.name = 'unilm'
  base.laptop_pretraining(c, args['variant'])
  return c.lock()
