"""How a model starts a generation: prompts -> the padded inputs of its `prefill`.

Each decoder-bearing assembly (decoder.py, encoder.py, encoder_decoder.py) answers
`prefill_inputs` (token-id prompts -> its prefill's arguments, the cache slots the prefill
fills and the cache length) and `text_prompt` (a text -> the ids it reads, the token its
first step is fed, the token that ends its output, and what the output continues), so that
generate.py runs one loop for every family. A decoder continues its prompt (GPT-2 Sec 2); an
encoder-decoder reads it as the source and writes a target from its start token (T5 Sec 2.1,
BART Sec 2.1); an encoder predicts each next token at a [MASK] after the text so far (UniLM
Sec 2.4). The helpers here choose few distinct shapes, so the jitted loop compiles rarely.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

_MIN_PROMPT_BUCKET = 16
_NEW_TOKENS_BUCKET = 32  # the cache holds the prompt bucket + max_new_tokens rounded up to this


class TextPrompt(NamedTuple):
  ids: list[int]  # what the model reads
  start_id: int | None  # the token fed first (a decoder start token, a [MASK]); None: none
  stop_id: int  # the token that ends the output
  context: list[int]  # the ids the output continues (empty: the output stands alone)


def plan_lengths(longest_prompt: int, max_new_tokens: int, max_len: int) -> tuple[int, int]:
  """(prompt bucket, cache length): few distinct shapes, so few compilations."""
  if longest_prompt + max_new_tokens > max_len:
    raise ValueError(f'prompt of {longest_prompt} tokens + max_new_tokens={max_new_tokens} '
                     f"exceeds the model's {max_len} positions; shorten the prompt or lower "
                     'max_new_tokens')
  bucket = max(_MIN_PROMPT_BUCKET, 1 << (longest_prompt - 1).bit_length())
  prompt_len = min(bucket, max_len - max_new_tokens)
  new = -(-max_new_tokens // _NEW_TOKENS_BUCKET) * _NEW_TOKENS_BUCKET
  return prompt_len, min(prompt_len + new, max_len)


def left_pad(prompts: Sequence[Sequence[int]], length: int, pad_id: int):
  """Right-aligns prompts so every row's last prompt token sits in the same (last) slot.

  Returns ids and attention mask, int32 [batch, length]."""
  ids = np.full((len(prompts), length), pad_id, np.int32)
  mask = np.zeros((len(prompts), length), np.int32)
  for row, prompt in enumerate(prompts):
    ids[row, length - len(prompt):] = prompt
    mask[row, length - len(prompt):] = 1
  return ids, mask


def right_pad(sources: Sequence[Sequence[int]], length: int, pad_id: int):
  """Encoder inputs: ids and attention mask, int32 [batch, length]."""
  ids = np.full((len(sources), length), pad_id, np.int32)
  mask = np.zeros((len(sources), length), np.int32)
  for row, source in enumerate(sources):
    ids[row, :len(source)] = source
    mask[row, :len(source)] = 1
  return ids, mask


def left_padded_inputs(prompts, max_new_tokens: int, max_len: int, pad_id: int):
  """({ids, mask}, prompt_len, cache_len) of prompts a stack continues (decoder, encoder)."""
  prompt_len, cache_len = plan_lengths(max(map(len, prompts)), max_new_tokens, max_len)
  ids, mask = left_pad(prompts, prompt_len, pad_id)
  return {'ids': ids, 'mask': mask}, prompt_len, cache_len
