"""BART checkpoints in Hugging Face format <-> `EncoderDecoder` params.

  imported = bart.load('path/to/bart')  # config.json, model.safetensors, vocab.json + merges.txt
  bart.save('out/', imported.cfg, imported.params, imported.tokenizer)

Layout (transformers `BartForConditionalGeneration`; Lewis et al. 2020, Sec 2.1, which follows
the standard Transformer with GELU): one `model.shared` token table; per stack learned
positions and a `layernorm_embedding` on the summed embeddings; post-LN layers whose
`self_attn_layer_norm`, (decoder) `encoder_attn_layer_norm` and `final_layer_norm` are our
`ln_attention`, `ln_cross` and `ln_mlp` (the norm after the `fc1`/`fc2` MLP, not a stack's last
norm); the output layer tied to `model.shared`.

HF keeps fairseq's position table of max_position_embeddings + 2 rows and reads it from row 2
on (fairseq reserved the first rows for padding): ours are rows [2:], and export writes the
two unused rows as zeros. `final_logits_bias` is a buffer of zeros in every released BART; a
checkpoint with a nonzero one is refused rather than silently changed. Training-only switches
(`activation_dropout`, layer drop) do not change the function and are not carried over.
"""
from __future__ import annotations

import numpy as np

from research import models
from research.convert import hf_checkpoint as hf
from research.convert.hf_tokenizer import BART_SPECIALS, HFTokenizer
from research.models import presets
from research.models.config import ModelConfig

ACTIVATIONS = {'gelu': 'gelu', 'gelu_new': 'gelu_tanh', 'gelu_pytorch_tanh': 'gelu_tanh',
               'relu': 'relu'}
EXPORTED_ACTIVATIONS = {'gelu': 'gelu', 'gelu_tanh': 'gelu_new', 'relu': 'relu'}
POSITION_OFFSET = 2  # unused leading rows of HF's position tables


def config_from_hf(config: dict, directory: str) -> ModelConfig:
  hf.check_model_type(config, 'bart', directory)
  get = config.get
  activation = get('activation_function', 'gelu')
  eos_id = get('eos_token_id', 2)
  unsupported = [
      (get('encoder_attention_heads') != get('decoder_attention_heads'),
       f'encoder_attention_heads {get("encoder_attention_heads")} != decoder_attention_heads '
       f'{get("decoder_attention_heads")}'),
      (get('encoder_ffn_dim') != get('decoder_ffn_dim'),
       f'encoder_ffn_dim {get("encoder_ffn_dim")} != decoder_ffn_dim {get("decoder_ffn_dim")}'),
      (activation not in ACTIVATIONS,
       f'activation_function {activation!r} (supported: {", ".join(ACTIVATIONS)})'),
      (get('scale_embedding', False), 'scale_embedding=true (embeddings times sqrt(d_model))'),
      (get('normalize_before', False), 'normalize_before=true (pre-LN, as mBART)'),
      (get('add_final_layer_norm', False), 'add_final_layer_norm=true (as mBART)'),
      (not get('normalize_embedding', True), 'normalize_embedding=false'),
      (get('static_position_embeddings', False), 'static_position_embeddings=true'),
      (get('add_bias_logits', False), 'add_bias_logits=true'),
      (get('tie_word_embeddings', True) is False, 'tie_word_embeddings=false (an untied lm_head)'),
      (get('decoder_start_token_id', eos_id) != eos_id,
       f'decoder_start_token_id {get("decoder_start_token_id")} other than eos_token_id '
       f'{eos_id} (BART starts the decoder from </s>)'),
  ]
  hf.reject_unsupported(unsupported, directory)
  return ModelConfig(**{
      **presets.FAMILIES['bart'],
      'vocab_size': config['vocab_size'], 'max_len': config['max_position_embeddings'],
      'd_model': config['d_model'], 'num_layers': config['encoder_layers'],
      'num_decoder_layers': config['decoder_layers'],
      'num_heads': config['encoder_attention_heads'], 'd_ff': config['encoder_ffn_dim'],
      'dropout': get('dropout', 0.1), 'attention_dropout': get('attention_dropout', 0.0),
      'activation': ACTIVATIONS[activation], 'init_std': get('init_std', 0.02)})


def config_to_hf(cfg: ModelConfig, tokenizer: HFTokenizer) -> dict:
  bart_like = (cfg.arch == 'encoder_decoder' and cfg.position == 'learned'
               and cfg.norm == 'layer' and cfg.use_bias and not cfg.pre_ln and not cfg.final_ln
               and cfg.embed_ln and cfg.attention_scale and cfg.mlp == 'dense'
               and cfg.tie_output and not cfg.scale_tied_output and not cfg.type_vocab_size
               and cfg.decoder_start == 'eos' and cfg.layer_norm_eps == 1e-5)
  if not bart_like:
    raise hf.ConversionError(
        'only the BART architecture (encoder-decoder, learned positions, post-LN LayerNorms '
        '(eps 1e-5) with embedding LayerNorm, biases, dense MLP, tied output, decoder started '
        'from eos) can be written as an HF BART')
  return {
      'architectures': ['BartForConditionalGeneration'], 'model_type': 'bart',
      'vocab_size': cfg.vocab_size, 'max_position_embeddings': cfg.max_len,
      'd_model': cfg.d_model, 'encoder_layers': cfg.num_layers,
      'decoder_layers': cfg.decoder_layers, 'encoder_attention_heads': cfg.num_heads,
      'decoder_attention_heads': cfg.num_heads, 'encoder_ffn_dim': cfg.d_ff,
      'decoder_ffn_dim': cfg.d_ff, 'activation_function': EXPORTED_ACTIVATIONS[cfg.activation],
      'dropout': cfg.dropout, 'attention_dropout': cfg.attention_dropout,
      'activation_dropout': 0.0, 'init_std': cfg.init_std, 'scale_embedding': False,
      'tie_word_embeddings': True, 'is_encoder_decoder': True,
      'pad_token_id': tokenizer.pad_id, 'bos_token_id': tokenizer.bos_id,
      'eos_token_id': tokenizer.eos_id, 'decoder_start_token_id': tokenizer.eos_id,
      'forced_eos_token_id': tokenizer.eos_id,
  }


def positions(hf_name: str, ours: str) -> hf.Rule:
  """HF's [max_len + 2, d_model] table <-> our [max_len, d_model] (rows 2: on)."""
  return hf.Rule(hf_name, (ours,), lambda x: (x[POSITION_OFFSET:],),
                 lambda x: np.concatenate([np.zeros((POSITION_OFFSET, x.shape[1]), x.dtype), x]))


def rules(cfg: ModelConfig, prefix: str = 'model.') -> list[hf.Rule]:
  d, h, dh, f = cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.d_ff
  norm = lambda theirs, ours: [hf.same(f'{theirs}.weight', f'{ours}/scale'),
                               hf.same(f'{theirs}.bias', f'{ours}/bias')]
  dense = lambda theirs, ours, d_in, d_out: [
      hf.transposed(f'{theirs}.weight', f'{ours}/kernel', (d_in, d_out), (d_out, d_in)),
      hf.same(f'{theirs}.bias', f'{ours}/bias')]

  def attention(theirs: str, ours: str) -> list[hf.Rule]:
    out = []
    for name, our_name in (('q', 'query'), ('k', 'key'), ('v', 'value')):
      out += [hf.transposed(f'{theirs}.{name}_proj.weight', f'{ours}/{our_name}/kernel',
                            (d, h, dh), (h * dh, d)),
              hf.reshaped(f'{theirs}.{name}_proj.bias', f'{ours}/{our_name}/bias', (h, dh),
                          (h * dh,))]
    return out + [hf.transposed(f'{theirs}.out_proj.weight', f'{ours}/out/kernel', (h, dh, d),
                                (d, h * dh)),
                  hf.same(f'{theirs}.out_proj.bias', f'{ours}/out/bias')]

  out = [hf.same(f'{prefix}shared.weight', 'shared/embedding')]
  for stack, num_layers in (('encoder', cfg.num_layers), ('decoder', cfg.decoder_layers)):
    out += [positions(f'{prefix}{stack}.embed_positions.weight',
                      f'{stack}_embeddings/position/embedding'),
            *norm(f'{prefix}{stack}.layernorm_embedding', f'{stack}_embeddings/norm')]
    for i in range(num_layers):
      theirs, ours = f'{prefix}{stack}.layers.{i}', f'{stack}/layer_{i}'
      out += [*attention(f'{theirs}.self_attn', f'{ours}/attention'),
              *norm(f'{theirs}.self_attn_layer_norm', f'{ours}/ln_attention'),
              *dense(f'{theirs}.fc1', f'{ours}/mlp/wi', d, f),
              *dense(f'{theirs}.fc2', f'{ours}/mlp/wo', f, d),
              *norm(f'{theirs}.final_layer_norm', f'{ours}/ln_mlp')]
      if stack == 'decoder':
        out += [*attention(f'{theirs}.encoder_attn', f'{ours}/cross_attention'),
                *norm(f'{theirs}.encoder_attn_layer_norm', f'{ours}/ln_cross')]
  return out


def load(directory: str) -> hf.Imported:
  """Imports an HF BART directory (BartForConditionalGeneration or the bare BartModel)."""
  return _load(directory, hf.read_weights(directory))


def _load(directory: str, weights: dict[str, np.ndarray]) -> hf.Imported:
  config = hf.read_config(directory)
  cfg = config_from_hf(config, directory)
  tokenizer = HFTokenizer.load_byte_level_bpe(directory, BART_SPECIALS)
  hf.check_vocab_fits(tokenizer.vocab_size, cfg.vocab_size, directory)
  hf.check_special_ids(tokenizer, config, directory, pad_token_id=1, eos_token_id=2,
                       bos_token_id=0)
  bias = weights.get('final_logits_bias')
  if bias is not None and np.any(bias):
    raise hf.ConversionError(
        f'{directory}: final_logits_bias is nonzero (max |bias| {np.abs(bias).max():.3g}); '
        'only BART with the all-zero output bias of the released checkpoints is supported')
  # BartModel checkpoints (no LM head) name their tensors without the 'model.' prefix.
  prefix = 'model.' if any(k.startswith('model.') for k in weights) else ''
  head = weights.get('lm_head.weight')
  if head is not None and not np.array_equal(head, weights.get(f'{prefix}shared.weight')):
    raise hf.ConversionError(f'{directory}: lm_head.weight differs from model.shared.weight; '
                             'only BART with the output layer tied to the embeddings is supported')
  params, absent = hf.apply_rules(weights, rules(cfg, prefix), models.abstract_params(cfg),
                                  directory)
  if absent:
    raise hf.ConversionError(f'{directory}: {len(absent)} weights are missing from '
                             f'{hf.WEIGHTS_FILE} (first: {absent[0]}); is it a BART checkpoint?')
  return hf.Imported(cfg, params, tokenizer)


def classifier_rules(cfg: ModelConfig, num_labels: int) -> list[hf.Rule]:
  """HF `BartClassificationHead` <-> TaskModel's `pooler` (dense + tanh) and `head` (out_proj)."""
  d = cfg.d_model
  return [hf.transposed('classification_head.dense.weight', 'pooler/kernel', (d, d), (d, d)),
          hf.same('classification_head.dense.bias', 'pooler/bias'),
          hf.transposed('classification_head.out_proj.weight', 'head/dense/kernel',
                        (d, num_labels), (num_labels, d)),
          hf.same('classification_head.out_proj.bias', 'head/dense/bias')]


def load_classifier(directory: str) -> tuple[hf.Imported, dict]:
  """Imports an HF `BartForSequenceClassification` directory: the model (as `load`) and its
  classification head as the params of models/task_model.TaskModel's `pooler` and `head`
  (TaskModel(cfg, 'classification', num_labels) then reproduces HF's logits)."""
  weights = hf.read_weights(directory)  # read once: the model's tensors and the head's
  imported = _load(directory, weights)
  config = hf.read_config(directory)
  num_labels = len(config.get('id2label') or {}) or config.get('num_labels', 3)
  d = imported.cfg.d_model
  template = {'pooler': {'kernel': np.zeros((d, d)), 'bias': np.zeros(d)},
              'head': {'dense': {'kernel': np.zeros((d, num_labels)), 'bias': np.zeros(num_labels)}}}
  head, absent = hf.apply_rules(weights, classifier_rules(imported.cfg, num_labels), template,
                                directory)
  if absent:
    raise hf.ConversionError(f'{directory}: no classification_head in {hf.WEIGHTS_FILE}; is it '
                             'a BartForSequenceClassification checkpoint?')
  return imported, head


def save(directory: str, cfg: ModelConfig, params: dict, tokenizer: HFTokenizer):
  """Writes an HF `BartForConditionalGeneration` directory (output layer tied to the embeddings,
  so not stored; final_logits_bias zeros)."""
  config = config_to_hf(cfg, tokenizer)  # refuses other architectures before writing
  weights = hf.invert_rules(params, rules(cfg))
  weights['final_logits_bias'] = np.zeros((1, cfg.vocab_size), np.float32)
  hf.write_checkpoint(directory, config, weights)
  tokenizer.save(directory)
