"""A pretrained model of any arch plus one task head: what classification, regression,
tagging, span and multiple-choice fine-tuning trains (seq2seq tasks train the pretraining
model itself, models.build).

The backbone is a submodule named like the pretraining model's parameters, so pretrained
weights drop in unchanged (`BACKBONES`): `encoder` (EncoderLM's `encoder` subtree; its MLM
and NSP heads are discarded), `decoder` (the whole GPT tree; its tied embedding also serves
the auxiliary LM loss of GPT-1 Sec 3.2) or `encoder_decoder` (the whole T5/BART tree). BART
classifies by feeding "the same input to the encoder and decoder" and reading "the final
hidden state of the final decoder token" (Lewis et al. 2020, Sec 3.1); decoders read their
last token too (GPT-1 Sec 3.3). Only `head` (and `bilstm`, `pooler`) start from random weights.

An encoder-decoder reads its input as HF `BartForSequenceClassification` and fairseq do: the
encoder the input, the decoder the input shifted right behind the decoder's start token (the
token it was pretrained to start from, eos for BART, pad for T5), and the sequence-level
classifier the decoder's state at the last real token (the closing eos) through a tanh layer
(`pooler`, their `classification_head.dense`) before the linear output (`out_proj`).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models.config import ModelConfig
from research.models.decoder import Decoder
from research.models.encoder import Encoder
from research.models.encoder_decoder import EncoderDecoder
from research.models.finetune_heads import BiLstm, last_token
from research.models.heads import ClassifierHead
from research.models.layers import Dropout, dense_init, zeros_init

# arch -> the backbone's name in the task model; `pretrained_backbone` maps the pretraining
# model's params onto it.
BACKBONES = {'encoder': 'encoder', 'decoder': 'decoder', 'encoder_decoder': 'encoder_decoder'}
SEQUENCE_TYPES = ('classification', 'regression', 'multiple_choice')
TOKEN_TYPES = ('tagging', 'span')


def pretrained_backbone(cfg: ModelConfig, params: dict) -> dict:
  """The part of a pretraining model's params (models.build(cfg)) the task model reuses."""
  return params['encoder'] if cfg.arch == 'encoder' else params


class TaskModel(nn.Module):
  cfg: ModelConfig
  task_type: str  # research/tasks/task.py TASK_TYPES
  num_outputs: int  # classes / tags; 1 for regression and per-choice scores; 2 for spans
  bilstm_size: int = 0  # >0: BERT Table 5 (d) BiLSTM with this many units per direction
  # encoder_decoder: the id of the decoder's start token (objectives/seq2seq.py `start_id`).
  decoder_start_id: int | None = None

  @nn.compact
  def __call__(self, input_ids, segment_ids, attention_mask, *, deterministic: bool = True):
    """Sequence-level types take [N, V, L] inputs (V = 1, both orders of a pair, or the
    choices) and return logits [N, classes] (regression: [N]; multiple choice: [N, V]);
    tagging returns [N, L, tags] and span {start, end} [N, L] from [N, L] inputs.
    'lm_logits' [N*V, L, vocab] is the decoder's next-token prediction (None for encoders)."""
    cfg = self.cfg
    sequence_level = self.task_type in SEQUENCE_TYPES
    lead = input_ids.shape[:-1]  # [N, V] or [N]
    flat = lambda x: x.reshape(-1, x.shape[-1])  # [N * V, L]
    ids, segments, mask = flat(input_ids), flat(segment_ids), flat(attention_mask)
    name = BACKBONES[cfg.arch]
    if cfg.arch == 'encoder':
      out = Encoder(cfg, name=name)(ids, segments, mask, deterministic=deterministic)
      hidden, summary, lm_logits = out.hidden, out.pooled, None
    elif cfg.arch == 'decoder':
      out = Decoder(cfg, name=name)(ids, mask, deterministic=deterministic)
      hidden, summary, lm_logits = out.hidden, last_token(out.hidden, mask), out.logits
    else:
      if self.decoder_start_id is None:
        raise ValueError('an encoder_decoder TaskModel needs decoder_start_id (the decoder '
                         "start token's id: models.encoder_decoder.start_id(tokenizer, "
                         'cfg.decoder_start))')
      shift = lambda x, start: jnp.concatenate(  # [N * V, L]: start, then x but its last
          [jnp.full_like(x[:, :1], start), x[:, :-1]], axis=1)
      out = EncoderDecoder(cfg, name=name)(ids, shift(ids, self.decoder_start_id), mask,
                                           shift(mask, 1), deterministic=deterministic,
                                           logits=False)
      hidden, summary, lm_logits = out.hidden, last_token(out.hidden, mask), None
    if self.bilstm_size:
      hidden, summary = BiLstm(self.bilstm_size, cfg.compute_dtype, name='bilstm')(hidden, mask)

    drop = Dropout(cfg.dropout)  # BERT/GPT-1 fine-tune with dropout 0.1 before the head
    head = ClassifierHead(cfg, self.num_outputs, name='head')
    if sequence_level:
      if cfg.arch == 'encoder_decoder':  # BART's classification_head.dense + tanh
        pooler = nn.Dense(cfg.d_model, dtype=cfg.compute_dtype, name='pooler',
                          kernel_init=dense_init(cfg.init_std, ('embed', 'mlp')),
                          bias_init=zeros_init(('mlp',)))
        summary = jnp.tanh(pooler(drop(summary, deterministic=deterministic)))  # [N * V, D]
      summary = summary.reshape(*lead, summary.shape[-1])  # [N, V, D]
      if self.task_type == 'multiple_choice':
        logits = head(drop(summary, deterministic=deterministic))[..., 0]  # [N, V]
      else:
        # GPT-1 Sec 3.3 Similarity: the two orders' representations are added.
        logits = head(drop(summary.sum(axis=1), deterministic=deterministic))  # [N, C]
        if self.task_type == 'regression':
          logits = logits[..., 0]  # [N]
      return {'logits': logits, 'lm_logits': lm_logits}
    logits = head(drop(hidden, deterministic=deterministic))  # [N, L, C]
    if self.task_type == 'span':
      logits = {'start': logits[..., 0], 'end': logits[..., 1]}  # [N, L] each
    return {'logits': logits, 'lm_logits': lm_logits}


def init_params(model: TaskModel, seq_len: int, num_views: int, rng: jax.Array):
  """Boxed (logically partitioned) parameters from dummy inputs of the task's shape."""
  shape = (1, num_views, seq_len) if model.task_type in SEQUENCE_TYPES else (1, seq_len)
  ids = jnp.zeros(shape, jnp.int32)
  return model.init(rng, ids, ids, jnp.ones_like(ids))['params']


# What fine-tuning asks of a task model, answered here so that no workflow branches on arch.
_INPUT_FORMATS = {'encoder': 'bert', 'decoder': 'gpt', 'encoder_decoder': 'bert'}


def input_format(cfg: ModelConfig) -> str:
  """tasks/encoding.py's input style an arch reads by default: BERT's `[CLS] A [SEP] B [SEP]`
  (encoders; BART classifies it with both stacks) or GPT-1's `start A delim B extract`."""
  return _INPUT_FORMATS[cfg.arch]


def has_lm_logits(cfg: ModelConfig) -> bool:
  """Whether the task model also predicts the next token ('lm_logits'; GPT-1 Sec 3.2's
  auxiliary LM loss)."""
  return cfg.arch == 'decoder'


def decoder_length(cfg: ModelConfig, length: int) -> int:
  """Tokens the task model's decoder stack reads besides the encoder's `length` (FLOPs)."""
  return length if cfg.arch == 'encoder_decoder' else 0


def backbone_params(cfg: ModelConfig, params: dict) -> tuple[str, dict]:
  """(name in the task model, params) of the pretrained part a task model reuses."""
  return BACKBONES[cfg.arch], pretrained_backbone(cfg, params)
