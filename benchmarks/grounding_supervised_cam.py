"""A reference for the grounding target: how well a finding-supervised image tower points.

    python benchmarks/grounding_supervised_cam.py                       # default tower, 8 x 8
    python benchmarks/grounding_supervised_cam.py --region_stage -3     # 16 x 16 regions
    python benchmarks/grounding_supervised_cam.py --steps 3000 --region_stage -3

The image tower of `configs/default.py` (the global vector the mean of the region vectors, so
that a linear head's per-region contributions are a class activation map, CAM) trained with the
phantoms' finding labels themselves (binary cross-entropy, AdamW with warmup and cosine decay):
far more direct supervision than a report gives, and still no boxes. On the held-out phantoms it
prints the AUC per finding kind and the pointing game of each finding phrase's CAM (the map of its
kind's logit over the region grid) against the exact boxes, with the grid's ceiling. Report
supervision, with the same tower and steps, is not expected to ground better than this.
Numbers, not pass/fail.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import pickle
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np


def finding_targets(findings, num_kinds: int) -> np.ndarray:
  """[N, num_kinds] float32: 1 where the example has a finding of that kind."""
  targets = np.zeros((len(findings), num_kinds), np.float32)
  for row, records in enumerate(findings):
    for record in records:
      targets[row, int(record["finding_id"])] = 1.0
  return targets


def finding_phrases(findings):
  """One `grounding.Phrase` per finding group (its kind and the union of its boxes)."""
  from jimte.evaluate import grounding

  phrases = []
  for row, records in enumerate(findings):
    groups: dict[int, list] = {}
    for record in records:
      groups.setdefault(int(record["group"]), []).append(record)
    for group in groups.values():
      boxes = tuple(tuple(float(b) for b in r["box"]) for r in group)
      phrases.append(grounding.Phrase(row, str(group[0]["name"]), "", (), boxes))
  return phrases


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--config_arg", default="", help="configs/default.py's argument, e.g. tiny")
  parser.add_argument("--steps", type=int, default=930, help="the default run's image-text steps")
  parser.add_argument("--num_train", type=int, default=30000, help="phantoms, each seen ~once")
  parser.add_argument("--num_eval", type=int, default=0, help="0: the config's")
  parser.add_argument("--batch_size", type=int, default=0, help="0: the config's")
  parser.add_argument("--region_stage", type=int, default=-2)
  parser.add_argument("--learning_rate", type=float, default=1e-3)
  parser.add_argument("--warmup_steps", type=int, default=0, help="0: a tenth of the steps")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
    "--pooling",
    choices=["mean", "lse"],
    default="mean",
    help="image logit from the cells' logits: their mean (CAM) or a log-mean-exp (MIL-style)",
  )
  parser.add_argument("--lse_sharpness", type=float, default=5.0, help="r of --pooling lse")
  parser.add_argument("--cache_dir", default="", help="keep the drawn phantoms here between runs")
  parser.add_argument(
    "--image",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="override a field of config.model.image (a Python literal), e.g. blocks_per_stage=1",
  )
  args = parser.parse_args(argv)

  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import optax

  from benchmarks.grounding_diagnosis import auc, pointing_games
  from configs import default
  from data_pipeline import phantoms
  from data_pipeline.phantoms.config import FINDING_NAMES
  from jimte import data as data_lib
  from jimte.evaluate import grounding, maps
  from jimte.models import joimternet

  config = default.get_config(args.config_arg or None)
  batch = args.batch_size or config.batch_size
  num_eval = args.num_eval or config.data.num_eval
  size = config.image_size
  if config.data.phantom_size != size:
    raise ValueError("the reference draws phantoms at the model's input size (phantom_size)")
  phantom_config = data_lib.phantom_config(config.data)
  start = time.perf_counter()

  def split(num: int, name: str) -> dict:
    """The phantoms of a split, drawn or read back from `--cache_dir` (drawn at this config)."""
    path = None
    if args.cache_dir:
      key = hashlib.sha256(repr((num, name, size, phantom_config)).encode()).hexdigest()[:16]
      path = Path(args.cache_dir) / f"phantoms_{name}_{num}_{key}.pkl"
      if path.exists():
        with path.open("rb") as f:
          return pickle.load(f)
    drawn = phantoms.generate_split(num, split=name, seed=0, config=phantom_config)
    if path is not None:
      path.parent.mkdir(parents=True, exist_ok=True)
      with path.open("wb") as f:
        pickle.dump(drawn, f, protocol=pickle.HIGHEST_PROTOCOL)
    return drawn

  train, test = split(args.num_train, "train"), split(num_eval, "test")
  print(
    f"{args.num_train} + {num_eval} phantoms at {size} px in {time.perf_counter() - start:.0f} s"
  )
  kinds = len(FINDING_NAMES)
  y_train, y_test = (
    finding_targets(train["findings"], kinds),
    finding_targets(test["findings"], kinds),
  )
  x_train = train["image"].astype(np.float32) / 127.5 - 1.0
  x_test = test["image"].astype(np.float32) / 127.5 - 1.0

  model_config = config.model.copy_and_resolve_references()
  model_config.image.global_pooling = "region_mean"
  model_config.image.region_stage = args.region_stage
  for override in args.image:
    key, sep, value = override.partition("=")
    if not sep or key not in model_config.image:
      raise ValueError(f"--image {override!r}: expected KEY=VALUE, KEY a field of model.image")
    model_config.image[key] = ast.literal_eval(value)
  model_config.text.vocab_size = 16  # the text tower is built and never run
  tower = joimternet.build_model(model_config).image

  class Classifier(nn.Module):
    tower: nn.Module

    @nn.compact
    def __call__(self, images, train: bool):
      out = self.tower(images, train)
      cell_logits = nn.Dense(kinds, name="head")(out.regions)  # [B, H, W, kinds]: the CAMs
      flat = cell_logits.reshape(cell_logits.shape[0], -1, kinds)
      if args.pooling == "mean":  # = the head on the global vector (the mean of the regions)
        return jnp.mean(flat, axis=1), out.regions
      # Log-mean-exp with sharpness r: the mean at r -> 0, the maximum at r -> infinity.
      r = args.lse_sharpness
      pooled = (jax.nn.logsumexp(r * flat, axis=1) - jnp.log(flat.shape[1])) / r
      return pooled, out.regions

  model = Classifier(tower)
  variables = model.init(jax.random.key(args.seed), x_train[:2], False)
  params, batch_stats = variables["params"], variables["batch_stats"]
  warmup = args.warmup_steps or max(1, args.steps // 10)
  schedule = optax.warmup_cosine_decay_schedule(0.0, args.learning_rate, warmup, args.steps)
  optimizer = optax.adamw(schedule, weight_decay=1e-4)
  opt_state = optimizer.init(params)

  @jax.jit
  def update(params, batch_stats, opt_state, images, targets):
    def loss_fn(p):
      (logits, _), new = model.apply(
        {"params": p, "batch_stats": batch_stats}, images, True, mutable=["batch_stats"]
      )
      return optax.sigmoid_binary_cross_entropy(logits, targets).mean(), new["batch_stats"]

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state, loss

  rng = np.random.default_rng(args.seed)
  start = time.perf_counter()
  for _ in range(args.steps):
    rows = rng.integers(0, args.num_train, batch)
    params, batch_stats, opt_state, loss = update(
      params, batch_stats, opt_state, x_train[rows], y_train[rows]
    )
  loss = float(loss)
  print(
    f"{args.steps} steps of {batch} in {time.perf_counter() - start:.0f} s, last loss {loss:.4f}"
  )

  apply = jax.jit(lambda x: model.apply({"params": params, "batch_stats": batch_stats}, x, False))
  outputs = [apply(x_test[i : i + 64]) for i in range(0, num_eval, 64)]
  logits = np.concatenate([np.asarray(o[0]) for o in outputs])
  regions = np.concatenate([np.asarray(o[1]) for o in outputs])
  kernel = np.asarray(params["head"]["kernel"])
  cams = np.einsum("nhwd,dc->nhwc", regions, kernel)  # each cell's share of each kind's logit
  phrases = finding_phrases(test["findings"])
  index = {name: i for i, name in enumerate(FINDING_NAMES)}
  games = pointing_games(
    {"CAM": lambda i: cams[phrases[i].row, :, :, index[phrases[i].finding]]}, phrases, size
  )["CAM"]
  h, w = regions.shape[1:3]
  masks = [maps.box_mask(p.boxes, size, size) for p in phrases]
  oracle = grounding.oracle_pointing_game(masks, h, w)
  names = sorted(games.keys() - {"all"})
  print(
    "held-out AUC per kind: "
    + ", ".join(f"{n} {auc(logits[:, index[n]], y_test[:, index[n]] > 0):.2f}" for n in names)
  )
  print(
    f"CAM pointing game on the {h}x{w} grid: {games['all']:.3f} over {len(phrases)} phrases "
    f"(ceiling {oracle:.3f}); " + ", ".join(f"{n} {games[n]:.2f}" for n in names)
  )


if __name__ == "__main__":
  main()
