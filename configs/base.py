"""The only home of defaults. Every field is commented; experiment configs override a few.

Any field can be overridden on the command line, e.g. `--config.train.steps=2000`; a key that
does not exist here is rejected (the config is locked), so a typo fails instead of being ignored.
"""
import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  # --- model (research/models/config.py ModelConfig). `size` names a preset of
  # research/models/presets.py (bert-*, gpt*, t5*, bart-*); every other field is None = the
  # preset's value, or set here / on the command line to override it (--config.model.size=NAME
  # selects another preset, whose fields any --config.model.FIELD=... still overrides).
  c.model = ml_collections.ConfigDict()
  c.model.size = 'bert-tiny'
  c.model.vocab_size = 0            # 0 = the tokenizer's vocabulary (+ the objective's extra ids)
  P = config_dict.placeholder
  c.model.arch = P(str)             # 'encoder' (BERT) | 'decoder' (GPT) | 'encoder_decoder' (T5, BART)
  c.model.max_len = P(int)          # learned position table size (relative/none: longest input)
  c.model.d_model = P(int)
  c.model.num_layers = P(int)       # encoder or decoder depth; the encoder's in an encoder_decoder
  c.model.num_decoder_layers = P(int)  # encoder_decoder: decoder depth (0 = num_layers)
  c.model.share_stacks = P(bool)    # encoder_decoder: one Stack as encoder and decoder (T5 "shared")
  c.model.num_heads = P(int)
  c.model.d_head = P(int)           # per-head width; 0 = d_model // num_heads
  c.model.d_ff = P(int)
  c.model.decoder_start = P(str)    # encoder_decoder decoder start token: 'pad' (T5) | 'eos' (BART)
  c.model.position = P(str)         # 'learned' | 'relative' (T5 bias) | 'none'
  c.model.relative_buckets = P(int)  # T5: 32
  c.model.relative_max_distance = P(int)  # T5: 128
  c.model.type_vocab_size = P(int)  # segment embeddings (BERT: 2); 0 = none
  c.model.dropout = P(float)
  c.model.mlp_dropout = P(bool)     # T5: dropout also between the MLP's activation and wo
  c.model.final_dropout = P(bool)   # T5: dropout after each stack's final norm
  c.model.attention_dropout = P(float)
  c.model.pre_ln = P(bool)          # False: post-LN (BERT, GPT-1, BART); True: pre-LN (GPT-2/3, T5)
  c.model.final_ln = P(bool)        # final norm after the stack (pre-LN models)
  c.model.embed_ln = P(bool)        # norm on the summed embeddings (BERT, BART)
  c.model.norm = P(str)             # 'layer' (LayerNorm) | 'rms' (T5)
  c.model.layer_norm_eps = P(float)
  c.model.use_bias = P(bool)        # biases in attention and MLP (T5: none)
  c.model.mlp = P(str)              # 'dense' | 'gated' (T5.1.1 GeGLU)
  c.model.activation = P(str)       # 'gelu' (exact), 'gelu_tanh' (GPT), 'relu' (T5 v1.0)
  c.model.attention_scale = P(bool)  # divide logits by sqrt(head_dim) (T5: no)
  c.model.tie_output = P(bool)      # LM logits from the token embeddings
  c.model.scale_tied_output = P(bool)  # T5: tied logits from hidden * d_model**-0.5
  c.model.init_std = P(float)       # kernel init std with init='normal'
  c.model.init = P(str)             # 'normal' (N(0, init_std^2): BERT, GPT, BART) | 'fan_in' (T5)
  c.model.embed_init_std = P(float)  # token embedding init std (0 = init_std; T5: 1.0)
  c.model.scaled_residual_init = P(bool)  # GPT-2: residual projections init std / sqrt(2 layers)
  c.model.local_window = P(int)     # >0: GPT-3 alternating dense / locally banded attention
  c.model.two_stream = P(bool)      # XLNet: the encoder also runs the query stream (objective plm)
  c.model.dtype = P(str)            # compute dtype ('bfloat16' on accelerators); params stay fp32
  c.model.remat = P(bool)           # True = remat_policy 'full' (the older spelling)
  c.model.remat_policy = P(str)     # recompute in the backward pass: 'none' | 'full' |
                                    # 'dots_saveable' | 'dots_with_no_batch_dims_saveable'
  c.model.scan_layers = P(bool)     # nn.scan over the layers: flat compile time in depth;
                                    # params get a leading 'layers' axis (models/scan_layout.py)

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
  c.objective.name = 'mlm_nsp'      # 'mlm_nsp' | 'mlm' (no NSP) | 'clm' (left-to-right LM) |
                                    # 'unilm' | 'plm' (XLNet) | 'span_corruption' (T5) | 'denoising' (BART)
  c.objective.mask_prob = 0.15      # BERT Sec 3.1: 15% of tokens are predicted ...
  c.objective.mask_token_prob = 0.8  # ... 80% of them replaced by [MASK],
  c.objective.random_token_prob = 0.1  # 10% by a random token, 10% left unchanged
  c.objective.max_predictions_per_seq = 20  # google-research/bert default for 128 tokens
  c.objective.short_seq_prob = 0.1  # BERT: 10% of examples use a shorter target length
  c.objective.ngram_prob = 0.2      # UniLM (unilm): 20% of masked units are bigrams/trigrams ...
  c.objective.max_ngram = 3         # ... (Dong et al. 2019, Sec 2.2); 0.0 = single tokens only
  c.objective.partial_prediction = 6  # XLNet (plm): predict the last 1/K of each factorization order
  c.objective.plm_bidirectional_context = True  # XLNet (plm): unpredicted tokens see each other
                                    # both ways (xlnet `_local_perm`); False: causal over the order
  # T5 span corruption (Raffel et al. 2020, Sec 3.1.4): spans of ~3 tokens, 15% of the text,
  # each replaced by one of num_sentinels ids reserved above the tokenizer's vocabulary.
  c.objective.noise_density = 0.15
  c.objective.mean_noise_span_length = 3.0
  c.objective.num_sentinels = 100
  c.objective.bidirectional_inputs = False  # span_corruption on a decoder: the inputs are a prefix-LM prefix
  # BART denoising (Lewis et al. 2020, Sec 2.2; fairseq denoising_dataset.py): comma-separated
  # noises from masking | deletion | infilling (one of these three), permute, insert, rotate.
  c.objective.noises = 'infilling,permute'
  c.objective.mask_ratio = 0.3      # fraction of words masked / deleted / infilled
  c.objective.random_ratio = 0.1    # of those, replaced by a random token instead of [MASK]
  c.objective.poisson_lambda = 3.0  # infilling span lengths ~ Poisson(lambda)
  c.objective.replace_length = 1    # a masked span becomes: 1 mask | 0 nothing | -1 one per token
  c.objective.insert_ratio = 0.0    # 'insert': extra masks, as a fraction of the tokens
  c.objective.permute_ratio = 1.0   # 'permute': fraction of sentences shuffled
  c.objective.rotate_ratio = 1.0    # 'rotate': probability of rotating a document

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
  c.mesh.tensor = 1                 # tensor-parallel axis 'model': heads, MLP units, vocabulary
  return c


def parse_arg(arg: str, **defaults) -> dict:
  """Parses a big_vision-style config argument 'variant=tiny,steps=10' into a dict.

  Values keep the type of their default; an unknown key is an error. A string value may
  itself hold commas: an item without '=' continues the previous string value
  ('noise=infilling,permute' is one value).
  """
  values, last = dict(defaults), None
  for item in filter(None, (arg or '').split(',')):
    key, sep, value = item.partition('=')
    if not sep and last is not None and isinstance(defaults[last], str):
      values[last] += f',{item}'
      continue
    if not sep or key not in defaults:
      raise ValueError(f'unknown config argument {item!r}; expected one of {sorted(defaults)} '
                       'as key=value, comma-separated')
    values[key], last = type(defaults[key])(value), key
  return values


def pretraining_schedule(c: ml_collections.ConfigDict, *, steps: int, batch_size: int,
                         learning_rate: float, warmup_steps: int, evaluations: int,
                         seq_len: int = 128) -> None:
  """Steps, batch, sequence length, rate and warmup of a pretraining run, evaluated and
  checkpointed `evaluations` times (the last at the final step)."""
  c.data.max_seq_len = seq_len
  c.train.steps = steps
  c.train.batch_size = batch_size
  c.train.eval_every = c.checkpoint.every = max(steps // evaluations, 1)
  c.optim.learning_rate = learning_rate
  c.optim.warmup_steps = warmup_steps


def laptop_pretraining(c: ml_collections.ConfigDict, variant: str) -> None:
  """The schedule of the per-family configs (configs/bert.py ...): 600 steps of 32 x 128
  tokens, at 1e-3 for the laptop sizes (tiny, mini) and 1e-4 for published ones."""
  pretraining_schedule(c, steps=600, batch_size=32, warmup_steps=60, evaluations=3,
                       learning_rate=1e-3 if variant in ('tiny', 'mini') else 1e-4)


def dev_once(c: ml_collections.ConfigDict, *, steps: int, learning_rate: float) -> None:
  """A reproduction's fine-tuning run: `steps` updates (0: the config's epochs), then one dev
  evaluation at the end (the table's number); no intermediate checkpoints."""
  if steps:
    c.finetune.epochs = 0.0
    c.train.steps = steps
  c.train.eval_every = 10**9
  c.checkpoint.every = 10**9
  c.optim.learning_rate = learning_rate


def model_field(c: ml_collections.ConfigDict, name: str):
  """A model field as the run will see it: the override if set, else the preset's."""
  from research.models.presets import architecture  # configs stay importable without jax
  value = c.model[name]
  return architecture(c.model.size)[name] if value is None else value
