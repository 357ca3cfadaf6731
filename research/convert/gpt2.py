"""GPT-2 checkpoints in Hugging Face format <-> `Decoder` (GPT) params.

  imported = gpt2.load('path/to/gpt2')  # config.json, model.safetensors, vocab.json, merges.txt
  gpt2.save('out/', imported.cfg, imported.params, imported.tokenizer)

Layout (transformers `GPT2LMHeadModel`; Radford et al. 2019, Sec 2.3): pre-LN blocks (`ln_1`,
`ln_2` = our `ln_attention`, `ln_mlp`) and a final `ln_f`, learned positions, tanh-GELU, and
an LM head tied to `wte`. GPT-2's `Conv1D` stores weights [in, out] (our kernel layout) with
query, key and value fused in one `c_attn` [d_model, 3 * d_model].
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.convert import hf_checkpoint as hf
from research.convert.hf_tokenizer import HFTokenizer
from research.models import presets
from research.models.config import ModelConfig
from research.models.decoder import Decoder

ACTIVATIONS = {'gelu_new': 'gelu_tanh', 'gelu_pytorch_tanh': 'gelu_tanh', 'gelu': 'gelu',
               'relu': 'relu'}
EXPORTED_ACTIVATIONS = {'gelu_tanh': 'gelu_new', 'gelu': 'gelu', 'relu': 'relu'}


def config_from_hf(config: dict, directory: str) -> ModelConfig:
  hf.check_model_type(config, 'gpt2', directory)
  unsupported = [
      (config.get('scale_attn_by_inverse_layer_idx', False), 'scale_attn_by_inverse_layer_idx'),
      (not config.get('scale_attn_weights', True), 'scale_attn_weights=false'),
      (config.get('add_cross_attention', False), 'cross-attention'),
      (config.get('activation_function', 'gelu_new') not in ACTIVATIONS,
       f'activation_function {config.get("activation_function")!r}'),
  ]
  hf.reject_unsupported(unsupported, directory)
  d = config['n_embd']
  return ModelConfig(**{
      **presets.FAMILIES['gpt2'],
      'vocab_size': config['vocab_size'], 'max_len': config['n_positions'], 'd_model': d,
      'num_layers': config['n_layer'], 'num_heads': config['n_head'],
      'd_ff': config.get('n_inner') or 4 * d, 'dropout': config.get('resid_pdrop', 0.1),
      'attention_dropout': config.get('attn_pdrop', 0.1),
      'layer_norm_eps': config.get('layer_norm_epsilon', 1e-5),
      'activation': ACTIVATIONS[config.get('activation_function', 'gelu_new')],
      'init_std': config.get('initializer_range', 0.02)})


def config_to_hf(cfg: ModelConfig, tokenizer: HFTokenizer) -> dict:
  if not (cfg.pre_ln and cfg.final_ln) or cfg.embed_ln or cfg.type_vocab_size or cfg.local_window:
    raise hf.ConversionError('only the GPT-2 architecture (pre-LN, final LayerNorm, no segment '
                             'embeddings, dense attention) can be written as an HF GPT-2')
  return {
      'architectures': ['GPT2LMHeadModel'], 'model_type': 'gpt2',
      'vocab_size': cfg.vocab_size, 'n_positions': cfg.max_len, 'n_embd': cfg.d_model,
      'n_layer': cfg.num_layers, 'n_head': cfg.num_heads, 'n_inner': cfg.d_ff,
      'activation_function': EXPORTED_ACTIVATIONS[cfg.activation],
      'resid_pdrop': cfg.dropout, 'embd_pdrop': cfg.dropout, 'attn_pdrop': cfg.attention_dropout,
      'layer_norm_epsilon': cfg.layer_norm_eps, 'initializer_range': cfg.init_std,
      'scale_attn_weights': True, 'tie_word_embeddings': True,
      'bos_token_id': tokenizer.bos_id, 'eos_token_id': tokenizer.eos_id,
  }


def rules(cfg: ModelConfig, prefix: str = 'transformer.') -> list[hf.Rule]:
  d, h, dh = cfg.d_model, cfg.num_heads, cfg.head_dim
  norm = lambda theirs, ours: [hf.same(f'{theirs}.weight', f'{ours}/scale'),
                               hf.same(f'{theirs}.bias', f'{ours}/bias')]
  conv = lambda theirs, ours: [hf.same(f'{theirs}.weight', f'{ours}/kernel'),
                               hf.same(f'{theirs}.bias', f'{ours}/bias')]
  out = [hf.same(f'{prefix}wte.weight', 'embeddings/token/embedding'),
         hf.same(f'{prefix}wpe.weight', 'embeddings/position/embedding'),
         *norm(f'{prefix}ln_f', 'stack/final_ln')]
  for i in range(cfg.num_layers):
    theirs, ours = f'{prefix}h.{i}', f'stack/layer_{i}'
    qkv = [f'{ours}/attention/{name}' for name in ('query', 'key', 'value')]
    out += [*norm(f'{theirs}.ln_1', f'{ours}/ln_attention'),
            hf.fused(f'{theirs}.attn.c_attn.weight', [f'{p}/kernel' for p in qkv], (d, h, dh)),
            hf.fused(f'{theirs}.attn.c_attn.bias', [f'{p}/bias' for p in qkv], (h, dh)),
            hf.reshaped(f'{theirs}.attn.c_proj.weight', f'{ours}/attention/out/kernel',
                        (h, dh, d), (d, d)),
            hf.same(f'{theirs}.attn.c_proj.bias', f'{ours}/attention/out/bias'),
            *norm(f'{theirs}.ln_2', f'{ours}/ln_mlp'),
            *conv(f'{theirs}.mlp.c_fc', f'{ours}/mlp/wi'),
            *conv(f'{theirs}.mlp.c_proj', f'{ours}/mlp/wo')]
  return out


def load(directory: str) -> hf.Imported:
  """Imports an HF GPT-2 directory (GPT2LMHeadModel or the bare GPT2Model)."""
  cfg = config_from_hf(hf.read_config(directory), directory)
  tokenizer = HFTokenizer.load_byte_level_bpe(directory)
  hf.check_vocab_fits(tokenizer.vocab_size, cfg.vocab_size, directory)
  weights = hf.read_weights(directory)
  # The original OpenAI-converted checkpoints name tensors without 'transformer.'.
  prefix = 'transformer.' if any(k.startswith('transformer.') for k in weights) else ''
  head = weights.get('lm_head.weight')
  if head is not None and not np.array_equal(head, weights.get(f'{prefix}wte.weight')):
    raise hf.ConversionError(f'{directory}: lm_head.weight differs from wte.weight; only GPT-2 '
                             'with the LM head tied to the token embeddings is supported')
  model = Decoder(cfg)
  template = jax.eval_shape(lambda: nn.meta.unbox(
      model.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32))['params']))
  params, absent = hf.apply_rules(weights, rules(cfg, prefix), template, directory)
  if absent:
    raise hf.ConversionError(f'{directory}: {len(absent)} weights are missing from '
                             f'{hf.WEIGHTS_FILE} (first: {absent[0]}); is it a GPT-2 checkpoint?')
  return hf.Imported(cfg, params, tokenizer)


def save(directory: str, cfg: ModelConfig, params: dict, tokenizer: HFTokenizer):
  """Writes an HF `GPT2LMHeadModel` directory (lm_head tied to wte, so not stored)."""
  hf.write_checkpoint(directory, config_to_hf(cfg, tokenizer), hf.invert_rules(params, rules(cfg)))
  tokenizer.save(directory)
