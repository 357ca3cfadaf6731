"""Input transformations: task examples -> fixed-length token arrays for an encoder or a decoder.

BERT (Devlin et al. 2019, Sec 3 "Input/Output Representations", Fig. 4): `[CLS] A [SEP] B [SEP]`
with segment ids 0 for `[CLS] A [SEP]` and 1 for `B [SEP]`; a classifier reads the [CLS] state.

GPT-1 (Radford et al. 2018, Sec 3.3, Fig. 1): `start A delim B extract`; a decoder's state at
the extract token has seen the whole input, so the classifier reads the *last* real token.
Start/delim/extract are our tokenizer's `<s>`, `[SEP]` and `[CLS]`: a causal LM pretrained on
plain text never saw them, so their embeddings are learned in fine-tuning, as GPT-1's were.
Similarity pairs (no inherent order) are read in both orders and the two final states added
(GPT-1 Sec 3.3 "Similarity"); multiple choice reads `start context delim answer_k extract` per
choice (Sec 3.3 "Question Answering"), as BERT reads `[CLS] context [SEP] choice [SEP]` (Sec 4.4).

Arrays (numpy, right-padded with pad_id; N = features):
  sequence tasks (classification, regression, multiple choice):
    input_ids, segment_ids, attention_mask int32 [N, V, L]: V = 1, 2 (both orders) or choices
    labels int32 [N] (float32 for regression), label_weights float32 [N]
    choice_mask float32 [N, V] (1 for real choices)
  tagging: input_ids, segment_ids, attention_mask, labels int32 [N, L], label_weights [N, L]
    (1 only at the first sub-token of each word, BERT Sec 5.3).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from research.tasks.readers import Example

STYLES = ('bert', 'gpt')


@dataclasses.dataclass(frozen=True)
class InputStyle:
  """How segments become one token sequence (the tokenizer supplies the special ids)."""
  name: str  # 'bert' | 'gpt'
  pad_id: int
  cls_id: int
  sep_id: int
  bos_id: int

  @classmethod
  def create(cls, name: str, tokenizer) -> 'InputStyle':
    if name not in STYLES:
      raise ValueError(f'unknown input style {name!r}; use one of {STYLES}')
    cls_id, sep_id, bos_id = tokenizer.cls_id, tokenizer.sep_id, tokenizer.bos_id
    if name == 'gpt':
      # A vocabulary without [CLS]/[SEP] (GPT-2's) marks start, delimiter and extract with its
      # end-of-text token, as GPT-2 fine-tuning recipes do.
      cls_id = tokenizer.eos_id if cls_id is None else cls_id
      sep_id = tokenizer.eos_id if sep_id is None else sep_id
    needed = {'cls': cls_id, 'sep': sep_id, **({'bos': bos_id} if name == 'gpt' else {})}
    missing = [token for token, token_id in needed.items() if token_id is None]
    if missing:
      raise ValueError(f'input style {name!r} needs {"/".join(missing)} tokens, which this '
                       'vocabulary lacks; use --config.finetune.input_style='
                       f'{"gpt" if name == "bert" else "bert"}')
    return cls(name, tokenizer.pad_id, cls_id, sep_id, bos_id)

  @property
  def reads_pairs_both_orders(self) -> bool:
    """GPT-1 reads an unordered pair both ways (Sec 3.3 "Similarity"): its causal reading
    of `A delim B` would otherwise impose an order; BERT's bidirectional one does not."""
    return self.name == 'gpt'

  def num_specials(self, num_segments: int) -> int:
    return num_segments + 1  # BERT: [CLS] + one [SEP] each; GPT: start + delims + extract

  def pack(self, segments: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
    """Token ids and segment ids of already-truncated segments."""
    if self.name == 'bert':
      ids, types = [self.cls_id], [0]
      for k, seg in enumerate(segments):
        ids += [*seg, self.sep_id]
        types += [min(k, 1)] * (len(seg) + 1)
      return ids, types
    ids = [self.bos_id]
    for k, seg in enumerate(segments):
      ids += ([self.sep_id] if k else []) + list(seg)
    ids.append(self.cls_id)
    return ids, [0] * len(ids)


def truncate(segments: Sequence[Sequence[int]], budget: int) -> list[list[int]]:
  """Drops tokens from the end of the longest segment until all fit (google-research/bert
  `_truncate_seq_pair`: a shorter segment keeps more of its tokens than proportional cuts)."""
  segments = [list(s) for s in segments]
  while sum(map(len, segments)) > budget:
    longest = max(range(len(segments)), key=lambda k: len(segments[k]))
    segments[longest].pop()
  return segments


def _token_lists(tokenizer, texts: Sequence[str]) -> list[list[int]]:
  return tokenizer.encode_batch(list(texts)) if texts else []


def encode_sequences(examples: Sequence[Example], tokenizer, style: InputStyle, max_len: int, *,
                     task_type: str, labels: Sequence[str] = (),
                     both_orders: bool = False) -> dict[str, np.ndarray]:
  """Classification / regression / multiple-choice examples -> arrays [N, V, L] (see module doc).

  Unlabelled examples, and labels outside `labels` (a class absent from train), get weight 0.
  """
  label_index = {name: i for i, name in enumerate(labels)}
  multiple_choice = task_type == 'multiple_choice'
  num_views = (max((len(e.choices) for e in examples), default=1) if multiple_choice
               else 2 if both_orders else 1)
  # Tokenise every distinct string once, in one batch.
  strings = sorted({s for e in examples for s in (*e.texts, *e.choices)})
  ids_of = dict(zip(strings, _token_lists(tokenizer, strings)))
  shape = (len(examples), num_views, max_len)
  input_ids = np.full(shape, style.pad_id, np.int32)
  segment_ids, attention_mask = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
  choice_mask = np.zeros(shape[:2], np.float32)
  target = np.zeros(len(examples), np.float32 if task_type == 'regression' else np.int32)
  weight = np.zeros(len(examples), np.float32)
  for n, e in enumerate(examples):
    segments = [ids_of[t] for t in e.texts]
    if multiple_choice:
      views = [[*segments, ids_of[c]] if segments else [ids_of[c]] for c in e.choices]
    elif both_orders and len(segments) == 2:
      views = [segments, segments[::-1]]
    else:
      views = [segments] * num_views  # a single sentence reads the same both ways
    for v, segs in enumerate(views):
      ids, types = style.pack(truncate(segs, max_len - style.num_specials(len(segs))))
      input_ids[n, v, :len(ids)] = ids
      segment_ids[n, v, :len(types)] = types
      attention_mask[n, v, :len(ids)] = 1
      choice_mask[n, v] = 1
    if e.label is None:
      continue
    if task_type == 'regression':
      target[n], weight[n] = float(e.label), 1.0
    elif multiple_choice:
      target[n], weight[n] = int(e.label), 1.0
    elif str(e.label) in label_index:
      target[n], weight[n] = label_index[str(e.label)], 1.0
  return {'input_ids': input_ids, 'segment_ids': segment_ids, 'attention_mask': attention_mask,
          'choice_mask': choice_mask, 'labels': target, 'label_weights': weight}


def encode_tagging(examples: Sequence[Example], tokenizer, style: InputStyle, max_len: int, *,
                   labels: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """Tagging examples -> (arrays [N, L], first_token [N, W]).

  Each word is tokenised alone (SentencePiece and WordPiece never merge across whitespace,
  so this equals tokenising the sentence) and its tag is predicted at its first sub-token;
  the other sub-tokens carry weight 0 (BERT Sec 5.3). first_token[n, w] is the position of
  word w's first sub-token, -1 for words cut off by max_len (scored as wrong) and padding.
  """
  label_index = {name: i for i, name in enumerate(labels)}
  words = [w for e in examples for w in e.words]
  word_ids = iter(_token_lists(tokenizer, words))
  max_words = max((len(e.words) for e in examples), default=0)
  shape = (len(examples), max_len)
  input_ids = np.full(shape, style.pad_id, np.int32)
  segment_ids, attention_mask = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
  target, weight = np.zeros(shape, np.int32), np.zeros(shape, np.float32)
  first_token = np.full((len(examples), max_words), -1, np.int32)
  budget = max_len - style.num_specials(1)
  for n, e in enumerate(examples):
    tokens, starts = [], []
    for w in e.words:
      # An empty tokenisation (a word the tokenizer drops) still needs a position.
      pieces = next(word_ids) or [tokenizer.unk_id]
      starts.append(len(tokens))
      tokens += pieces
    ids, _ = style.pack([tokens[:budget]])
    input_ids[n, :len(ids)] = ids
    attention_mask[n, :len(ids)] = 1
    for w, start in enumerate(starts):
      if start >= budget:
        break
      position = start + 1  # after [CLS] / start
      first_token[n, w] = position
      if e.tags is not None and e.tags[w] in label_index:
        target[n, position], weight[n, position] = label_index[e.tags[w]], 1.0
  arrays = {'input_ids': input_ids, 'segment_ids': segment_ids, 'attention_mask': attention_mask,
            'labels': target, 'label_weights': weight}
  return arrays, first_token
