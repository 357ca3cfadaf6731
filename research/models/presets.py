"""Published model sizes, each row citing where it comes from.

An architecture preset is a family (the switches that make BERT, GPT-1/2/3, T5 v1.0 / v1.1
or BART) plus a size (layers, width, heads). `published_params` is the count the source reports;
tests/test_models.py checks ours against it with `jax.eval_shape` (no memory used).
"""
from __future__ import annotations

FAMILIES = {
    # google-research/bert modeling.py defaults: post-LN, exact GELU, 2 segment types.
    'bert': dict(arch='encoder', type_vocab_size=2, embed_ln=True, pre_ln=False, final_ln=False,
                 activation='gelu', layer_norm_eps=1e-12, scaled_residual_init=False,
                 max_len=512, vocab_size=30522),
    # GPT-1 paper Sec 4.1: 12-layer post-LN decoder, 512 positions, 40,478 BPE tokens.
    'gpt1': dict(arch='decoder', type_vocab_size=0, embed_ln=False, pre_ln=False, final_ln=False,
                 activation='gelu_tanh', layer_norm_eps=1e-5, scaled_residual_init=False,
                 max_len=512, vocab_size=40478),
    # GPT-2 paper Sec 2.3: pre-LN, final LayerNorm, residual init / sqrt(N), 1024 positions.
    'gpt2': dict(arch='decoder', type_vocab_size=0, embed_ln=False, pre_ln=True, final_ln=True,
                 activation='gelu_tanh', layer_norm_eps=1e-5, scaled_residual_init=True,
                 max_len=1024, vocab_size=50257),
    # GPT-3 paper Sec 2.1: GPT-2's architecture, 2048 positions, alternating dense and locally
    # banded sparse layers. The band width is not published; 256 is this project's choice.
    'gpt3': dict(arch='decoder', type_vocab_size=0, embed_ln=False, pre_ln=True, final_ln=True,
                 activation='gelu_tanh', layer_norm_eps=1e-5, scaled_residual_init=True,
                 max_len=2048, vocab_size=50257, local_window=256),
    # T5 v1.0 (Raffel et al. 2020, Sec 2.1; HF t5-small config.json): pre-norm RMSNorm without
    # biases, ReLU MLP, relative position bias (32 buckets up to distance 128) shared by the
    # layers of each stack, unscaled attention, embeddings tied to the output with the
    # d_model**-0.5 rescale, 32,128 SentencePiece ids (32,000 + 100 sentinels, padded).
    # Relative positions have no table: max_len is only the longest input accepted here.
    't5': dict(arch='encoder_decoder', position='relative', norm='rms', use_bias=False,
               pre_ln=True, final_ln=True, embed_ln=False, activation='relu', mlp='dense',
               attention_scale=False, tie_output=True, scale_tied_output=True,
               layer_norm_eps=1e-6, type_vocab_size=0, scaled_residual_init=False,
               max_len=512, vocab_size=32128, decoder_start='pad', embed_init_std=1.0,
               init='fan_in', mlp_dropout=True, final_dropout=True),
    # T5.1.1 (google-research/text-to-text-transfer-transformer released_checkpoints.md):
    # GeGLU MLP (gelu_new), untied output layer, no dropout in pretraining.
    't5.1.1': dict(arch='encoder_decoder', position='relative', norm='rms', use_bias=False,
                   pre_ln=True, final_ln=True, embed_ln=False, activation='gelu_tanh',
                   mlp='gated', attention_scale=False, tie_output=False,
                   scale_tied_output=False, layer_norm_eps=1e-6, type_vocab_size=0,
                   scaled_residual_init=False, max_len=512, vocab_size=32128, dropout=0.0,
                   attention_dropout=0.0, decoder_start='pad', embed_init_std=1.0,
                   init='fan_in', mlp_dropout=True, final_dropout=True),
    # BART (Lewis et al. 2020, Sec 2.1; HF facebook/bart-base config.json): post-LN with a
    # LayerNorm on the embeddings of each stack, GELU, biases, learned positions (1,024;
    # HF stores two extra unused rows), tied output, 50,265 byte-level BPE ids.
    'bart': dict(arch='encoder_decoder', position='learned', norm='layer', use_bias=True,
                 pre_ln=False, final_ln=False, embed_ln=True, activation='gelu', mlp='dense',
                 attention_scale=True, tie_output=True, scale_tied_output=False,
                 layer_norm_eps=1e-5, type_vocab_size=0, scaled_residual_init=False,
                 max_len=1024, vocab_size=50265, decoder_start='eos'),
}


def _size(layers, d_model, heads, published, family, source, d_ff=None, **extra):
  return dict(family=family, num_layers=layers, d_model=d_model, num_heads=heads,
              d_ff=d_ff or 4 * d_model, published_params=published, source=source, **extra)


_BERT_README = 'google-research/bert README (compact models, Turc et al. 2019)'
_GPT3 = 'GPT-3 paper Table 2.1'
_T5 = 'T5 paper Sec 3.7 / HF t5-* (60M, 220M, 770M)'
_T511 = 'T5 released_checkpoints.md (T5.1.1) / HF google/t5-v1_1-*'
_BART = 'BART paper Sec 3.2 / HF facebook/bart-* (140M, 400M)'
SIZES = {
    # BERT: encoder sizes; published counts are for the pretraining model.
    'bert-tiny': _size(2, 128, 2, 4.4e6, 'bert', _BERT_README),
    'bert-mini': _size(4, 256, 4, 11.3e6, 'bert', _BERT_README),
    'bert-small': _size(4, 512, 8, 29.1e6, 'bert', _BERT_README),
    'bert-medium': _size(8, 512, 8, 41.7e6, 'bert', _BERT_README),
    'bert-base': _size(12, 768, 12, 110e6, 'bert', 'BERT paper Sec 3 (BERT_BASE, 110M)'),
    'bert-large': _size(24, 1024, 16, 340e6, 'bert', 'BERT paper Sec 3 (BERT_LARGE, 340M)'),
    # GPT-1
    'gpt1': _size(12, 768, 12, 117e6, 'gpt1', 'GPT-2 paper Table 2 (117M, the GPT-1 size)'),
    # GPT-2 (the 124M/355M/774M/1558M counts of the released checkpoints; the paper's Table 2
    # says 117M/345M/762M/1542M, which undercounts the embeddings).
    'gpt2-124m': _size(12, 768, 12, 124e6, 'gpt2', 'GPT-2 release (paper Table 2: 117M)'),
    'gpt2-355m': _size(24, 1024, 16, 355e6, 'gpt2', 'GPT-2 release (paper Table 2: 345M)'),
    'gpt2-774m': _size(36, 1280, 20, 774e6, 'gpt2', 'GPT-2 release (paper Table 2: 762M)'),
    'gpt2-1558m': _size(48, 1600, 25, 1558e6, 'gpt2', 'GPT-2 release (paper Table 2: 1542M)'),
    # GPT-3 Table 2.1. XL lists 24 heads of 128 with d_model 2048, which do not multiply out;
    # we keep d_head 128 (16 heads). 13B lists d_model 5140; we use 5120 = 40 x 128.
    'gpt3-125m': _size(12, 768, 12, 125e6, 'gpt3', _GPT3),
    'gpt3-350m': _size(24, 1024, 16, 350e6, 'gpt3', _GPT3),
    'gpt3-760m': _size(24, 1536, 16, 760e6, 'gpt3', _GPT3),
    'gpt3-1.3b': _size(24, 2048, 16, 1.3e9, 'gpt3', _GPT3),
    'gpt3-2.7b': _size(32, 2560, 32, 2.7e9, 'gpt3', _GPT3),
    'gpt3-6.7b': _size(32, 4096, 32, 6.7e9, 'gpt3', _GPT3),
    'gpt3-13b': _size(40, 5120, 40, 13e9, 'gpt3', _GPT3),
    'gpt3-175b': _size(96, 12288, 96, 175e9, 'gpt3', _GPT3),
    # T5 v1.0 (Raffel et al. 2020, Table 14 / HF configs; exact counts of the released
    # checkpoints, tied embeddings): 6+6 / 12+12 layers, d_kv 64.
    't5-small': _size(6, 512, 8, 60_506_624, 't5', _T5, d_ff=2048, d_head=64),
    't5-base': _size(12, 768, 12, 222_903_552, 't5', _T5, d_ff=3072, d_head=64),
    't5-large': _size(24, 1024, 16, 737_668_096, 't5', _T5, d_ff=4096, d_head=64),
    # T5.1.1: narrower MLP (gated), more heads than d_model / 64 at small size.
    't5.1.1-small': _size(8, 512, 6, 76_961_152, 't5.1.1', _T511, d_ff=1024, d_head=64),
    't5.1.1-base': _size(12, 768, 12, 247_577_856, 't5.1.1', _T511, d_ff=2048, d_head=64),
    # BART (Lewis et al. 2020, Sec 3.2: "140M / 400M"); exact counts are HF's
    # BartForConditionalGeneration less the 2 x 2 unused position rows HF stores.
    'bart-base': _size(6, 768, 12, 139_420_416 - 4 * 768, 'bart', _BART, d_ff=3072),
    'bart-large': _size(12, 1024, 16, 406_291_456 - 4 * 1024, 'bart', _BART, d_ff=4096),
    # Laptop-scale models with the BERT-tiny / BERT-mini shapes, for like-for-like
    # comparisons and the `make demo` run (encoder-decoders: that many layers per stack).
    'gpt-tiny': _size(2, 128, 2, None, 'gpt2', 'this project: BERT-tiny shape'),
    'gpt-mini': _size(4, 256, 4, None, 'gpt2', 'this project: BERT-mini shape'),
    't5-tiny': _size(2, 128, 2, None, 't5', 'this project: BERT-tiny shape'),
    't5-mini': _size(4, 256, 4, None, 't5', 'this project: BERT-mini shape'),
    'bart-tiny': _size(2, 128, 2, None, 'bart', 'this project: BERT-tiny shape'),
    'bart-mini': _size(4, 256, 4, None, 'bart', 'this project: BERT-mini shape'),
}


def architecture(name: str) -> dict:
  """The ModelConfig fields of a named size: family switches + size. Raises on unknown names."""
  if name not in SIZES:
    raise ValueError(f'unknown model size {name!r}; choose one of {", ".join(SIZES)}')
  size = dict(SIZES[name])
  family = size.pop('family')
  size.pop('published_params')
  size.pop('source')
  return {**FAMILIES[family], **size}
