"""The pretraining objectives, by name (`--config.objective.name`).

  mlm_nsp / mlm      BERT: masked LM (+ next-sentence prediction)    arch encoder
  unilm              UniLM: MLM under 4 masks in one batch           arch encoder
  plm                XLNet: permutation LM, two-stream attention      arch encoder (two_stream)
  clm                GPT: left-to-right LM on packed text             arch decoder
  prefix_lm          T5's prefix LM: bidirectional prefix, causal rest arch decoder
                     (encoder_decoder: T5's LM objective, prefix -> encoder)
  span_corruption    T5: sentinel-replaced spans -> the spans         arch encoder_decoder
                     (decoder: inputs + targets as one sequence)
  denoising          BART: noised document -> the document            arch encoder_decoder

Each is a frozen dataclass (objectives/base.py) holding its settings: host-side numpy
corruption for the input pipeline, device-side loss terms for the one train step.

`for_pairs` names the objective that fine-tunes a family on (source, target) pairs: T5/BART
teacher-forced (Seq2SeqLM), a decoder on the target after its prompt (CausalLM, or PrefixLM
reading the prompt bidirectionally), an encoder on masked targets under UniLM's seq2seq mask
(MaskedSeq2Seq). Each writes its own rows (`pair_example`).
"""
from __future__ import annotations

from research.objectives.base import Objective
from research.objectives.clm import CausalLM
from research.objectives.mlm import MaskedLM
from research.objectives.plm import PermutationLM
from research.objectives.prefix_lm import PrefixLM
from research.objectives.seq2seq import Denoising, Seq2SeqLM, SpanCorruption
from research.models.encoder import seq2seq_segments
from research.objectives.unilm import MaskedSeq2Seq, UniLM

NAMES = ('mlm_nsp', 'mlm', 'unilm', 'plm', 'clm', 'prefix_lm', 'span_corruption', 'denoising')


def _names(value: str) -> tuple[str, ...]:
  return tuple(n.strip() for n in value.split(',') if n.strip())


def from_config(objective_cfg, model_cfg=None) -> Objective:
  """The objective `config.objective` describes for a ModelConfig (its arch and decoder start
  token; default an encoder-decoder starting from pad); an unknown name is a one-line error."""
  c = objective_cfg
  arch = model_cfg.arch if model_cfg else 'encoder_decoder'
  decoder_start = model_cfg.decoder_start if model_cfg else 'pad'
  if c.name in ('mlm_nsp', 'mlm'):
    return MaskedLM(nsp=c.name == 'mlm_nsp', mask_prob=c.mask_prob,
                    mask_token_prob=c.mask_token_prob, random_token_prob=c.random_token_prob,
                    max_predictions=c.max_predictions_per_seq, short_seq_prob=c.short_seq_prob)
  if c.name == 'unilm':
    return UniLM(mask_prob=c.mask_prob, mask_token_prob=c.mask_token_prob,
                 random_token_prob=c.random_token_prob,
                 max_predictions=c.max_predictions_per_seq, short_seq_prob=c.short_seq_prob,
                 ngram_prob=c.ngram_prob, max_ngram=c.max_ngram)
  if c.name == 'plm':
    return PermutationLM(partial_prediction=c.partial_prediction,
                         bidirectional_context=c.plm_bidirectional_context)
  if c.name == 'clm':
    return CausalLM()
  if c.name == 'prefix_lm':
    return PrefixLM(arch=arch, decoder_start=decoder_start)
  if c.name == 'span_corruption':
    return SpanCorruption(noise_density=c.noise_density,
                          mean_noise_span_length=c.mean_noise_span_length,
                          num_sentinels=c.num_sentinels, decoder_start=decoder_start,
                          arch=arch, bidirectional_inputs=c.bidirectional_inputs)
  if c.name == 'denoising':
    return Denoising(noises=_names(c.noises), mask_ratio=c.mask_ratio,
                     random_ratio=c.random_ratio, poisson_lambda=c.poisson_lambda,
                     replace_length=c.replace_length, insert_ratio=c.insert_ratio,
                     permute_ratio=c.permute_ratio, rotate_ratio=c.rotate_ratio,
                     decoder_start=decoder_start)
  raise ValueError(f'unknown --config.objective.name={c.name!r}; use one of {", ".join(NAMES)}')


def for_pairs(model_cfg, tokenizer, *, max_len: int, target_len: int = 0,
              bidirectional_prompt: bool = False,
              target_mask_prob: float = 0.5) -> tuple[Objective, int]:
  """(objective, target length) that fine-tunes `model_cfg`'s family on (source, target)
  pairs of max_len tokens. target_len 0: an encoder-decoder's decoder is max_len long; the
  one-stack families give half of their max_len to the target."""
  if model_cfg.arch == 'encoder_decoder':
    target_len = target_len or max_len
    model_cfg.check_length(target_len, 'target')
    return Seq2SeqLM(decoder_start=model_cfg.decoder_start), target_len
  target_len = target_len or max_len // 2
  if model_cfg.arch == 'decoder':
    return (PrefixLM if bidirectional_prompt else CausalLM)(max_predictions=target_len), \
        target_len
  missing = [n for n in ('cls', 'sep', 'mask') if getattr(tokenizer, f'{n}_id') is None]
  if missing:
    raise ValueError(f'an encoder writes text UniLM-style with [CLS]/[SEP]/[MASK]; this '
                     f'vocabulary lacks {"/".join(missing)}')
  return MaskedSeq2Seq(max_predictions=max_len, segments=seq2seq_segments(model_cfg),
                       target_mask_prob=target_mask_prob), target_len
