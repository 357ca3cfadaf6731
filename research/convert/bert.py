"""BERT checkpoints in Hugging Face format <-> `EncoderLM` params.

  imported = bert.load('path/to/bert')        # config.json, model.safetensors, vocab.txt
  bert.save('out/', imported.cfg, imported.params, imported.tokenizer)

Layout (transformers `BertForPreTraining`; Devlin et al. 2019, Sec 3 and google-research/bert):
post-LN blocks whose `attention.output.LayerNorm` / `output.LayerNorm` are our `ln_attention` /
`ln_mlp`, a tanh pooler over [CLS], an MLM head tied to the token embeddings with its own output
bias, and a 2-way NSP classifier. Checkpoints without heads (`BertModel`) or without NSP
(`BertForMaskedLM`) import too; the missing head parameters keep a fresh initialisation and are
listed in `Imported.initialized`.
"""
from __future__ import annotations

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from research.convert import hf_checkpoint as hf
from research.convert.hf_tokenizer import HFTokenizer
from research.models import presets
from research.models.config import ModelConfig
from research.models.encoder import EncoderLM

ACTIVATIONS = {'gelu': 'gelu', 'gelu_new': 'gelu_tanh', 'gelu_pytorch_tanh': 'gelu_tanh',
               'relu': 'relu'}
EXPORTED_ACTIVATIONS = {'gelu': 'gelu', 'gelu_tanh': 'gelu_new', 'relu': 'relu'}
HEADS = ('encoder/pooler/', 'mlm_head/', 'nsp_head/')  # may be absent from a checkpoint


def config_from_hf(config: dict, directory: str) -> ModelConfig:
  hf.check_model_type(config, 'bert', directory)
  unsupported = [
      (config.get('position_embedding_type', 'absolute') != 'absolute',
       f'position_embedding_type {config.get("position_embedding_type")!r} (only absolute)'),
      (config.get('is_decoder', False) or config.get('add_cross_attention', False),
       'a decoder / cross-attention BERT'),
      (config.get('hidden_act', 'gelu') not in ACTIVATIONS,
       f'hidden_act {config.get("hidden_act")!r} (supported: {", ".join(ACTIVATIONS)})'),
  ]
  hf.reject_unsupported(unsupported, directory)
  return ModelConfig(**{
      **presets.FAMILIES['bert'],
      'vocab_size': config['vocab_size'], 'max_len': config['max_position_embeddings'],
      'd_model': config['hidden_size'], 'num_layers': config['num_hidden_layers'],
      'num_heads': config['num_attention_heads'], 'd_ff': config['intermediate_size'],
      'type_vocab_size': config['type_vocab_size'], 'dropout': config['hidden_dropout_prob'],
      'attention_dropout': config['attention_probs_dropout_prob'],
      'layer_norm_eps': config['layer_norm_eps'], 'activation': ACTIVATIONS[config['hidden_act']],
      'init_std': config['initializer_range']})


def config_to_hf(cfg: ModelConfig, tokenizer: HFTokenizer) -> dict:
  if cfg.pre_ln or cfg.final_ln or not cfg.embed_ln or not cfg.type_vocab_size or cfg.local_window:
    raise hf.ConversionError('only the BERT architecture (post-LN, embedding LayerNorm, segment '
                             'embeddings, dense attention) can be written as an HF BERT')
  return {
      'architectures': ['BertForPreTraining'], 'model_type': 'bert',
      'vocab_size': cfg.vocab_size, 'max_position_embeddings': cfg.max_len,
      'hidden_size': cfg.d_model, 'num_hidden_layers': cfg.num_layers,
      'num_attention_heads': cfg.num_heads, 'intermediate_size': cfg.d_ff,
      'type_vocab_size': cfg.type_vocab_size, 'hidden_dropout_prob': cfg.dropout,
      'attention_probs_dropout_prob': cfg.attention_dropout, 'layer_norm_eps': cfg.layer_norm_eps,
      'hidden_act': EXPORTED_ACTIVATIONS[cfg.activation],
      'initializer_range': cfg.init_std, 'position_embedding_type': 'absolute',
      'pad_token_id': tokenizer.pad_id,
  }


def rules(cfg: ModelConfig, prefix: str = 'bert.') -> list[hf.Rule]:
  d, h, dh, f = cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.d_ff
  norm = lambda theirs, ours: [hf.same(f'{theirs}.weight', f'{ours}/scale'),
                               hf.same(f'{theirs}.bias', f'{ours}/bias')]
  dense = lambda theirs, ours, d_in, d_out: [
      hf.transposed(f'{theirs}.weight', f'{ours}/kernel', (d_in, d_out), (d_out, d_in)),
      hf.same(f'{theirs}.bias', f'{ours}/bias')]
  emb = f'{prefix}embeddings'
  out = [hf.same(f'{emb}.word_embeddings.weight', 'encoder/embeddings/token/embedding'),
         hf.same(f'{emb}.position_embeddings.weight', 'encoder/embeddings/position/embedding'),
         hf.same(f'{emb}.token_type_embeddings.weight', 'encoder/embeddings/segment/embedding'),
         *norm(f'{emb}.LayerNorm', 'encoder/embeddings/norm')]
  for i in range(cfg.num_layers):
    theirs, ours = f'{prefix}encoder.layer.{i}', f'encoder/stack/layer_{i}'
    for name in ('query', 'key', 'value'):
      out += [hf.transposed(f'{theirs}.attention.self.{name}.weight',
                            f'{ours}/attention/{name}/kernel', (d, h, dh), (d, d)),
              hf.reshaped(f'{theirs}.attention.self.{name}.bias', f'{ours}/attention/{name}/bias',
                          (h, dh), (d,))]
    out += [hf.transposed(f'{theirs}.attention.output.dense.weight', f'{ours}/attention/out/kernel',
                          (h, dh, d), (d, d)),
            hf.same(f'{theirs}.attention.output.dense.bias', f'{ours}/attention/out/bias'),
            *norm(f'{theirs}.attention.output.LayerNorm', f'{ours}/ln_attention'),
            *dense(f'{theirs}.intermediate.dense', f'{ours}/mlp/wi', d, f),
            *dense(f'{theirs}.output.dense', f'{ours}/mlp/wo', f, d),
            *norm(f'{theirs}.output.LayerNorm', f'{ours}/ln_mlp')]
  return out + [*dense(f'{prefix}pooler.dense', 'encoder/pooler/dense', d, d),
                *dense('cls.predictions.transform.dense', 'mlm_head/transform', d, d),
                *norm('cls.predictions.transform.LayerNorm', 'mlm_head/norm'),
                hf.same('cls.predictions.bias', 'mlm_head/bias'),
                *dense('cls.seq_relationship', 'nsp_head/dense', d, 2)]


def load(directory: str, seed: int = 0) -> hf.Imported:
  """Imports an HF BERT directory; `seed` initialises any head the checkpoint lacks."""
  cfg = config_from_hf(hf.read_config(directory), directory)
  tokenizer = HFTokenizer.load_wordpiece(directory)
  hf.check_vocab_fits(tokenizer.vocab_size, cfg.vocab_size, directory)
  weights = hf.read_weights(directory)
  # BertModel checkpoints name their tensors without the 'bert.' prefix.
  prefix = 'bert.' if any(k.startswith('bert.') for k in weights) else ''
  # The MLM output bias is tied to the decoder's; checkpoints store either name.
  if 'cls.predictions.decoder.bias' in weights:
    weights.setdefault('cls.predictions.bias', weights['cls.predictions.decoder.bias'])
  decoder = weights.get('cls.predictions.decoder.weight')
  if decoder is not None and not np.array_equal(
      decoder, weights.get(f'{prefix}embeddings.word_embeddings.weight')):
    raise hf.ConversionError(f'{directory}: cls.predictions.decoder.weight differs from the word '
                             'embeddings; only BERT with the MLM decoder tied to them is supported')
  init = lambda: nn.meta.unbox(EncoderLM(cfg).init(
      jax.random.key(seed), jnp.zeros((1, 2), jnp.int32))['params'])
  params, absent = hf.apply_rules(weights, rules(cfg, prefix), jax.eval_shape(init), directory)
  missing = [p for p in absent if not p.startswith(HEADS)]
  if missing:
    raise hf.ConversionError(f'{directory}: {len(missing)} encoder weights are missing from '
                             f'{hf.WEIGHTS_FILE} (first: {missing[0]}); is it a BERT checkpoint?')
  if absent:  # heads the checkpoint lacks start from a fresh initialisation
    fresh = flax.traverse_util.flatten_dict(jax.jit(init)(), sep='/')
    params = flax.traverse_util.flatten_dict(params, sep='/')
    params = flax.traverse_util.unflatten_dict(
        {p: np.asarray(fresh[p]) if p in absent else v for p, v in params.items()}, sep='/')
  return hf.Imported(cfg, params, tokenizer, initialized=absent)


def save(directory: str, cfg: ModelConfig, params: dict, tokenizer: HFTokenizer):
  """Writes an HF `BertForPreTraining` directory (the MLM decoder stays tied to the embeddings)."""
  hf.write_checkpoint(directory, config_to_hf(cfg, tokenizer),
                      hf.invert_rules(params, rules(cfg)))
  tokenizer.save(directory)
