"""The step loop shared by pretraining (train.py) and fine-tuning (finetune.py).

step -> report -> (evaluate) -> (checkpoint), from the state's step to the last one. The
checkpoint holds the state and the input iterator's position, and is written after the step's
evaluation, so the last checkpoint of a finished run means the run is complete (including its
final evaluation; launch/sweep.py skips such runs) and a killed run resumes on exactly the
trajectory it was on.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import jax

from research import checkpointing, reporting, sharding, state as state_lib


def compile_step(step_fn: Callable, abstract_state, mesh) -> Callable:
  """`step_fn(state, batch) -> (state, metrics)` jitted once: the state keeps the shardings
  planned for it (state.py), the batch is split over the mesh's data axes, and the input state
  is donated so its buffers are reused for the output."""
  shardings = state_lib.shardings_of(abstract_state)
  return jax.jit(sharding.with_rules(step_fn, mesh),
                 in_shardings=(shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(shardings, None), donate_argnums=0)


def run(state, train_step: Callable, data_iter: Iterator, mesh, *, total_steps: int,
        reporter: reporting.Reporter, ckpt: checkpointing.Checkpointer, checkpoint_every: int,
        after_step: Callable[[int, Any], dict | None]) -> tuple[Any, dict]:
  """Trains from `state.step` to `total_steps`.

  `train_step(state, batch) -> (state, metrics)` is the jitted step; `data_iter` yields host
  batches (a grain iterator: its state is checkpointed). `after_step(done, state)` runs after
  every step, e.g. to evaluate, and returns metrics or None. Returns the final state and the
  last metrics `after_step` returned ({} if it never returned any).
  """
  last = {}
  for step in range(int(state.step), total_steps):
    batch = sharding.global_batch(next(data_iter), mesh)
    state, metrics = train_step(state, batch)
    done = step + 1
    reporter.train(done, metrics)
    result = after_step(done, state)
    if result is not None:
      last = result
    if done % checkpoint_every == 0 or done == total_steps:
      ckpt.save(done, state, data_iter.get_state())
  ckpt.wait()
  return state, last
