"""Where the image-text step's time goes: its parts timed alone, forward and backward, in one run.

  python -m benchmarks.bench_step_parts --config paper --image_size 512 --batch_size 8 --text_len 96

Parts: the image tower (training mode, BatchNorm statistics updated), the text tower (training
mode, dropout on), the objectives on the towers' outputs (every term of `config.loss`), and the
AdamW updates of both towers; then the whole jitted step. Each is printed with its model FLOPs
(`benchmarks._flops`), seconds and share of the step, against a matmul peak measured in the same
run. The parts' sum exceeds the step where XLA fuses across their borders. Numbers, not pass/fail.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _flops, _timing
from benchmarks.bench_train_step import configured, fake_batch, train_steps
from jimte import losses, optim, sharding, steps
from jimte.models.joimternet import build_model


def parts(config, text_len: int):
  """{name: (jitted fn, args)} of the step's parts and of the whole step, on one fake batch."""
  state, _, _, step_fns = train_steps(config)
  model = build_model(config.model.copy_and_resolve_references())
  batch = fake_batch(
    np.random.default_rng(0),
    config.batch_size,
    config.image_size,
    text_len,
    config.model.text.vocab_size,
  )
  batch = jax.device_put(batch)
  params, stats = state.params, state.batch_stats
  rngs = {"dropout": jax.random.key(1)}

  def image_loss(image_params):
    variables = {"params": {**params, "image": image_params}, "batch_stats": stats}
    out, _ = model.apply(
      variables, batch["image"], train=True, method=model.encode_image, mutable=["batch_stats"]
    )
    return jnp.sum(out.global_emb**2) + jnp.sum(out.regions**2)

  def text_loss(text_params):
    variables = {"params": {**params, "text": text_params}, "batch_stats": stats}
    out = model.apply(variables, batch["tokens"], train=True, method=model.encode_text, rngs=rngs)
    return jnp.sum(out.sentence**2) + jnp.sum(out.words**2)

  out = jax.jit(
    lambda p: model.apply(
      {"params": p, "batch_stats": stats}, batch["image"], batch["tokens"], train=False
    )
  )(params)
  n = config.batch_size
  regions = out.regions.reshape(n, -1, out.regions.shape[-1])
  objective = steps.make_objective(config, sharding.make_mesh(config.mesh))
  negatives = losses.sample_negatives(jax.random.key(2), n, 1)

  def objective_loss(image_global, sentence, regions, words):
    total, _ = objective(image_global, sentence, regions, words, out.word_mask, negatives, None)
    return total

  optimizers = optim.make_optimizers(config.optim)
  grads = jax.tree.map(jnp.ones_like, params)

  def update(params, opt_state):
    return {
      tower: optim.apply_tower_update(
        optimizers[tower], opt_state[tower], params[tower], grads[tower], 1e-4
      )
      for tower in optim.TOWERS
    }

  return {
    "image tower fwd+bwd": (jax.grad(image_loss), (params["image"],)),
    "text tower fwd+bwd": (jax.grad(text_loss), (params["text"],)),
    "objectives fwd+bwd": (
      jax.grad(objective_loss, argnums=(0, 1, 2, 3)),
      (out.image_global, out.sentence, regions, out.words),
    ),
    "optimizer updates": (update, (params, state.opt_state)),
    "whole image-text step": (step_fns["itm"], (state, batch)),
  }


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--config", choices=["default", "paper"], default="paper")
  parser.add_argument("--image_size", type=int, default=512)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--text_len", type=int, default=0, help="token positions (0: max_len)")
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--peak_n", type=int, default=2048)
  args = parser.parse_args(argv)
  config = configured(args.config, args.image_size, args.batch_size, args.dtype)
  text_len = args.text_len or config.tokenizer.max_len
  peak = _timing.measure_matmul_peak_gflops(args.peak_n) * 1e9
  print(
    f"config={args.config} image_size={args.image_size} batch={args.batch_size} "
    f"text_len={text_len} dtype={args.dtype} backend={jax.default_backend()}; same-run matmul "
    f"peak {peak / 1e9:.1f} GFLOP/s"
  )
  measured = {}
  for name, (fn, fn_args) in parts(config, text_len).items():
    flops = _flops.model_flops(fn, *fn_args)
    # jit without donation: every part, the whole step too, runs on the same inputs each time.
    seconds = _timing.time_fn(jax.jit(fn), *fn_args, repeats=args.repeats)
    measured[name] = (flops, seconds)
  whole = measured["whole image-text step"][1]
  print(f"  {'part':24s} {'GFLOP':>8s} {'s':>8s} {'share':>7s} {'of peak':>8s}")
  for name, (flops, seconds) in measured.items():
    print(
      f"  {name:24s} {flops / 1e9:8.2f} {seconds:8.4f} {100 * seconds / whole:6.1f}% "
      f"{100 * flops / seconds / peak:7.1f}%"
    )


if __name__ == "__main__":
  from jimte import hugepages

  hugepages.reexec_with_hugepages()  # before any buffer: XLA:CPU step times depend on it
  main()
