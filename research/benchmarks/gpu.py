"""One-GPU benchmark: training MFU in bfloat16 and KV-cache decoding speed.

  make bench-gpu          # = python -m research.benchmarks.gpu
  python -m research.benchmarks.gpu --smoke   # tiny shapes, any device (tests/test_benchmarks.py)

Training: the real train step (loop.compile_step) of GPT-2 124M on sequences of 1,024 tokens
(causal LM) and of BERT-base on 512 (MLM + NSP, 76 predicted positions as google-research/bert's
512-token phase), bfloat16 compute with float32 parameters, scanned layers. MFU = model FLOPs
per second (research/flops.py `model_flops`: PaLM's count, remat not counted) over the
device's datasheet bf16 dense peak (flops.py knows A100 / H100 / H200 and TPUs; elsewhere the
measured matmul peak). MaxText-class GPT-2 training reaches about half of an H100's peak.

Decoding: `generate.decode` (prefill + a jitted while_loop over the KV cache, greedy, no stop
token) of GPT-2 124M with bfloat16 weights: new tokens per second at batch 1 and 16 for a
32-token prompt. With torch + transformers installed, HF's `GPT2LMHeadModel.generate` (bf16,
KV cache, greedy, same lengths) runs beside it on the same device.
"""
from __future__ import annotations

import dataclasses
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from research import generate, objectives
from research.benchmarks import train_throughput
from research.benchmarks.generation import best_time
from research.models import presets
from research.models.config import ModelConfig
from research.models.decoder import Decoder

_SMOKE = flags.DEFINE_bool('smoke', False, 'Tiny shapes and few steps: checks the script runs.')
_TRAIN_STEPS = flags.DEFINE_integer('train_steps', 20, 'Timed training steps per model.')
_HF = flags.DEFINE_bool('hf', True, 'Also time HF PyTorch generate when torch is installed.')


@dataclasses.dataclass(frozen=True)
class Setting:
  """The shapes of one run of the benchmark."""
  gpt: str = 'gpt2-124m'
  gpt_batch: int = 16
  gpt_seq: int = 1024
  bert: str = 'bert-base'
  bert_batch: int = 32
  bert_seq: int = 512
  bert_predictions: int = 76  # google-research/bert: max_predictions_per_seq at 512 tokens
  decode_batches: tuple[int, ...] = (1, 16)
  prompt_len: int = 32
  new_tokens: int = 256
  steps: int = 20


FULL = Setting()
SMOKE = Setting(gpt='gpt-tiny', gpt_batch=2, gpt_seq=64, bert='bert-tiny', bert_batch=2,
                bert_seq=64, bert_predictions=8, decode_batches=(1, 2), prompt_len=8,
                new_tokens=8, steps=2)


def train_rows(s: Setting) -> list[dict]:
  rows = []
  for size, objective, batch, seq, vocab in (
      (s.gpt, objectives.CausalLM(), s.gpt_batch, s.gpt_seq,
       presets.architecture(s.gpt)['vocab_size']),
      (s.bert, objectives.MaskedLM(max_predictions=s.bert_predictions), s.bert_batch, s.bert_seq,
       presets.architecture(s.bert)['vocab_size'])):
    r = train_throughput.time_train_step(size, objective, vocab, batch, seq, s.steps,
                                         'bfloat16', scan_layers=True)
    rows.append({'model': size, 'objective': objective.name, 'batch': f'{batch} x {seq}', **r})
  return rows


def decode_rows(s: Setting) -> list[dict]:
  cfg = ModelConfig(**{**presets.architecture(s.gpt), 'dropout': 0.0, 'attention_dropout': 0.0,
                       'dtype': 'bfloat16'})
  model = Decoder(cfg)
  params = jax.jit(lambda: jax.tree.map(lambda x: x.astype(jnp.bfloat16), nn.meta.unbox(
      model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))['params'])))()
  rng = np.random.default_rng(0)
  rows = []
  for batch in s.decode_batches:
    prompts = rng.integers(0, cfg.vocab_size, (batch, s.prompt_len)).tolist()
    decoding = generate.Decoding(max_new_tokens=s.new_tokens)
    seconds = best_time(lambda: generate.decode(model, params, prompts, decoding).tokens, 3)
    row = {'batch': batch, 'tokens_per_sec': batch * s.new_tokens / seconds}
    hf = hf_generate_seconds(cfg, prompts, s.new_tokens) if _HF.value else None
    if hf is not None:
      row['hf_tokens_per_sec'] = batch * s.new_tokens / hf
    rows.append(row)
  return rows


def hf_generate_seconds(cfg: ModelConfig, prompts: list[list[int]], new_tokens: int):
  """Best of 3 wall times of HF `generate` (bf16 GPT2LMHeadModel, random weights, KV cache,
  greedy, exactly `new_tokens` tokens) on the first CUDA device, or None without torch,
  transformers or CUDA."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  if not torch.cuda.is_available():
    return None
  hf_cfg = transformers.GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.max_len,
                                   n_embd=cfg.d_model, n_layer=cfg.num_layers,
                                   n_head=cfg.num_heads, n_inner=cfg.d_ff)
  model = transformers.GPT2LMHeadModel(hf_cfg).to('cuda', torch.bfloat16).eval()
  ids = torch.tensor(prompts, device='cuda')
  run = lambda: model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                               max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                               use_cache=True, pad_token_id=0)
  times = []
  with torch.inference_mode():
    run()  # warm-up
    for _ in range(3):
      torch.cuda.synchronize()
      start = time.perf_counter()
      run()
      torch.cuda.synchronize()
      times.append(time.perf_counter() - start)
  return min(times)


def main(argv):
  del argv
  s = SMOKE if _SMOKE.value else dataclasses.replace(FULL, steps=_TRAIN_STEPS.value)
  device = jax.devices()[0]
  print(f'device: {device.device_kind} ({device.platform}), bfloat16'
        + (' [smoke: tiny shapes]' if _SMOKE.value else ''))
  print(f'\n{"training":12s} {"objective":10s} {"batch":>10s} {"ms/step":>9s} {"tokens/s":>10s} '
        f'{"MFU":>6s}')
  rows = train_rows(s)
  for r in rows:
    print(f'{r["model"]:12s} {r["objective"]:10s} {r["batch"]:>10s} {r["step_ms"]:9.1f} '
          f'{r["tokens_per_sec"]:10.0f} {100 * r["mfu"]:5.1f}%', flush=True)
  peak = rows[-1]['peak']
  print(f'peak: {peak / 1e12:.1f} TFLOP/s per device' if peak >= 1e12 else
        f'peak: {peak / 1e9:.1f} GFLOP/s per device (measured: no datasheet figure)')
  print(f'\ndecoding {s.gpt}, prompt {s.prompt_len}, {s.new_tokens} new tokens, greedy, '
        'bf16 weights')
  print(f'{"batch":>5s} {"tokens/s":>10s} {"HF PyTorch":>11s}')
  for r in decode_rows(s):
    hf = f'{r["hf_tokens_per_sec"]:11.0f}' if 'hf_tokens_per_sec' in r else f'{"-":>11s}'
    print(f'{r["batch"]:>5d} {r["tokens_per_sec"]:10.0f} {hf}', flush=True)


if __name__ == '__main__':
  app.run(main)
