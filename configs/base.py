"""The only home of defaults. Every field is commented; experiment configs override a few.

Any field can be overridden on the command line, e.g. `--config.train.steps=2000`; a key that
does not exist here is rejected (the config is locked), so a typo fails instead of being ignored.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  # --- model: ModelConfig fields (research/models/config.py) + the preset they came from.
  c.model = ml_collections.ConfigDict()
  c.model.size = 'bert-tiny'        # a name from research/models/presets.py SIZES (sets the fields below)
  c.model.vocab_size = 0            # 0 = the tokenizer's vocabulary size
  c.model.max_len = 512             # learned position table size
  c.model.d_model = 128
  c.model.num_layers = 2
  c.model.num_heads = 2
  c.model.d_ff = 512
  c.model.type_vocab_size = 2       # segment embeddings (BERT); 0 = none (GPT)
  c.model.dropout = 0.1
  c.model.attention_dropout = 0.1
  c.model.pre_ln = False            # False: post-LN (BERT, GPT-1); True: pre-LN (GPT-2/3)
  c.model.final_ln = False          # final LayerNorm after the stack (pre-LN models)
  c.model.embed_ln = True           # LayerNorm on the summed embeddings (BERT)
  c.model.layer_norm_eps = 1e-12
  c.model.activation = 'gelu'       # 'gelu' (exact), 'gelu_tanh' (GPT), 'relu'
  c.model.init_std = 0.02
  c.model.scaled_residual_init = False  # GPT-2: residual projections init std / sqrt(2 layers)
  c.model.local_window = 0          # >0: GPT-3 alternating dense / locally banded attention
  c.model.dtype = 'float32'         # compute dtype ('bfloat16' on accelerators); params stay fp32
  c.model.remat = False             # recompute blocks in the backward pass to save memory

  # --- data
  c.data = ml_collections.ConfigDict()
  c.data.corpus = ''                # '' = vendored Jane Austen; else a file, .gz, .jsonl or directory
  c.data.eval_corpus = ''           # '' = hold out documents of `corpus`
  c.data.eval_every = 20            # hold out every 20th document (chapter) for evaluation
  c.data.max_seq_len = 128          # tokens per example, [CLS]/[SEP] included
  c.data.seed = 0                   # shuffling and masking seed
  c.data.tokenizer = ml_collections.ConfigDict()
  c.data.tokenizer.path = ''        # '' = <workdir>/tokenizer.model, trained on the corpus once
  c.data.tokenizer.vocab_size = 8000
  c.data.tokenizer.model_type = 'unigram'  # SentencePiece 'unigram' or 'bpe'
  c.data.tokenizer.max_training_sentences = 200000

  # --- objective (a pure batch transform, research/objectives/)
  c.objective = ml_collections.ConfigDict()
  c.objective.name = 'mlm_nsp'      # 'mlm_nsp' | 'mlm' (no NSP) | 'clm' (left-to-right LM)
  c.objective.mask_prob = 0.15      # BERT Sec 3.1: 15% of tokens are predicted ...
  c.objective.mask_token_prob = 0.8  # ... 80% of them replaced by [MASK],
  c.objective.random_token_prob = 0.1  # 10% by a random token, 10% left unchanged
  c.objective.max_predictions_per_seq = 20  # google-research/bert default for 128 tokens
  c.objective.short_seq_prob = 0.1  # BERT: 10% of examples use a shorter target length

  # --- optimisation (research/optim.py)
  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 100
  c.optim.schedule = 'linear'       # decay after warmup: 'linear' | 'cosine' | 'constant'
  c.optim.end_lr_fraction = 0.0     # final learning rate as a fraction of the peak
  c.optim.weight_decay = 0.01       # decoupled (AdamW); not applied to biases and LayerNorm
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-6
  c.optim.clip_norm = 1.0           # global gradient-norm clipping; 0 = off

  # --- training loop (research/train.py)
  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.batch_size = 32           # global batch (examples per optimizer update)
  c.train.grad_accum_steps = 1      # micro-batches per update (batch_size must divide evenly)
  c.train.seed = 0                  # parameter init and dropout
  c.train.log_every = 50
  c.train.eval_every = 500
  c.train.eval_batches = 20         # held-out batches per evaluation (0 = none)
  c.train.eval_batch_size = 32
  c.train.max_skipped_steps = 5     # stop after this many steps in a row with a non-finite loss
                                    # or gradient norm (their updates are skipped; research/loop.py)

  # --- checkpointing (research/checkpointing.py)
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 500          # steps between checkpoints (the last step is always saved)
  c.checkpoint.keep = 3             # keep the newest N

  # --- device mesh (research/sharding.py)
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                  # data-parallel axis size; -1 = all devices not used by fsdp
  c.mesh.fsdp = 1                   # parameter/optimizer-state sharding axis size (ZeRO-3 style)
  return c


def parse_arg(arg: str, **defaults) -> dict:
  """Parses a big_vision-style config argument 'variant=tiny,steps=10' into a dict.

  Values keep the type of their default; an unknown key is an error.
  """
  values = dict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, sep, value = item.partition('=')
    if not sep or key not in defaults:
      raise ValueError(f'unknown config argument {item!r}; expected one of {sorted(defaults)} '
                       'as key=value, comma-separated')
    values[key] = type(defaults[key])(value)
  return values


def apply_size(c: ml_collections.ConfigDict, size: str) -> None:
  """Copies a published architecture (research/models/presets.py) into `c.model`."""
  from research.models.presets import architecture  # configs stay importable without jax
  arch = architecture(size)
  arch.pop('vocab_size')  # our own tokenizer decides, unless the experiment sets it
  c.model.size = size
  for key, value in arch.items():
    c.model[key] = value
