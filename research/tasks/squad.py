"""Extractive question answering, SQuAD v1.1 (Rajpurkar et al. 2016; BERT Sec 4.2).

The question and a window of the context form one sequence (`[CLS] Q [SEP] C [SEP]`, or for a
decoder `start Q delim C extract`: the question comes first so that every context token can
see it through the causal mask). Contexts longer than the window are covered by overlapping
windows `doc_stride` tokens apart (google-research/bert run_squad.py). A start and an end
logit per token select the answer span; a window that does not contain the answer points
both at position 0. Answers are whole whitespace-separated words of the context, mapped back
through the word of each sub-token, and scored with the official EM/F1 (metrics.py).
"""
from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from research.tasks import readers
from research.tasks.encoding import InputStyle
from research.tasks.readers import Example


def read(path: str) -> list[Example]:
  """SQuAD v1.1 JSON: data[].paragraphs[].qas[]; texts = (question, context)."""
  with readers.open_text(path) as f:
    try:
      data = json.load(f)['data']
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise readers.TaskDataError(f'{path}: not SQuAD v1.1 JSON ({e}); expected '
                                  '{"data": [{"paragraphs": [{"context", "qas"}]}]}') from None
  examples = []
  for article in data:
    for paragraph in article['paragraphs']:
      for qa in paragraph['qas']:
        answers = qa.get('answers', [])
        examples.append(Example(
            texts=(qa['question'], paragraph['context']),
            answers=tuple(a['text'] for a in answers),
            answer_start=answers[0]['answer_start'] if answers else -1,
            label=0 if answers else None, uid=str(qa['id'])))
  return examples


def split_words(context: str) -> tuple[list[str], list[int]]:
  """Whitespace-separated words and, for each character, the index of its word."""
  words, char_to_word, new_word = [], [], True
  for ch in context:
    if ch.isspace():
      new_word = True
    else:
      if new_word:
        words.append(ch)
      else:
        words[-1] += ch
      new_word = False
    char_to_word.append(len(words) - 1)
  return words, char_to_word


def encode(examples: Sequence[Example], tokenizer, style: InputStyle, max_len: int, *,
           doc_stride: int, max_query_len: int):
  """-> (arrays [F, ...], feature_example [F], token_to_word [F, L], words per example).

  arrays: input_ids, segment_ids, attention_mask [F, L]; start_positions, end_positions [F];
  label_weights [F] (1 where the example has an answer). token_to_word maps each context
  position to its word (-1 elsewhere), so a predicted span maps back to text.
  """
  split = [split_words(e.texts[1]) for e in examples]
  questions = tokenizer.encode_batch([e.texts[0] for e in examples])
  word_tokens = iter(tokenizer.encode_batch([w for words, _ in split for w in words]))
  rows, feature_example, token_to_word = [], [], []
  for n, (e, (words, char_to_word)) in enumerate(zip(examples, split)):
    query = questions[n][:max_query_len]
    context, context_word = [], []  # sub-tokens of the context and the word of each
    for w in range(len(words)):
      pieces = next(word_tokens) or [tokenizer.unk_id]
      context += pieces
      context_word += [w] * len(pieces)
    answer = None
    if e.answer_start >= 0 and e.answers:
      first_word = char_to_word[e.answer_start]
      last_word = char_to_word[min(e.answer_start + len(e.answers[0]), len(char_to_word)) - 1]
      answer = (context_word.index(first_word),
                len(context_word) - 1 - context_word[::-1].index(last_word))
    window = max_len - len(query) - style.num_specials(2)
    if window < 1:
      raise ValueError(f'max_seq_len={max_len} leaves no room for context after a question of '
                       f'{len(query)} tokens; lower --config.task.max_query_len')
    start = 0
    while True:
      span = context[start:start + window]
      ids, types = style.pack([query, span])
      offset = 1 + len(query) + 1  # [CLS]/start, question, [SEP]/delim
      t2w = np.full(max_len, -1, np.int32)
      t2w[offset:offset + len(span)] = context_word[start:start + len(span)]
      positions = (0, 0)
      if answer and start <= answer[0] and answer[1] < start + len(span):
        positions = (answer[0] - start + offset, answer[1] - start + offset)
      rows.append((ids, types, positions, float(answer is not None)))
      feature_example.append(n)
      token_to_word.append(t2w)
      if start + window >= len(context):
        break
      start += doc_stride
  arrays = {
      'input_ids': np.full((len(rows), max_len), style.pad_id, np.int32),
      'segment_ids': np.zeros((len(rows), max_len), np.int32),
      'attention_mask': np.zeros((len(rows), max_len), np.int32),
      'start_positions': np.array([r[2][0] for r in rows], np.int32),
      'end_positions': np.array([r[2][1] for r in rows], np.int32),
      'label_weights': np.array([r[3] for r in rows], np.float32),
  }
  for i, (ids, types, _, _) in enumerate(rows):
    arrays['input_ids'][i, :len(ids)] = ids
    arrays['segment_ids'][i, :len(types)] = types
    arrays['attention_mask'][i, :len(ids)] = 1
  words = [words for words, _ in split]
  return arrays, np.array(feature_example, np.int32), np.stack(token_to_word), words


def best_spans(start_logits: np.ndarray, end_logits: np.ndarray, feature_example: np.ndarray,
               token_to_word: np.ndarray, words: Sequence[Sequence[str]], *,
               max_answer_len: int, top_k: int = 20) -> list[str]:
  """The highest-scoring (start + end logit) valid span of each example over its windows:
  both ends inside the context, start <= end, at most max_answer_len tokens (run_squad.py)."""
  best = [(-np.inf, '')] * len(words)
  for f in range(len(feature_example)):
    n, t2w = feature_example[f], token_to_word[f]
    starts = np.argsort(start_logits[f])[::-1][:top_k]
    ends = np.argsort(end_logits[f])[::-1][:top_k]
    for s in starts:
      for e in ends:
        if t2w[s] < 0 or t2w[e] < 0 or e < s or e - s + 1 > max_answer_len:
          continue
        score = start_logits[f, s] + end_logits[f, e]
        if score > best[n][0]:
          best[n] = (score, ' '.join(words[n][t2w[s]:t2w[e] + 1]))
  return [text for _, text in best]
