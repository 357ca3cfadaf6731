"""SentencePiece subword tokenizer shared by every model family.

BERT used a 30k WordPiece vocabulary (Devlin et al. 2019, Sec 3 "Input/Output
Representations") and GPT-2 a byte-level BPE (Radford et al. 2019, Sec 2.2);
here one SentencePiece model (Kudo & Richardson 2018) serves both, either
unigram-LM (Kudo 2018) or BPE (Sennrich et al. 2016), so that "BERT vs GPT"
comparisons differ in the objective and the mask, not in the vocabulary.

Special ids are fixed so that batches, heads and checkpoints agree on them:

    <pad>=0  <unk>=1  <s>=2  </s>=3  [CLS]=4  [SEP]=5  [MASK]=6

[CLS]/[SEP]/[MASK] are user-defined symbols, so the literal string "[MASK]" in
input text encodes to `mask_id` (handy for fill-in-the-blank prompts).
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

PAD, UNK, BOS, EOS = '<pad>', '<unk>', '<s>', '</s>'
CLS, SEP, MASK = '[CLS]', '[SEP]', '[MASK]'
SPECIAL_PIECES = (PAD, UNK, BOS, EOS, CLS, SEP, MASK)  # ids 0..6, in order

# SentencePiece's unigram EM splits its work per thread, so the trained model
# depends on the thread count: fix it (not os.cpu_count()) so every machine
# trains the same vocabulary from the same corpus.
_TRAIN_THREADS = 2
_TRAIN_SEED = 0


class Tokenizer:
  """A trained SentencePiece model with the fixed special ids above."""

  def __init__(self, processor: spm.SentencePieceProcessor):
    self._sp = processor
    for expected_id, piece in enumerate(SPECIAL_PIECES):
      if processor.piece_to_id(piece) != expected_id:
        raise ValueError(
            f'tokenizer has {piece!r} at id {processor.piece_to_id(piece)},'
            f' expected {expected_id}; retrain it with train_tokenizer().')
    # Ids that carry no text: dropped by decode().
    self._skip_ids = frozenset(
        (self.pad_id, self.bos_id, self.eos_id, self.cls_id, self.sep_id,
         self.mask_id))

  @classmethod
  def load(cls, path: str | os.PathLike) -> Tokenizer:
    return cls(spm.SentencePieceProcessor(model_file=str(path)))

  @property
  def model_type(self) -> str:
    """'unigram' or 'bpe', as stored in the model's trainer spec."""
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(self._sp.serialized_model_proto())
    return sentencepiece_model_pb2.TrainerSpec.ModelType.Name(
        proto.trainer_spec.model_type).lower()

  # Fixed by training (checked in __init__), so plain class constants.
  pad_id, unk_id, bos_id, eos_id, cls_id, sep_id, mask_id = range(7)

  @property
  def special_ids(self) -> tuple[int, ...]:
    """Ids that are never MLM targets nor random replacement tokens."""
    return tuple(range(len(SPECIAL_PIECES)))

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text, out_type=int)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    # SentencePiece encodes a list in C++ threads (num_threads=-1: all cores).
    return self._sp.encode(list(texts), out_type=int)

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids`, skipping pad/BOS/EOS/[CLS]/[SEP]/[MASK] and ids above the vocabulary
    (T5's sentinels, which a model reserves beyond the tokenizer's pieces)."""
    size = self.vocab_size
    return self._sp.decode(
        [int(i) for i in ids if int(i) not in self._skip_ids and int(i) < size])

  def id_to_piece(self, token_id: int) -> str:
    return self._sp.id_to_piece(int(token_id))


def train_tokenizer(texts: Iterable[str], path: str | os.PathLike,
                    vocab_size: int, model_type: str,
                    max_sentences: int) -> Tokenizer:
  """Trains a SentencePiece model on `texts` and writes `path` (+ `.vocab`).

  Both files are written to a temporary file beside their destination and
  renamed into place (.vocab first, .model last), so an interrupted run never
  leaves a half-written model that a later `load_or_train` would pick up.

  Args:
    texts: lines of training text (paragraphs or sentences).
    path: where the `.model` file goes; `path` with suffix `.vocab` gets the
      human-readable list of pieces and scores.
    vocab_size: exact number of pieces, specials included.
    model_type: 'unigram' or 'bpe'.
    max_sentences: at most this many lines (> 100) are used, sampled with a
      fixed seed when the corpus has more (bounds time and memory).

  Returns:
    The trained tokenizer.
  """
  if model_type not in ('unigram', 'bpe'):
    raise ValueError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}.")
  path = Path(path)
  # Used only when sampling max_sentences out of a larger corpus.
  spm.set_random_generator_seed(_TRAIN_SEED)
  # An in-memory model (not model_prefix): the proto then records no output
  # path, so the same corpus gives byte-identical files wherever it is saved.
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        pad_id=0, unk_id=1, bos_id=2, eos_id=3,
        user_defined_symbols=[CLS, SEP, MASK],
        # Keep every character seen in training (Austen has '£'); the 0.9995
        # default is tuned for CJK scripts and maps rare letters to <unk>.
        character_coverage=1.0,
        # Characters never seen in training become their UTF-8 bytes (256
        # <0xXX> pieces) instead of <unk>, so any text round-trips: a
        # generated “modern” quote must be writable by an Austen tokenizer.
        byte_fallback=True,
        input_sentence_size=max_sentences,
        shuffle_input_sentence=True,
        # Lines are paragraphs, some over the 4192-byte default, which
        # SentencePiece would silently skip.
        max_sentence_length=1 << 16,
        num_threads=_TRAIN_THREADS,
        minloglevel=2)
  except RuntimeError as e:
    too_small = re.search(r'smaller than required_chars\. \d+ vs (\d+)', str(e))
    if too_small:
      raise ValueError(
          f'a vocabulary of {vocab_size} pieces cannot hold the {too_small.group(1)} it'
          ' needs (the 7 specials, 256 byte pieces and every character of the corpus);'
          f' set --config.data.tokenizer.vocab_size >= {too_small.group(1)}.') from None
    if 'Vocabulary size too high' not in str(e):
      raise
    limit = re.search(r'<= (\d+)', str(e))
    hint = f' (at most {limit.group(1)})' if limit else ''
    raise ValueError(
        f'corpus too small for a vocabulary of {vocab_size} pieces; set a'
        f' smaller --config.data.tokenizer.vocab_size{hint}.') from None
  processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
  vocab = ''.join(
      f'{processor.id_to_piece(i)}\t{processor.get_score(i):g}\n'
      for i in range(processor.get_piece_size()))
  path.parent.mkdir(parents=True, exist_ok=True)
  _atomic_write(path.with_suffix('.vocab'), vocab.encode('utf-8'))
  _atomic_write(path, model.getvalue())
  return Tokenizer(processor)


def _atomic_write(path: Path, data: bytes) -> None:
  fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', dir=path.parent)
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def load_or_train(path: str | os.PathLike,
                  texts_fn: Callable[[], Iterable[str]], vocab_size: int,
                  model_type: str, max_sentences: int) -> Tokenizer:
  """Loads the model at `path`, or trains it on `texts_fn()` if absent.

  Reusing the saved model keeps token ids stable across resumed runs; a model
  that disagrees with the config is an error, not a silent retrain, because
  checkpoints trained with it would no longer match.
  """
  path = Path(path)
  if not path.exists():
    return train_tokenizer(texts_fn(), path, vocab_size, model_type,
                           max_sentences)
  tokenizer = Tokenizer.load(path)
  if tokenizer.vocab_size != vocab_size:
    raise ValueError(
        f'tokenizer {path} has vocab size {tokenizer.vocab_size} but'
        f' config.data.tokenizer.vocab_size is {vocab_size}; pass'
        f' --config.data.tokenizer.vocab_size={tokenizer.vocab_size} or'
        f' delete {path} to retrain.')
  if tokenizer.model_type != model_type:
    raise ValueError(
        f'tokenizer {path} is {tokenizer.model_type!r} but'
        f' config.data.tokenizer.model_type is {model_type!r}; pass'
        f' --config.data.tokenizer.model_type={tokenizer.model_type} or'
        f' delete {path} to retrain.')
  return tokenizer
