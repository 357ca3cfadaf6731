"""Autoregressive decoding over the KV cache: greedy, sampling and beam search.

A GPT produces text one token at a time, each conditioned on all earlier ones (GPT-1 Sec 3.1,
GPT-2 Sec 2). The prompt runs once ("prefill") and writes its keys and values into the cache;
every later step feeds only the newest token and attends over the cache, so a step costs one
token's forward pass instead of a pass over the whole prefix. An encoder-decoder (T5, BART)
prefills by encoding the source once and caching every decoder layer's cross-attention keys
and values, then decodes from its start token. Any model with `prefill_inputs` / `prefill` /
`decode_step` (models/decoder.py, encoder.py, encoder_decoder.py; models/prompting.py) is
served: the model says how it starts and steps, so nothing here knows GPT from T5.

The whole loop is one jitted `jax.lax.while_loop` (no Python per token). It is compiled once per
(batch size, prompt bucket, cache length, strategy): prompts are left-padded to a power-of-two
bucket with per-row position ids (so padding changes nothing), the cache length is rounded up,
and max_new_tokens, temperature, top_p, the stop tokens' values and the seed are traced values.

Strategies: greedy; sampling with temperature, top-k (Fan et al. 2018, Sec 5.4) and nucleus /
top-p (Holtzman et al. 2020, Sec 3.1); beam search ranked by the GNMT length penalty
(Wu et al. 2016, Eq. 14). Returned continuations stop before the first stop token.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research import loading, models
from research.models import attention


_MAX_STOP_IDS = 8


@dataclasses.dataclass(frozen=True)
class Decoding:
  """How each next token is chosen (the Python API's and the CLI's keyword arguments)."""
  max_new_tokens: int = 64
  temperature: float = 0.0  # 0: greedy argmax; > 0: sample from softmax(logits / temperature)
  top_k: int = 0  # > 0: sample among the k most probable tokens only
  top_p: float = 1.0  # < 1: sample from the smallest set of tokens whose probability reaches top_p
  num_beams: int = 1  # > 1: beam search (deterministic; the sampling fields must stay default)
  length_penalty: float = 0.6  # GNMT alpha (Wu et al. 2016 Eq. 14); 0 ranks beams by log-prob
  stop_ids: tuple[int, ...] = ()  # a row ends at the first of these (usually the EOS id)
  seed: int = 0
  # A decoder reads its prompt bidirectionally, as a prefix LM's prefix (objectives/prefix_lm.py).
  bidirectional_prompt: bool = False

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f'max_new_tokens={self.max_new_tokens}; generate at least 1 token')
    if self.temperature < 0:
      raise ValueError(f'temperature={self.temperature} must be >= 0 (0 = greedy)')
    if self.top_k < 0 or not 0 < self.top_p <= 1:
      raise ValueError(f'top_k={self.top_k} must be >= 0 and top_p={self.top_p} in (0, 1]')
    if len(self.stop_ids) > _MAX_STOP_IDS:
      raise ValueError(f'at most {_MAX_STOP_IDS} stop tokens, got {len(self.stop_ids)}')
    if self.num_beams < 1 or self.length_penalty < 0:
      raise ValueError(f'num_beams={self.num_beams} must be >= 1 and '
                       f'length_penalty={self.length_penalty} >= 0')
    if self.num_beams > 1 and (self.temperature or self.top_k or self.top_p < 1):
      raise ValueError('beam search is deterministic: drop temperature/top_k/top_p or use '
                       'num_beams=1 to sample')
    if self.temperature == 0 and (self.top_k or self.top_p < 1):
      raise ValueError('top_k/top_p filter a sampling distribution: set temperature > 0 '
                       '(1.0 samples from the model as is)')


@dataclasses.dataclass
class Generation:
  """Raw output of `decode`: token arrays before cutting at the stop tokens."""
  tokens: np.ndarray  # [batch, >= max_new_tokens] generated ids (past a row's end: filler)
  logits: np.ndarray | None = None  # [batch, max_new_tokens, vocab] the logits each token came from
  scores: np.ndarray | None = None  # [batch] beam search: length-normalised log-probability


def prefill(model, params, inputs: dict, cache_len: int, bidirectional_prompt: bool = False):
  """The model's prefill of `inputs` (see `_prepare`) into a fresh cache of cache_len slots:
  (logits of the next token [batch, vocab] float32, cache, lengths [batch]); a row's next
  token takes position `lengths` (its own count, not the slot)."""
  options = {'bidirectional_prompt': True} if bidirectional_prompt else {}
  return model.apply({'params': params}, **inputs, cache_len=cache_len, **options,
                     method='prefill')


def decode_step(model, params, tokens, positions, cache, slot):
  """One new token per row at cache slot `slot`: tokens, positions [batch] -> logits [batch, V]."""
  return model.apply({'params': params}, tokens, positions, cache, slot, method='decode_step')


def greedy_token(logits: jax.Array) -> jax.Array:
  """jnp.argmax(logits, -1) (the first index of the max) as two vectorised reductions.
  XLA:CPU lowers argmax to a scalar (value, index) reduction, several times slower over a
  GPT-2 vocabulary than these two (docs/performance.md). NaN rows, which have no max, give
  the last index instead of the NaN's."""
  vocab = logits.shape[-1]
  is_max = logits == logits.max(-1, keepdims=True)  # [batch, vocab]
  index = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  return jnp.minimum(jnp.min(jnp.where(is_max, index, vocab), -1), vocab - 1)


def choose(logits, rng, temperature, top_p, *, greedy: bool, top_k: int, nucleus: bool):
  """The next token of each row from logits [batch, vocab] -> [batch]."""
  if greedy:
    return greedy_token(logits)
  logits = logits / temperature
  if top_k:
    best = jax.lax.top_k(logits, top_k)[0]  # [batch, k], descending
    logits = jnp.where(logits < best[:, -1:], -jnp.inf, logits)
  if nucleus:
    # The top-k values are already sorted; otherwise sort the whole vocabulary.
    ranked = best if top_k else jnp.sort(logits, -1)[:, ::-1]  # [batch, candidates] descending
    probs = jax.nn.softmax(ranked, -1)
    mass_before = jnp.cumsum(probs, -1) - probs  # the most probable token always stays
    cutoff = jnp.min(jnp.where(mass_before < top_p, ranked, jnp.inf), -1, keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return jax.random.categorical(rng, logits)


@functools.partial(jax.jit, static_argnames=('model', 'cache_len', 'prompt_len', 'greedy',
                                             'top_k', 'nucleus', 'return_logits',
                                             'bidirectional_prompt'))
def _sample_loop(model, params, inputs, max_new, stop_ids, temperature, top_p, seed, *,
                 cache_len, prompt_len, greedy, top_k, nucleus, return_logits,
                 bidirectional_prompt=False):
  """Greedy or sampled decoding; returns (tokens [batch, budget], logits or None).
  prompt_len: cache slots the prefill fills (the prompt bucket; 1 for an encoder-decoder)."""
  batch = jax.tree.leaves(inputs)[0].shape[0]
  budget = cache_len - prompt_len
  rng = jax.random.key(seed)
  pick = functools.partial(choose, temperature=temperature, top_p=top_p, greedy=greedy,
                           top_k=top_k, nucleus=nucleus)
  logits, cache, lengths = prefill(model, params, inputs, cache_len, bidirectional_prompt)
  token = pick(logits, jax.random.fold_in(rng, 0))
  tokens = jnp.zeros((batch, budget), jnp.int32).at[:, 0].set(token)
  seen = None
  if return_logits:
    seen = jnp.zeros((batch, budget, logits.shape[-1]), jnp.float32).at[:, 0].set(logits)

  def running(carry):
    t, _, _, done, _, _ = carry
    return (t < max_new) & ~jnp.all(done)

  def step(carry):
    t, token, cache, done, tokens, seen = carry
    # Token t-1 sits at slot prompt_len + t - 1; rows that already stopped keep computing
    # (their outputs are cut on the host) so the batch stays rectangular.
    logits, cache = decode_step(model, params, token, lengths + t - 1, cache, prompt_len + t - 1)
    token = pick(logits, jax.random.fold_in(rng, t))
    tokens = jax.lax.dynamic_update_index_in_dim(tokens, token, t, axis=1)
    if return_logits:
      seen = jax.lax.dynamic_update_index_in_dim(seen, logits, t, axis=1)
    return t + 1, token, cache, done | jnp.isin(token, stop_ids), tokens, seen

  carry = (1, token, cache, jnp.isin(token, stop_ids), tokens, seen)
  _, _, _, _, tokens, seen = jax.lax.while_loop(running, step, carry)
  return tokens, seen


def gnmt_length_penalty(length, alpha):
  """Wu et al. 2016, Eq. 14: lp(Y) = (5 + |Y|)^alpha / (5 + 1)^alpha."""
  return ((5.0 + length) / 6.0) ** alpha


@functools.partial(jax.jit, static_argnames=('model', 'cache_len', 'prompt_len', 'num_beams',
                                             'bidirectional_prompt'))
def _beam_loop(model, params, inputs, max_new, stop_ids, alpha, *, cache_len, prompt_len,
               num_beams, bidirectional_prompt=False):
  """Beam search (Sutskever et al. 2014; Wu et al. 2016 Sec 7) with K = num_beams beams.

  Keeps K live hypotheses and the K best finished ones per prompt. Each step takes the 2K
  best extensions (so at least K did not stop), moves those that stopped into the finished
  set scored by log P / lp, and continues with the K most probable others. It ends early once
  no live beam can beat the worst finished one. Returns (tokens [batch, budget], scores [batch]).
  """
  batch = jax.tree.leaves(inputs)[0].shape[0]
  k = num_beams
  budget = cache_len - prompt_len
  logits, cache, lengths = prefill(model, params, inputs, cache_len, bidirectional_prompt)
  vocab = logits.shape[-1]
  # Every beam of a prompt starts from the same prefix: copy the prompt's cache K times.
  beams_of = lambda x, axis=0: jnp.repeat(x, k, axis=axis)  # [batch, ...] -> [batch * k, ...]
  lengths, logits = beams_of(lengths), beams_of(logits)
  # A scanned stack's cache holds its rows on axis 1, after the layers.
  cache_axes = attention.cache_batch_axes(model.cfg, cache)
  cache = jax.tree.map(beams_of, cache, cache_axes)
  rows = jnp.arange(batch)[:, None] * k  # first cache row of each prompt

  def extend(t, logits, alive, alive_logp, finished, finished_score):
    logp = jax.nn.log_softmax(logits).reshape(batch, k, vocab) + alive_logp[..., None]
    top_logp, top = jax.lax.top_k(logp.reshape(batch, k * vocab), 2 * k)  # [batch, 2k]
    parent, token = top // vocab, top % vocab
    seqs = jnp.take_along_axis(alive, parent[..., None], axis=1)  # [batch, 2k, budget]
    seqs = jax.lax.dynamic_update_index_in_dim(seqs, token, t, axis=2)
    stopped = jnp.isin(token, stop_ids)
    candidates = jnp.where(stopped, top_logp / gnmt_length_penalty(t + 1, alpha), -jnp.inf)
    finished_score, keep = jax.lax.top_k(jnp.concatenate([finished_score, candidates], 1), k)
    finished = jnp.take_along_axis(jnp.concatenate([finished, seqs], 1), keep[..., None], 1)
    alive_logp, keep = jax.lax.top_k(jnp.where(stopped, -jnp.inf, top_logp), k)  # [batch, k]
    alive = jnp.take_along_axis(seqs, keep[..., None], axis=1)  # [batch, k, budget]
    parent, token = (jnp.take_along_axis(x, keep, 1) for x in (parent, token))
    return alive, alive_logp, finished, finished_score, (rows + parent).reshape(-1), token

  def running(carry):
    t, _, alive_logp, _, finished_score, _, _ = carry
    # alpha >= 0 and log-probabilities only fall, so a live beam scores at most this:
    best_reachable = alive_logp[:, 0] / gnmt_length_penalty(max_new, alpha)
    return (t < max_new) & ~jnp.all(finished_score[:, -1] >= best_reachable)

  def step(carry):
    t, alive, alive_logp, finished, finished_score, token, cache = carry
    logits, cache = decode_step(model, params, token.reshape(-1), lengths + t - 1, cache,
                                prompt_len + t - 1)
    alive, alive_logp, finished, finished_score, parents, token = extend(
        t, logits, alive, alive_logp, finished, finished_score)
    # Each beam continues its parent's cache.
    cache = jax.tree.map(lambda x, axis: jnp.take(x, parents, axis=axis), cache, cache_axes)
    return t + 1, alive, alive_logp, finished, finished_score, token, cache

  # Only beam 0 is live at first, so the K identical copies do not yield K identical beams.
  alive_logp = jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf) * jnp.ones((batch, 1))
  alive, alive_logp, finished, finished_score, _, token = extend(
      0, logits, jnp.zeros((batch, k, budget), jnp.int32), alive_logp,
      jnp.zeros((batch, k, budget), jnp.int32), jnp.full((batch, k), -jnp.inf))
  t, alive, alive_logp, finished, finished_score, _, _ = jax.lax.while_loop(
      running, step, (1, alive, alive_logp, finished, finished_score, token, cache))
  # Beams cut by max_new_tokens compete with those that stopped (all at length t).
  scores = jnp.concatenate([finished_score, alive_logp / gnmt_length_penalty(t, alpha)], 1)
  best = jnp.argmax(scores, 1)  # [batch]
  seqs = jnp.concatenate([finished, alive], 1)[jnp.arange(batch), best]  # [batch, budget]
  return seqs, scores[jnp.arange(batch), best]


def _prepare(model, prompts: Sequence[Sequence[int]], decoding: Decoding, pad_id: int,
             start_id: int | None):
  """(prefill inputs, stop ids, prompt_len, cache_len) of token-id prompts, padded and
  bucketed as the model reads them (its `prefill_inputs`, models/prompting.py)."""
  if not prompts or min(map(len, prompts)) < 1:
    raise ValueError('empty prompt: give every row at least one token (the text helpers start '
                     'each prompt with the end-of-text token)')
  inputs, prompt_len, cache_len = model.prefill_inputs(prompts, decoding.max_new_tokens, pad_id,
                                                       start_id)
  # A fixed-size array (-1 matches no token), so adding an EOS does not recompile the loop.
  stop_ids = np.full(_MAX_STOP_IDS, -1, np.int32)
  stop_ids[:len(decoding.stop_ids)] = decoding.stop_ids
  return inputs, stop_ids, prompt_len, cache_len


def beam_search(model, params, prompts: Sequence[Sequence[int]], decoding: Decoding, *,
                pad_id: int = 0, start_id: int | None = None) -> Generation:
  """Beam search with `decoding.num_beams` beams (1 is allowed: it equals greedy)."""
  inputs, stop_ids, prompt_len, cache_len = _prepare(model, prompts, decoding, pad_id, start_id)
  tokens, scores = _beam_loop(model, params, inputs, decoding.max_new_tokens, stop_ids,
                              decoding.length_penalty, cache_len=cache_len,
                              prompt_len=prompt_len, num_beams=decoding.num_beams,
                              bidirectional_prompt=decoding.bidirectional_prompt)
  return Generation(np.asarray(tokens), scores=np.asarray(scores))


def decode(model, params, prompts: Sequence[Sequence[int]], decoding: Decoding, *,
           pad_id: int = 0, start_id: int | None = None,
           return_logits: bool = False) -> Generation:
  """Runs the jitted loop on a batch of token-id prompts (or sources) of any lengths."""
  if decoding.num_beams > 1:
    if return_logits:
      raise ValueError('return_logits is for greedy/sampled decoding, not beam search')
    return beam_search(model, params, prompts, decoding, pad_id=pad_id, start_id=start_id)
  inputs, stop_ids, prompt_len, cache_len = _prepare(model, prompts, decoding, pad_id, start_id)
  tokens, logits = _sample_loop(
      model, params, inputs, decoding.max_new_tokens, stop_ids,
      decoding.temperature, decoding.top_p, decoding.seed, cache_len=cache_len,
      prompt_len=prompt_len, greedy=decoding.temperature == 0, top_k=decoding.top_k,
      nucleus=decoding.top_p < 1, return_logits=return_logits,
      bidirectional_prompt=decoding.bidirectional_prompt)
  logits = None if logits is None else np.asarray(logits)[:, :decoding.max_new_tokens]
  return Generation(np.asarray(tokens), logits=logits)


def cut_at_stop(tokens: Sequence[int], stop_ids: Sequence[int], max_new: int) -> list[int]:
  out = []
  for token in list(tokens)[:max_new]:
    if token in stop_ids:
      break
    out.append(int(token))
  return out


def generate(model, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int = 64,
             eos_id: int | None = None, stop_ids: Sequence[int] = (), pad_id: int = 0,
             start_id: int | None = None, **decoding: Any) -> list[list[int]]:
  """Continues each token-id prompt (a decoder) or writes the target of each source (an
  encoder-decoder, whose decoder starts at `start_id`); returns the new ids of each, without
  the stop token.

  `decoding`: temperature, top_k, top_p, num_beams, length_penalty, seed (see `Decoding`).
  """
  stops = tuple(stop_ids) + (() if eos_id is None else (eos_id,))
  config = Decoding(max_new_tokens=max_new_tokens, stop_ids=stops, **decoding)
  out = decode(model, params, prompts, config, pad_id=pad_id, start_id=start_id)
  return [cut_at_stop(row, stops, max_new_tokens) for row in out.tokens]


def generate_text(model, params, tokenizer, prompts: Sequence[str], **decoding: Any) -> list[str]:
  """Text continuations of text prompts (a decoder), or target texts of source texts (an
  encoder-decoder, an encoder under the seq2seq mask); each model says how it reads a text
  and where its output ends (its `text_prompt`, models/prompting.py).
  """
  framed = [model.text_prompt(tokenizer, p) for p in prompts]
  first = framed[0]
  new = generate(model, params, [f.ids for f in framed], eos_id=first.stop_id,
                 pad_id=tokenizer.pad_id, start_id=first.start_id, **decoding)
  return [continuation(tokenizer, f.context, n) for f, n in zip(framed, new)]


def continuation(tokenizer, prompt: Sequence[int], new: Sequence[int]) -> str:
  """The text `new` adds after `prompt`, such that prompt text + it reads right: decoding `new`
  alone would lose the space a subword tokenizer keeps inside its first piece."""
  whole, before = tokenizer.decode([*prompt, *new]), tokenizer.decode(prompt)
  return whole[len(before):] if whole.startswith(before) else tokenizer.decode(new)


def complete(model, params, tokenizer, prompt: str, max_new_tokens: int = 64,
             **decoding: Any) -> str:
  """The continuation of one text prompt (greedy unless temperature > 0)."""
  return generate_text(model, params, tokenizer, [prompt], max_new_tokens=max_new_tokens,
                       **decoding)[0]


def generate_from_workdir(workdir: str, prompts: Sequence[str], **decoding: Any) -> list[str]:
  cfg, params, tokenizer, _ = loading.load_params(workdir)
  return generate_text(models.build(cfg), params, tokenizer, prompts, **decoding)


def run_generate(workdir: str, prompts: Sequence[str] | None, prompts_file: str | None,
                 **decoding: Any) -> list[str]:
  """`--mode=generate`: prompts (decoders) or sources (encoder-decoders) from --prompt and/or
  --prompts_file (one per line), of the model in `workdir` (or an HF model directory)."""
  prompts = list(prompts or [])
  if prompts_file:
    if not os.path.exists(prompts_file):
      raise FileNotFoundError(f'--prompts_file {prompts_file} does not exist')
    with open(prompts_file, encoding='utf-8') as f:
      prompts += [line.rstrip('\n') for line in f if line.strip()]
  if not prompts:
    raise ValueError('nothing to generate from: pass --prompt=TEXT or --prompts_file=FILE')
  return generate_from_workdir(workdir, prompts, **decoding)
