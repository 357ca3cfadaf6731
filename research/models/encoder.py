"""arch='encoder': BERT (Devlin et al. 2019) embeddings(+segments) -> Stack -> pooler, and the
pretraining model with its masked-LM and next-sentence heads.

By default every token attends to every non-padding token (`mask_kind='full'`). The mask is
data: with `mask_kind='causal'`, per-row `order` and `prefix_len` the same stack reads
left-to-right, right-to-left or source-bidirectional/target-causal, which is how UniLM trains
one encoder with several objectives in one batch (Dong et al. 2019, Sec 2.2).
"""
from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from research.models.config import ModelConfig
from research.models.heads import ClassifierHead, MlmHead, Pooler
from research.models.layers import Embeddings
from research.models import masks
from research.models.transformer import Stack


@flax.struct.dataclass
class EncoderOutput:
  hidden: jax.Array  # [batch, length, d_model]
  pooled: jax.Array  # [batch, d_model]
  hidden_states: tuple | None = None
  attentions: tuple | None = None


class Encoder(nn.Module):
  """The bare encoder: embeddings, a Stack and BERT's [CLS] pooler."""
  cfg: ModelConfig

  def setup(self):
    self.embeddings = Embeddings(self.cfg)
    self.stack = Stack(self.cfg, self.cfg.num_layers)
    self.pooler = Pooler(self.cfg)

  def __call__(self, input_ids, segment_ids=None, attention_mask=None, *,
               mask_kind: str = 'full', order=None, prefix_len=None,
               deterministic: bool = True, return_intermediates: bool = False) -> EncoderOutput:
    """input_ids, segment_ids, attention_mask (1 = token, 0 = padding): [batch, length];
    order [batch, length] (default: positions), prefix_len [batch]: see masks.attention_mask."""
    batch, length = input_ids.shape
    self.cfg.check_length(length)
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    positions = jnp.arange(length)[None]  # [1, length]
    if order is None:
      order = positions
    mask = masks.attention_mask(order, order, attention_mask, kind=mask_kind,
                                prefix_len=prefix_len)  # [batch, 1, L, L]
    x = self.embeddings(input_ids, jnp.broadcast_to(positions, (batch, length)), segment_ids,
                        deterministic=deterministic)
    out = self.stack(x, (mask, None), positions=(positions, positions),
                     deterministic=deterministic, return_intermediates=return_intermediates)
    return EncoderOutput(hidden=out.hidden, pooled=self.pooler(out.hidden),
                         hidden_states=out.hidden_states, attentions=out.attentions)


class EncoderLM(nn.Module):
  """Encoder + masked-LM head (tied to the token embeddings) + next-sentence head (BERT
  Sec 3.1): the pretraining model of arch='encoder'."""
  cfg: ModelConfig

  def setup(self):
    self.encoder = Encoder(self.cfg)
    self.mlm_head = MlmHead(self.cfg)
    self.nsp_head = ClassifierHead(self.cfg, 2)

  def __call__(self, input_ids, segment_ids=None, attention_mask=None, *,
               mlm_positions=None, deterministic: bool = True,
               return_intermediates: bool = False, **mask) -> dict:
    """Returns mlm_logits [batch, P, vocab] at `mlm_positions` [batch, P] (all positions if
    None: as google-research/bert does, gathering the predicted positions first avoids a
    vocab-sized projection of the ~85% of tokens that carry no loss) and nsp_logits [batch, 2].
    `mask`: mask_kind / order / prefix_len of Encoder."""
    out = self.encoder(input_ids, segment_ids, attention_mask, deterministic=deterministic,
                       return_intermediates=return_intermediates, **mask)
    hidden = out.hidden
    if mlm_positions is not None:
      hidden = jnp.take_along_axis(hidden, mlm_positions[..., None], axis=1)  # [batch, P, d_model]
    return {'mlm_logits': self.mlm_head(hidden, self.encoder.embeddings.attend),
            'nsp_logits': self.nsp_head(out.pooled), 'encoder': out}
