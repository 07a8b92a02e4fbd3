"""Examples/s of the full jitted train step (image-text step and MLM step) on fake batches.

  python -m benchmarks.bench_train_step                          # default config
  python -m benchmarks.bench_train_step --config paper --image_size 512 --batch_size 8
Prints compile time, seconds per step and examples/s for each step kind, and the paper's mixture
rate (0.3 ITM + 0.7 MLM steps). Numbers, not pass/fail.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from configs import default as default_config
from configs import joimternet_paper
from jimte import optim, sharding, steps
from jimte.models.joimternet import build_model


def fake_batch(
  rng: np.random.Generator, batch: int, image_size: int, max_len: int, vocab: int
) -> dict:
  tokens = rng.integers(5, vocab, size=(batch, max_len)).astype(np.int32)
  lengths = rng.integers(max_len // 2, max_len + 1, size=batch)
  pad = np.arange(max_len)[None, :] >= lengths[:, None]
  tokens[pad] = 0
  tokens[:, 0] = 2
  tokens[np.arange(batch), lengths - 1] = 3
  weights = (rng.random((batch, max_len)) < 0.15) & ~pad
  return {
    "image": rng.uniform(-1, 1, (batch, image_size, image_size, 1)).astype(np.float32),
    "tokens": tokens,
    "mlm_tokens": np.where(weights, 4, tokens).astype(np.int32),
    "mlm_targets": np.where(weights, tokens, 0).astype(np.int32),
    "mlm_weights": weights.astype(np.float32),
    "study_index": np.arange(batch, dtype=np.int32),
    "index": np.arange(batch, dtype=np.int32),
    "valid": np.ones(batch, bool),
  }


def bench(config, repeats: int) -> dict[str, float]:
  mesh = sharding.make_mesh(config.mesh)
  model_config = config.model.copy_and_resolve_references()
  model = build_model(model_config)
  optimizers = optim.make_optimizers(config.optim)
  schedule = optim.make_schedule(config.optim, 100, 1000)
  state, shardings = steps.init_train_state(config, model, optimizers, mesh, jax.random.key(0))
  batch_sharding = sharding.batch_sharding(mesh)
  step_fns = {
    "itm": steps.make_itm_step(
      config, model, optimizers, schedule, steps.make_objective(config, mesh), mesh
    ),
    "mlm": steps.make_mlm_step(config, model, optimizers, schedule),
  }
  batch = jax.device_put(
    fake_batch(
      np.random.default_rng(0),
      config.batch_size,
      config.image_size,
      config.tokenizer.max_len,
      model_config.text.vocab_size,
    ),
    batch_sharding,
  )
  out = {}
  for name, fn in step_fns.items():
    step = jax.jit(
      fn,
      in_shardings=(shardings, batch_sharding),
      out_shardings=(shardings, None),
      donate_argnums=(0,),
    )
    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    out[f"{name}_compile_s"] = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      state, metrics = step(state, batch)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - t0)
    out[f"{name}_step_s"] = float(np.median(times))
    out[f"{name}_examples_per_s"] = config.batch_size / out[f"{name}_step_s"]
  p = config.loss.itm_probability if config.loss.mixture else 1.0
  mixed = p * out["itm_step_s"] + (1 - p) * out["mlm_step_s"]
  out["mixture_examples_per_s"] = config.batch_size / mixed
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--config", choices=["default", "paper"], default="default")
  parser.add_argument("--image_size", type=int, default=0, help="override the input size")
  parser.add_argument("--batch_size", type=int, default=0)
  parser.add_argument("--vocab_size", type=int, default=0)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  config = (
    default_config.get_config() if args.config == "default" else joimternet_paper.get_config()
  )
  if args.image_size:
    config.image_size = args.image_size
  if args.batch_size:
    config.batch_size = args.batch_size
  if args.vocab_size:
    config.model.text.vocab_size = args.vocab_size
  print(
    f"config={args.config} image_size={config.image_size} batch={config.batch_size} "
    f"max_len={config.tokenizer.max_len} devices={jax.device_count()} "
    f"backend={jax.default_backend()}"
  )
  for k, v in bench(config, args.repeats).items():
    print(f"  {k:28s} {v:10.3f}")


if __name__ == "__main__":
  main()
