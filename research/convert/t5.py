"""T5 checkpoints in Hugging Face format <-> `EncoderDecoder` params (T5 v1.0 and v1.1).

  imported = t5.load('path/to/t5')  # config.json, model.safetensors, tokenizer.json | spiece.model
  t5.save('out/', imported.cfg, imported.params, imported.tokenizer)

Layout (transformers `T5ForConditionalGeneration`; Raffel et al. 2020, Sec 2.1): one `shared`
token table for both stacks; pre-norm blocks of RMS norms without biases, whose sublayers are
`layer.0` self-attention, (decoder) `layer.1` cross-attention `EncDecAttention`, and the last
`DenseReluDense` MLP; a `final_layer_norm` per stack. The relative position bias table lives
in block 0 of each stack (HF) and is shared by every layer of it (ours: one table per stack,
`encoder/relative_bias`, `decoder/relative_bias`). T5 v1.0 (`feed_forward_proj` 'relu') ties the
output layer to `shared` and rescales the decoder output by d_model**-0.5 first; T5.1.1
('gated-gelu': GeGLU with gelu_new, `wi_0` / `wi_1`) has its own `lm_head` and no rescale.

transformers 5 reads `tie_word_embeddings` as "rescale" and ties `lm_head` to `shared` unless the
checkpoint stores a different one; it writes the rescale as `scale_decoder_outputs`. So an
`lm_head.weight` that differs from `shared.weight` means an untied head, whichever the config
says. Export writes `lm_head.weight` whenever the output is not rescaled, so transformers 4 and
5 both read the model back as it is.
"""
from __future__ import annotations

import numpy as np

from research import models
from research.convert import hf_checkpoint as hf
from research.convert.hf_tokenizer import HFTokenizer
from research.models import presets
from research.models.config import ModelConfig

# HF's activation names (transformers ACT2FN) -> ours; 'gated-gelu' is special-cased by
# T5Config to gelu_new (the tanh approximation).
ACTIVATIONS = {'relu': 'relu', 'gelu': 'gelu', 'gelu_new': 'gelu_tanh',
               'gelu_pytorch_tanh': 'gelu_tanh'}
# (mlp, activation) -> feed_forward_proj; a gated exact GELU has no HF T5 name.
EXPORTED_MLPS = {('dense', 'relu'): 'relu', ('dense', 'gelu'): 'gelu',
                 ('dense', 'gelu_tanh'): 'gelu_new', ('gated', 'gelu_tanh'): 'gated-gelu',
                 ('gated', 'relu'): 'gated-relu'}
# Relative positions have no table: the longest input accepted (t5-* configs' n_positions).
MAX_LEN = 512


def feed_forward(proj: str, directory: str) -> tuple[str, str]:
  """T5Config's `feed_forward_proj` ('relu', 'gated-gelu', ...) -> our (mlp, activation)."""
  gated, act = proj.startswith('gated-'), proj.removeprefix('gated-')
  if proj == 'gated-gelu':
    act = 'gelu_new'
  if act not in ACTIVATIONS:
    raise hf.ConversionError(
        f'{directory}: feed_forward_proj {proj!r} is not supported by this codebase (supported: '
        f'{", ".join(sorted({*ACTIVATIONS, *(f"gated-{a}" for a in ACTIVATIONS)}))})')
  return ('gated' if gated else 'dense'), ACTIVATIONS[act]


def config_from_hf(config: dict, directory: str, untied_head: bool) -> ModelConfig:
  """`untied_head`: the checkpoint stores an lm_head.weight that differs from shared.weight."""
  hf.check_model_type(config, 't5', directory)
  mlp, activation = feed_forward(config.get('feed_forward_proj', 'relu'), directory)
  # transformers 4: tie_word_embeddings means tied and rescaled; 5 stores the rescale apart.
  rescale = config.get('scale_decoder_outputs',
                       config.get('tie_word_embeddings', True) is not False)
  pad_id = config.get('pad_token_id', 0)
  start_id = config.get('decoder_start_token_id', pad_id)
  unsupported = [
      (untied_head and rescale,
       'an untied lm_head with the d_model**-0.5 output rescale (tie_word_embeddings=true)'),
      (start_id != pad_id,
       f'decoder_start_token_id {start_id} other than pad_token_id {pad_id} (T5 starts the '
       'decoder from pad)'),
      (config.get('is_decoder', False), 'a decoder-only T5 stack (is_decoder=true)'),
  ]
  hf.reject_unsupported(unsupported, directory)
  dropout = config.get('dropout_rate', 0.1)
  return ModelConfig(**{
      **presets.FAMILIES['t5.1.1' if mlp == 'gated' else 't5'],
      'vocab_size': config['vocab_size'], 'max_len': config.get('n_positions', MAX_LEN),
      'd_model': config['d_model'], 'd_head': config['d_kv'], 'd_ff': config['d_ff'],
      'num_layers': config['num_layers'],
      'num_decoder_layers': config.get('num_decoder_layers') or config['num_layers'],
      'num_heads': config['num_heads'],
      'relative_buckets': config.get('relative_attention_num_buckets', 32),
      'relative_max_distance': config.get('relative_attention_max_distance', 128),
      'layer_norm_eps': config.get('layer_norm_epsilon', 1e-6),
      'dropout': dropout, 'attention_dropout': dropout, 'mlp': mlp, 'activation': activation,
      'tie_output': not untied_head, 'scale_tied_output': rescale and not untied_head,
      'decoder_start': 'pad'})


def config_to_hf(cfg: ModelConfig, tokenizer: HFTokenizer) -> dict:
  t5_like = (cfg.arch == 'encoder_decoder' and cfg.position == 'relative' and cfg.norm == 'rms'
             and not cfg.use_bias and cfg.pre_ln and cfg.final_ln and not cfg.embed_ln
             and not cfg.attention_scale and not cfg.type_vocab_size
             and cfg.decoder_start == 'pad')
  if not t5_like or (cfg.mlp, cfg.activation) not in EXPORTED_MLPS:
    raise hf.ConversionError(
        'only the T5 architecture (encoder-decoder, relative position bias, pre-norm RMS norms, '
        'no biases, unscaled attention, decoder started from pad; MLP relu / gelu / gelu_tanh '
        'or gated gelu_tanh / relu) can be written as an HF T5')
  return {
      'architectures': ['T5ForConditionalGeneration'], 'model_type': 't5',
      'vocab_size': cfg.vocab_size, 'n_positions': cfg.max_len, 'd_model': cfg.d_model,
      'd_kv': cfg.head_dim, 'd_ff': cfg.d_ff, 'num_layers': cfg.num_layers,
      'num_decoder_layers': cfg.decoder_layers, 'num_heads': cfg.num_heads,
      'relative_attention_num_buckets': cfg.relative_buckets,
      'relative_attention_max_distance': cfg.relative_max_distance,
      'dropout_rate': cfg.dropout, 'layer_norm_epsilon': cfg.layer_norm_eps,
      'feed_forward_proj': EXPORTED_MLPS[cfg.mlp, cfg.activation],
      'tie_word_embeddings': cfg.scale_tied_output, 'scale_decoder_outputs': cfg.scale_tied_output,
      'is_encoder_decoder': True, 'pad_token_id': tokenizer.pad_id,
      'eos_token_id': tokenizer.eos_id, 'decoder_start_token_id': tokenizer.pad_id,
  }


def rules(cfg: ModelConfig) -> list[hf.Rule]:
  d, h, dh, f = cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.d_ff
  dense = lambda theirs, ours, d_in, d_out: hf.transposed(f'{theirs}.weight', f'{ours}/kernel',
                                                          (d_in, d_out), (d_out, d_in))

  def attention(theirs: str, ours: str) -> list[hf.Rule]:
    qkv = [hf.transposed(f'{theirs}.{name}.weight', f'{ours}/{our_name}/kernel', (d, h, dh),
                         (h * dh, d))
           for name, our_name in (('q', 'query'), ('k', 'key'), ('v', 'value'))]
    return qkv + [hf.transposed(f'{theirs}.o.weight', f'{ours}/out/kernel', (h, dh, d),
                                (d, h * dh))]

  wi = ('wi_0', 'wi_1') if cfg.mlp == 'gated' else ('wi',)
  out = [hf.same('shared.weight', 'shared/embedding')]
  for stack, num_layers in (('encoder', cfg.num_layers), ('decoder', cfg.decoder_layers)):
    out += [hf.same(f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight',
                    f'{stack}/relative_bias/embedding'),  # [buckets, heads], both
            hf.same(f'{stack}.final_layer_norm.weight', f'{stack}/final_ln/scale')]
    for i in range(num_layers):
      theirs, ours = f'{stack}.block.{i}.layer', f'{stack}/layer_{i}'
      mlp_index = 2 if stack == 'decoder' else 1
      out += [*attention(f'{theirs}.0.SelfAttention', f'{ours}/attention'),
              hf.same(f'{theirs}.0.layer_norm.weight', f'{ours}/ln_attention/scale'),
              *[dense(f'{theirs}.{mlp_index}.DenseReluDense.{name}', f'{ours}/mlp/{name}', d, f)
                for name in wi],
              dense(f'{theirs}.{mlp_index}.DenseReluDense.wo', f'{ours}/mlp/wo', f, d),
              hf.same(f'{theirs}.{mlp_index}.layer_norm.weight', f'{ours}/ln_mlp/scale')]
      if stack == 'decoder':
        out += [*attention(f'{theirs}.1.EncDecAttention', f'{ours}/cross_attention'),
                hf.same(f'{theirs}.1.layer_norm.weight', f'{ours}/ln_cross/scale')]
  if not cfg.tie_output:
    out.append(dense('lm_head', 'lm_head', d, cfg.vocab_size))
  return out


def load(directory: str) -> hf.Imported:
  """Imports an HF T5 directory (T5ForConditionalGeneration, v1.0 or v1.1 layout)."""
  config = hf.read_config(directory)
  hf.check_model_type(config, 't5', directory)
  weights = hf.read_weights(directory)
  head = weights.get('lm_head.weight')
  untied = head is not None and not np.array_equal(head, weights.get('shared.weight'))
  cfg = config_from_hf(config, directory, untied)
  tokenizer = HFTokenizer.load_sentencepiece(directory)
  hf.check_vocab_fits(tokenizer.vocab_size, cfg.vocab_size, directory)
  hf.check_special_ids(tokenizer, config, directory, pad_token_id=0, eos_token_id=1)
  params, absent = hf.apply_rules(weights, rules(cfg), models.abstract_params(cfg), directory)
  if absent:
    raise hf.ConversionError(f'{directory}: {len(absent)} weights are missing from '
                             f'{hf.WEIGHTS_FILE} (first: {absent[0]}); is it a T5 checkpoint?')
  return hf.Imported(cfg, params, tokenizer)


def save(directory: str, cfg: ModelConfig, params: dict, tokenizer: HFTokenizer):
  """Writes an HF `T5ForConditionalGeneration` directory. A tied, unrescaled output layer (a
  combination only transformers 5 names) is written out as an lm_head equal to `shared`."""
  config = config_to_hf(cfg, tokenizer)  # refuses other architectures before writing
  weights = hf.invert_rules(params, rules(cfg))
  if cfg.tie_output and not cfg.scale_tied_output:
    weights['lm_head.weight'] = weights['shared.weight'].copy()
  hf.write_checkpoint(directory, config, weights)
  tokenizer.save(directory)
