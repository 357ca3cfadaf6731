"""In-context evaluation: the scorer agrees with a plain forward pass, and a model trained to
say "positive" after good reviews scores that continuation higher and classifies by prompting."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import incontext
from research.models import presets
from research.models.config import ModelConfig
from research.models.decoder import Decoder

GOOD, BAD = ('great', 'superb', 'lovely', 'moving'), ('awful', 'dull', 'boring', 'clumsy')


class CharTokenizer:
  """One id per ASCII character; id 3 (never in text) is end-of-text."""
  eos_id, pad_id, vocab_size = 3, 0, 128

  def encode(self, text):
    return [ord(c) for c in text]

  def decode(self, ids):
    return ''.join(chr(i) for i in ids if i != self.eos_id)


def review(word):
  return f'a {word} film'


@pytest.fixture(scope='module')
def trained():
  """A tiny GPT trained for ~2 s on 'Review: a great film\\nSentiment: positive' lines."""
  tok = CharTokenizer()
  cfg = ModelConfig(**{**presets.FAMILIES['gpt2'], 'vocab_size': 128, 'max_len': 64,
                       'd_model': 64, 'num_layers': 2, 'num_heads': 4, 'd_ff': 128,
                       'dropout': 0.0, 'attention_dropout': 0.0})
  model = Decoder(cfg)
  rng = np.random.default_rng(0)
  texts = [incontext.sentiment_prompt(review(w), int(w in GOOD)) for w in GOOD + BAD]
  rows = [[tok.eos_id, *tok.encode(t)] for t in texts]
  width = max(map(len, rows))
  data = np.array([r + [tok.eos_id] * (width - len(r)) for r in rows], np.int32)
  params = nn.meta.unbox(model.init(jax.random.key(0), data[:1])['params'])
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state, ids):
    def loss(p):
      logits = model.apply({'params': p}, ids[:, :-1]).logits
      return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()
    grads = jax.grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  opt_state = tx.init(params)
  for _ in range(150):
    params, opt_state = step(params, opt_state, data[rng.integers(0, len(data), 16)])
  return model, params, tok


def test_scores_equal_a_plain_forward_pass(trained):
  model, params, tok = trained
  pairs = [([3, *tok.encode('Review: a dull')], tok.encode(' film')),
           ([3, *tok.encode('Revi')], tok.encode('ew: a great film'))]
  batched = incontext.score_continuations(model, params, pairs)
  one_by_one = [incontext.score_continuations(model, params, [p], batch_size=1)[0] for p in pairs]
  forward = jax.jit(lambda ids: jax.nn.log_softmax(model.apply({'params': params}, ids).logits))
  for (context, continuation), score, alone in zip(pairs, batched, one_by_one):
    ids = jnp.asarray([context + continuation + [0] * (32 - len(context) - len(continuation))])
    log_probs = forward(ids)[0]  # right padding leaves earlier causal logits unchanged
    targets = range(len(context), len(context) + len(continuation))
    expected = sum(float(log_probs[t - 1, ids[0, t]]) for t in targets)
    assert score.log_prob == pytest.approx(expected, abs=1e-4)
    assert alone.log_prob == pytest.approx(expected, abs=1e-4)
    assert score.num_tokens == len(continuation)
  assert batched[0].greedy  # ' film' after 'a dull' is what it was trained on


def test_trained_continuation_scores_higher(trained):
  model, params, tok = trained
  context = [3, *tok.encode(incontext.sentiment_prompt(review('great')))]
  positive, negative = incontext.score_continuations(
      model, params, [(context, tok.encode(' positive')), (context, tok.encode(' negative'))])
  assert positive.log_prob > negative.log_prob + 1
  assert positive.greedy and not negative.greedy


def test_long_contexts_lose_their_oldest_tokens(trained):
  model, params, tok = trained
  continuation = tok.encode(' film')
  long_context = [3] * 100 + tok.encode('Review: a dull')
  truncated = long_context[-(64 - len(continuation)):]
  a, b = incontext.score_continuations(model, params, [(long_context, continuation),
                                                       (truncated, continuation)])
  assert a == b


@pytest.mark.parametrize('k', [0, 2])
def test_classification_by_prompting(trained, k):
  model, params, tok = trained
  examples = [(review(w), int(w in GOOD)) for w in GOOD + BAD]
  result = incontext.classify_by_prompting(model, params, tok, examples, examples, k,
                                           max_context=64)
  assert result['accuracy'] >= 0.75, result
  assert result['majority_baseline'] == 0.5


def test_last_word_examples():
  docs = [['Too short to use.',
           'It is a truth universally acknowledged, that a single man must be in want of a wife.',
           'However little known the feelings or views of such a man may be -- 1811.']]
  examples = incontext.last_word_examples(docs)
  assert examples == [('Too short to use. It is a truth universally acknowledged, that a single '
                       'man must be in want of a', 'wife')]


def test_last_word_accuracy_counts_greedy_words(trained):
  model, params, tok = trained
  result = incontext.last_word_accuracy(model, params, tok, [
      ('Review: a great', 'film'), ('Review: a great', 'zebra')])
  assert result['accuracy'] == 0.5 and result['examples'] == 2


def test_read_sentiment_files():
  rows = incontext.read_sentiment('dev')
  assert len(rows) == 1280 and {label for _, label in rows} == {0, 1}
  with pytest.raises(FileNotFoundError, match='rotten_tomatoes'):
    incontext.read_sentiment('dev', '/nonexistent')
