"""Fine-tuning the pre-trained image tower with a classification head (the original's downstream).

Follows the original release's `Downstream/Classification` (trainer_cls.py, model_phrase_cls.py,
misc/config_cls_it_ft.py):

* head: global average of the region grid and the global vector, each dropout 0.5 -> dense 256 ->
  ReLU, concatenated -> dropout -> dense 256 -> ReLU -> dropout -> dense C (logits);
* loss: binary cross-entropy with logits per label, `pos_weight_c = min(n_nofinding / n_c, 5)` and
  each label weighted by `(N - n_c) / N` (counts over the train rows), mean over entries; uncertain
  entries are masked out (the original had no uncertain labels in its targets);
* Adam with L2 weight decay 1e-4 added to the gradient (torch `Adam(weight_decay=...)`), learning
  rate 1e-4 for the head and 1e-5 for the tower, x0.1 after epoch 10 of 20, gradients clipped to a
  global norm of 2, batch 32, the pre-training augmentation on the train images.

One change: the original kept every epoch's checkpoint and read validation AUROC off the log; here
the parameters of the epoch with the best validation mean AUROC (without "No Finding") are kept.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jimte.evaluate.classification import targets_from_labels


def default_config() -> ml_collections.ConfigDict:
  """The original's fine-tuning settings (misc/config_cls_it_ft.py)."""
  return ml_collections.ConfigDict(
    dict(
      epochs=20,
      lr_drop_epoch=10,
      lr_gamma=0.1,
      learning_rate=1e-4,  # head
      backbone_learning_rate=1e-5,  # the pre-trained image tower
      weight_decay=1e-4,  # L2 added to the gradient before Adam (torch Adam semantics)
      clip_norm=2.0,
      batch_size=32,
      dropout=0.5,
      hidden=256,
      pos_weight_cap=5.0,
      freeze_backbone=False,
      seed=42,
    )
  )


class ClassifierHead(nn.Module):
  """The original's head over (pooled regions, global vector) -> C logits."""

  num_classes: int
  hidden: int = 256
  dropout: float = 0.5

  @nn.compact
  def __call__(self, regions: jax.Array, global_emb: jax.Array, train: bool) -> jax.Array:
    drop = nn.Dropout(self.dropout, deterministic=not train)
    pooled = regions.mean(axis=(1, 2))
    r = nn.relu(nn.Dense(self.hidden, name="projection_region")(drop(pooled)))
    g = nn.relu(nn.Dense(self.hidden, name="projection_global")(drop(global_emb)))
    net = nn.relu(nn.Dense(self.hidden, name="fc1")(drop(jnp.concatenate([r, g], -1))))
    return nn.Dense(self.num_classes, name="output")(drop(net)).astype(jnp.float32)


class ImageClassifier(nn.Module):
  """Image tower (any module returning `ImageOutput`) + `ClassifierHead`."""

  image: nn.Module
  head: ClassifierHead

  def __call__(self, images: jax.Array, train: bool, tower_train: bool | None = None):
    tower_train = train if tower_train is None else tower_train
    out = self.image(images, tower_train)
    return self.head(out.regions.astype(jnp.float32), out.global_emb.astype(jnp.float32), train)


def init_classifier(
  image_tower: nn.Module,
  image_variables: Mapping[str, Any],
  num_classes: int,
  image_size: int,
  config: ml_collections.ConfigDict,
) -> tuple[ImageClassifier, dict]:
  """The classifier with the tower's pre-trained `image_variables` ({params, batch_stats} of the
  tower) and a freshly initialised head."""
  model = ImageClassifier(
    image=image_tower,
    head=ClassifierHead(num_classes, hidden=config.hidden, dropout=config.dropout),
  )
  dummy = jnp.zeros((1, image_size, image_size, 1), jnp.float32)
  variables = model.init(jax.random.key(config.seed), dummy, train=False)
  variables = jax.tree.map(np.asarray, dict(variables))
  params = dict(variables["params"])
  params["image"] = image_variables["params"]
  batch_stats = dict(variables.get("batch_stats", {}))
  if "batch_stats" in image_variables:
    batch_stats["image"] = image_variables["batch_stats"]
  _check_same_shapes(variables["params"]["image"], params["image"], "params")
  return model, {"params": params, "batch_stats": batch_stats}


def _check_same_shapes(expected, given, what: str) -> None:
  shapes = lambda t: jax.tree.map(lambda x: tuple(np.shape(x)), t)
  if jax.tree.structure(expected) != jax.tree.structure(given) or shapes(expected) != shapes(given):
    raise ValueError(f"the pre-trained image tower's {what} do not fit the tower's structure")


def loss_weights(targets: np.ndarray, mask: np.ndarray, cap: float, no_finding: int | None):
  """(pos_weight [C], class_weight [C]) as the original computes them from train counts: positives
  weighted by min(n_nofinding / n_c, cap) (min((N - n_c) / n_c, cap) without a No Finding column
  or when it has no positives), each label by (N - n_c) / N."""
  counted = np.where(mask, targets, 0.0)
  n_c = counted.sum(0)
  n = mask.sum(0).astype(np.float64)
  baseline = counted[:, no_finding].sum() if no_finding is not None else 0.0
  reference = baseline if baseline > 0 else (n - n_c)
  pos_weight = np.minimum(reference / np.maximum(n_c, 1.0), cap)
  class_weight = (n - n_c) / np.maximum(n, 1.0)
  return pos_weight.astype(np.float32), class_weight.astype(np.float32)


def weighted_bce(logits, targets, mask, pos_weight, class_weight) -> jax.Array:
  """Mean over the unmasked entries of class_weight * BCE-with-logits(pos_weight)."""
  log_p = jax.nn.log_sigmoid(logits)
  log_not_p = jax.nn.log_sigmoid(-logits)
  loss = -(pos_weight * targets * log_p + (1.0 - targets) * log_not_p) * class_weight
  mask = mask.astype(jnp.float32)
  return jnp.sum(loss * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """Global-norm clipping, then per part (head / tower) L2 + Adam at its own rate, step decay."""

  def schedule(rate):
    return optax.piecewise_constant_schedule(
      rate, {config.lr_drop_epoch * steps_per_epoch: config.lr_gamma}
    )

  def part(rate):
    return optax.chain(
      optax.add_decayed_weights(config.weight_decay),
      optax.scale_by_adam(),
      optax.scale_by_learning_rate(schedule(rate)),
    )

  backbone = optax.set_to_zero() if config.freeze_backbone else part(config.backbone_learning_rate)
  return optax.chain(
    optax.clip_by_global_norm(config.clip_norm),
    optax.multi_transform(
      {"head": part(config.learning_rate), "image": backbone},
      lambda params: {part_name: _labelled(tree, part_name) for part_name, tree in params.items()},
    ),
  )


def _labelled(tree, label: str):
  """`tree` with every leaf replaced by `label` (optax.multi_transform's parameter labels)."""
  return jax.tree.map(lambda _: label, tree)


@dataclasses.dataclass
class FinetuneResult:
  variables: dict  # the kept parameters (best validation epoch, else the last)
  train_losses: list[float]  # per step
  epoch_validation: list[float]  # validation mean AUROC per epoch (nan when unscored)
  best_epoch: int


class Finetuner:
  """Trains an `ImageClassifier` on batches of {image, labels(CheXpert-style), valid}."""

  def __init__(
    self,
    model: ImageClassifier,
    variables: dict,
    config: ml_collections.ConfigDict,
    *,
    steps_per_epoch: int,
    pos_weight: np.ndarray,
    class_weight: np.ndarray,
  ):
    self.model, self.config = model, config
    self.steps_per_epoch = steps_per_epoch
    self.optimizer = make_optimizer(config, steps_per_epoch)
    self.params = variables["params"]
    self.batch_stats = variables["batch_stats"]
    self.opt_state = self.optimizer.init(self.params)
    self._step = jax.jit(self._train_step)
    self._predict = jax.jit(self._logits)
    self._weights = (jnp.asarray(pos_weight), jnp.asarray(class_weight))
    self._rng = jax.random.key(config.seed + 1)

  def _train_step(self, params, batch_stats, opt_state, images, targets, mask, rng):
    tower_train = not self.config.freeze_backbone

    def loss_fn(p):
      logits, updates = self.model.apply(
        {"params": p, "batch_stats": batch_stats},
        images,
        train=True,
        tower_train=tower_train,
        rngs={"dropout": rng},
        mutable=["batch_stats"],
      )
      return weighted_bce(logits, targets, mask, *self._weights), updates

    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates_p, opt_state = self.optimizer.update(grads, opt_state, params)
    new_stats = updates.get("batch_stats", batch_stats) if tower_train else batch_stats
    return optax.apply_updates(params, updates_p), new_stats, opt_state, loss

  def _logits(self, params, batch_stats, images):
    return self.model.apply({"params": params, "batch_stats": batch_stats}, images, train=False)

  @property
  def variables(self) -> dict:
    return {"params": self.params, "batch_stats": self.batch_stats}

  def train_steps(self, batches: Iterator[Mapping[str, np.ndarray]], num_steps: int) -> list[float]:
    """Runs `num_steps` updates on `batches`; returns the loss of each."""
    losses = []
    for _ in range(num_steps):
      batch = next(batches)
      targets, mask = targets_from_labels(batch["labels"])
      mask = mask & np.asarray(batch["valid"], bool)[:, None]
      self._rng, rng = jax.random.split(self._rng)
      self.params, self.batch_stats, self.opt_state, loss = self._step(
        self.params, self.batch_stats, self.opt_state, batch["image"], targets, mask, rng
      )
      losses.append(float(loss))
    return losses

  def predict(self, images: Iterable[np.ndarray], variables: dict | None = None) -> np.ndarray:
    """Sigmoid probabilities [N, C] of batches of model-input images."""
    v = self.variables if variables is None else variables
    out = [np.asarray(self._predict(v["params"], v["batch_stats"], im)) for im in images]
    return 1.0 / (1.0 + np.exp(-np.concatenate(out).astype(np.float64)))

  def fit(
    self,
    batches: Iterator[Mapping[str, np.ndarray]],
    validate: Callable[[Finetuner], float] | None = None,
  ) -> FinetuneResult:
    """`config.epochs` epochs; after each, `validate(self)` (a mean AUROC) picks the kept epoch."""
    losses, scores = [], []
    best, best_epoch = -math.inf, self.config.epochs - 1
    kept = self.variables
    for epoch in range(self.config.epochs):
      losses += self.train_steps(batches, self.steps_per_epoch)
      score = validate(self) if validate is not None else math.nan
      scores.append(score)
      if validate is None or (not math.isnan(score) and score > best):
        best, best_epoch, kept = (score if validate else best), epoch, self.variables
    return FinetuneResult(kept, losses, scores, best_epoch)
