"""BERT (Devlin et al. 2019): embeddings(+segments) -> bidirectional Stack -> pooler, MLM and NSP heads."""
from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from research.models.attention import make_mask
from research.models.config import ModelConfig
from research.models.heads import ClassifierHead, MlmHead, Pooler
from research.models.layers import Embeddings
from research.models.transformer import Stack


@flax.struct.dataclass
class EncoderOutput:
  hidden: jax.Array  # [batch, length, d_model]
  pooled: jax.Array  # [batch, d_model]
  hidden_states: tuple | None = None
  attentions: tuple | None = None


class Encoder(nn.Module):
  """The bare bidirectional encoder: every token attends to every non-padding token."""
  cfg: ModelConfig

  def setup(self):
    self.embeddings = Embeddings(self.cfg)
    self.stack = Stack(self.cfg)
    self.pooler = Pooler(self.cfg)

  def __call__(self, input_ids, segment_ids=None, attention_mask=None, *,
               deterministic: bool = True, return_intermediates: bool = False) -> EncoderOutput:
    """input_ids, segment_ids, attention_mask (1 = token, 0 = padding): [batch, length]."""
    batch, length = input_ids.shape
    self.cfg.check_length(length)
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    slots = jnp.arange(length)
    positions = jnp.broadcast_to(slots, (batch, length))
    mask = make_mask(slots, slots, attention_mask, causal=False)  # [batch, 1, L, L]
    x = self.embeddings(input_ids, positions, segment_ids, deterministic=deterministic)
    out = self.stack(x, (mask, None), deterministic=deterministic,
                     return_intermediates=return_intermediates)
    return EncoderOutput(hidden=out.hidden, pooled=self.pooler(out.hidden),
                         hidden_states=out.hidden_states, attentions=out.attentions)


class BertForPretraining(nn.Module):
  """Encoder + masked-LM head (tied to the token embeddings) + next-sentence head (Sec 3.1)."""
  cfg: ModelConfig

  def setup(self):
    self.encoder = Encoder(self.cfg)
    self.mlm_head = MlmHead(self.cfg)
    self.nsp_head = ClassifierHead(self.cfg, 2)

  def __call__(self, input_ids, segment_ids=None, attention_mask=None, *,
               mlm_positions=None, deterministic: bool = True,
               return_intermediates: bool = False) -> dict:
    """Returns mlm_logits [batch, P, vocab] at `mlm_positions` [batch, P] (all positions if
    None: as google-research/bert does, gathering the predicted positions first avoids a
    vocab-sized projection of the ~85% of tokens that carry no loss) and nsp_logits [batch, 2]."""
    out = self.encoder(input_ids, segment_ids, attention_mask, deterministic=deterministic,
                       return_intermediates=return_intermediates)
    hidden = out.hidden
    if mlm_positions is not None:
      hidden = jnp.take_along_axis(hidden, mlm_positions[..., None], axis=1)  # [batch, P, d_model]
    return {'mlm_logits': self.mlm_head(hidden, self.encoder.embeddings.attend),
            'nsp_logits': self.nsp_head(out.pooled), 'encoder': out}
