"""Imported vocabularies (BERT's WordPiece, GPT-2's and BART's byte-level BPE, T5's SentencePiece
unigram model) behind our Tokenizer interface.

research/data/tokenizer.py's SentencePiece `Tokenizer` is what the pipelines, fine-tuning and
generation call; `HFTokenizer` offers the same attributes and methods over a `tokenizers`
pipeline, so an imported checkpoint runs with the vocabulary it was trained with. Special ids
the vocabulary lacks are None (GPT-2 has no [CLS]/[SEP]/[MASK]; BERT has no BOS/EOS; T5 has
no BOS/CLS/SEP/MASK, its 100 `<extra_id_N>` sentinels being ordinary special tokens).

WordPiece: Wu et al. 2016 Sec 4.1 as used by BERT (Sec 3, 30k vocabulary), lower-casing and
punctuation splitting first. Byte-level BPE: GPT-2 Sec 2.2 (BPE over bytes, so nothing is
ever unknown); BART reuses GPT-2's (Lewis et al. 2020, Sec 2.1). SentencePiece unigram: Kudo 2018
(T5, Raffel et al. 2020 Sec 2.2: 32,000 pieces plus 100 sentinels appended in reverse, so
<extra_id_0> is the last id).
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers

from research.convert.hf_checkpoint import ConversionError

TOKENIZER_FILE = 'tokenizer.json'
TOKENIZER_CONFIG_FILE = 'tokenizer_config.json'
SPECIALS_FILE = 'special_tokens.json'  # which token is pad/unk/bos/eos/cls/sep/mask (ours)
BERT_SPECIALS = dict(pad='[PAD]', unk='[UNK]', cls='[CLS]', sep='[SEP]', mask='[MASK]')
GPT2_END_OF_TEXT = '<|endoftext|>'
GPT2_SPECIALS = dict(bos=GPT2_END_OF_TEXT, eos=GPT2_END_OF_TEXT,
                     # GPT-2 has no padding token; padded slots are masked out, so the
                     # end-of-text id serves (as in transformers' generate).
                     pad=GPT2_END_OF_TEXT)
# BART (fairseq's RoBERTa dictionary): <s> starts and </s> ends every sequence, and they are
# also its classification / separator tokens, as in transformers' BartTokenizer.
BART_SPECIALS = dict(bos='<s>', pad='<pad>', eos='</s>', unk='<unk>', mask='<mask>', cls='<s>',
                     sep='</s>')
T5_SPECIALS = dict(pad='<pad>', eos='</s>', unk='<unk>')
SPIECE_FILE = 'spiece.model'


class HFTokenizer:
  """A `tokenizers.Tokenizer` with named special ids; encode() adds no special tokens.

  The file's post-processor (BERT's `[CLS] A [SEP]` template) is kept for export but never
  applied: encode() passes add_special_tokens=False, since InputStyle.pack adds them once.
  """

  def __init__(self, tokenizer: tokenizers.Tokenizer, **specials: str | None):
    """specials: pad/unk/bos/eos/cls/sep/mask -> the token's string (or None: absent)."""
    # Published tokenizer.json files often pad and truncate every encoding to a fixed length
    # (e.g. 128 for sentence-transformers); the task encoder owns packing and truncation, and
    # encodes one word or one segment at a time, so both are switched off here.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    self._tok = tokenizer
    self._specials = {k: v for k, v in specials.items() if v is not None}

    def id_of(name: str) -> int | None:
      token = self._specials.get(name)
      if token is not None and tokenizer.token_to_id(token) is None:
        raise ConversionError(f'the vocabulary has no {token!r} token ({name}); is it the '
                              "checkpoint's own vocabulary?")
      return None if token is None else tokenizer.token_to_id(token)

    self.pad_id, self.unk_id, self.bos_id = id_of('pad'), id_of('unk'), id_of('bos')
    self.eos_id, self.cls_id = id_of('eos'), id_of('cls')
    self.sep_id, self.mask_id = id_of('sep'), id_of('mask')
    # Registered as special: kept whole in input text ("[MASK]"), dropped by decode().
    tokenizer.add_special_tokens(sorted(set(self._specials.values())))

  @classmethod
  def load_wordpiece(cls, directory: str) -> 'HFTokenizer':
    """BERT: tokenizer.json if present, else vocab.txt (+ tokenizer_config.json's do_lower_case)."""
    json_path = os.path.join(directory, TOKENIZER_FILE)
    if os.path.exists(json_path):
      return cls(tokenizers.Tokenizer.from_file(json_path), **BERT_SPECIALS)
    vocab_path = os.path.join(directory, 'vocab.txt')
    if not os.path.exists(vocab_path):
      raise ConversionError(f'{directory} has neither {TOKENIZER_FILE} nor vocab.txt; copy the '
                            "checkpoint's vocabulary beside its config.json")
    options = _tokenizer_config(directory)
    tok = tokenizers.Tokenizer(models.WordPiece(models.WordPiece.read_file(vocab_path),
                                                unk_token=BERT_SPECIALS['unk']))
    tok.normalizer = normalizers.BertNormalizer(
        lowercase=options.get('do_lower_case', True), strip_accents=options.get('strip_accents'),
        handle_chinese_chars=options.get('tokenize_chinese_chars', True))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    return cls(tok, **BERT_SPECIALS)

  @classmethod
  def load_byte_level_bpe(cls, directory: str,
                          specials: dict[str, str] | None = None) -> 'HFTokenizer':
    """GPT-2 (default `specials`) or BART (BART_SPECIALS): tokenizer.json if present, else
    vocab.json + merges.txt."""
    json_path = os.path.join(directory, TOKENIZER_FILE)
    specials = GPT2_SPECIALS if specials is None else specials
    if os.path.exists(json_path):
      return cls(tokenizers.Tokenizer.from_file(json_path), **specials)
    vocab, merges = (os.path.join(directory, f) for f in ('vocab.json', 'merges.txt'))
    missing = [os.path.basename(p) for p in (vocab, merges) if not os.path.exists(p)]
    if missing:
      raise ConversionError(f'{directory} has no {TOKENIZER_FILE} and lacks '
                            f'{" and ".join(missing)}; copy the checkpoint\'s vocabulary beside '
                            'its config.json')
    tok = tokenizers.Tokenizer(models.BPE(*models.BPE.read_file(vocab, merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return cls(tok, **specials)

  @classmethod
  def load_sentencepiece(cls, directory: str) -> 'HFTokenizer':
    """T5: tokenizer.json if present, else spiece.model (the SentencePiece model) with
    tokenizer_config.json's `extra_ids` sentinels (default 100) appended in reverse order,
    <extra_id_0> last (T5Tokenizer's layout)."""
    json_path = os.path.join(directory, TOKENIZER_FILE)
    if os.path.exists(json_path):
      return cls(tokenizers.Tokenizer.from_file(json_path), **T5_SPECIALS)
    spiece_path = os.path.join(directory, SPIECE_FILE)
    if not os.path.exists(spiece_path):
      raise ConversionError(f'{directory} has neither {TOKENIZER_FILE} nor {SPIECE_FILE}; copy '
                            "the checkpoint's vocabulary beside its config.json")
    extra_ids = _tokenizer_config(directory).get('extra_ids', 100)
    sentinels = [f'<extra_id_{i}>' for i in reversed(range(extra_ids))]
    tok = _unigram_from_sentencepiece(spiece_path, sentinels)
    tokenizer = cls(tok, **T5_SPECIALS)
    tok.add_special_tokens(sentinels)  # kept whole in input text, dropped by decode()
    return tokenizer

  def save(self, directory: str):
    """Writes the vocabulary in its original layout (vocab.txt, or vocab.json + merges.txt)
    plus tokenizer.json, which `transformers` reads directly, and which token plays which
    special role (`load_saved` reads it back)."""
    os.makedirs(directory, exist_ok=True)
    self._tok.model.save(directory)
    self._tok.save(os.path.join(directory, TOKENIZER_FILE))
    with open(os.path.join(directory, SPECIALS_FILE), 'w', encoding='utf-8') as f:
      json.dump(self._specials, f, indent=2, sort_keys=True)

  @classmethod
  def load_saved(cls, directory: str) -> 'HFTokenizer':
    """A tokenizer `save` wrote (e.g. an imported vocabulary kept in a workdir)."""
    with open(os.path.join(directory, SPECIALS_FILE), encoding='utf-8') as f:
      specials = json.load(f)
    return cls(tokenizers.Tokenizer.from_file(os.path.join(directory, TOKENIZER_FILE)),
               **specials)

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  @property
  def special_ids(self) -> tuple[int, ...]:
    return tuple(sorted({self._tok.token_to_id(t) for t in self._specials.values()}))

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids`, skipping special tokens."""
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

  def id_to_piece(self, token_id: int) -> str:
    return self._tok.id_to_token(int(token_id))


def _unigram_from_sentencepiece(path: str, extra_pieces: Sequence[str]) -> tokenizers.Tokenizer:
  """The `tokenizers` pipeline that encodes as SentencePiece does with this model: its pieces
  and scores as a Unigram model, its precompiled normalisation (NFKC by default) and its
  whitespace handling (collapse runs of spaces, "▁" for a space, one before the text).
  `extra_pieces` get the ids after the model's own. Read with SentencePiece's own protobuf
  schema (the `sentencepiece` package ships it); transformers' T5 converter does the same."""
  from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top
  proto = sentencepiece_model_pb2.ModelProto()
  with open(path, 'rb') as f:
    try:
      proto.ParseFromString(f.read())
    except Exception as e:  # protobuf's DecodeError; the file is not a SentencePiece model
      raise ConversionError(f'{path} is not a SentencePiece model ({e})') from None
  if proto.trainer_spec.model_type != sentencepiece_model_pb2.TrainerSpec.UNIGRAM:
    raise ConversionError(f'{path} is not a unigram SentencePiece model (T5 uses unigram)')
  vocab = [(p.piece, p.score) for p in proto.pieces] + [(p, 0.0) for p in extra_pieces]
  tok = tokenizers.Tokenizer(models.Unigram(vocab, unk_id=proto.trainer_spec.unk_id,
                                            byte_fallback=proto.trainer_spec.byte_fallback))
  spec = proto.normalizer_spec
  if spec.precompiled_charsmap:
    tok.normalizer = normalizers.Precompiled(spec.precompiled_charsmap)
  prepend = 'always' if spec.add_dummy_prefix else 'never'
  metaspace = pre_tokenizers.Metaspace(replacement='▁', prepend_scheme=prepend, split=True)
  tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), metaspace])
                       if spec.remove_extra_whitespaces else metaspace)
  tok.decoder = decoders.Metaspace(replacement='▁', prepend_scheme=prepend, split=True)
  if proto.trainer_spec.byte_fallback:  # <0xE2><0x80><0x9C> pieces decode to the bytes' text
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), tok.decoder])
  return tok


def _tokenizer_config(directory: str) -> dict:
  path = os.path.join(directory, TOKENIZER_CONFIG_FILE)
  if not os.path.exists(path):
    return {}
  with open(path, encoding='utf-8') as f:
    return json.load(f)
