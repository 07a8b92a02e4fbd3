"""Multi-label classification metrics and the linear probe on frozen embeddings.

* `auroc`: the area under the ROC curve as the Mann–Whitney statistic (ties count one half), equal
  to scikit-learn's `roc_auc_score`; a score column with only one class present is an error.
* `targets_from_labels`: CheXpert-style label rows (1 / 0 / -1 / nan) -> binary targets and a mask
  of the entries that count (uncertain ones are left out; unmentioned ones are negatives).
* `per_class_auroc` / `mean_without_no_finding`: the table every classification mode reports.
* `low_data_subset`: deterministic, nested subsets of the train split (1% / 10%), topped up so every
  class the split has positives of keeps a minimum of them.
* `fit_linear_probe`: logistic regression per label on frozen features (optax L-BFGS), its L2 weight
  chosen per label on the validation split.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from data_pipeline.names import CHEXPERT_OBSERVATIONS

NO_FINDING = "No Finding"
L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # probe weight decays tried on validation


# ------------------------------------------------------------------------------------------ AUROC
def auroc(targets: np.ndarray, scores: np.ndarray) -> float:
  """Area under the ROC curve of `scores` for binary `targets` (1 positive, 0 negative).

  Computed as the Mann–Whitney U statistic from average ranks, so tied scores count one half — the
  value `sklearn.metrics.roc_auc_score` gives. Raises `ValueError` when only one class is present
  (the area is undefined; sklearn raises too).
  """
  targets = np.asarray(targets).reshape(-1)
  scores = np.asarray(scores, np.float64).reshape(-1)
  if targets.shape != scores.shape:
    raise ValueError(f"targets {targets.shape} and scores {scores.shape} differ in length")
  if not np.all((targets == 0) | (targets == 1)):
    raise ValueError("targets must be 0 or 1")
  if not np.all(np.isfinite(scores)):
    raise ValueError("scores must be finite")
  positive = targets == 1
  n_pos = int(positive.sum())
  n_neg = len(targets) - n_pos
  if n_pos == 0 or n_neg == 0:
    raise ValueError(
      f"AUROC is undefined with only one class present ({n_pos} positives, {n_neg} negatives)"
    )
  ranks = _average_ranks(scores)
  u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
  """1-based ranks with ties given the mean of the ranks they span."""
  order = np.argsort(values, kind="mergesort")
  sorted_values = values[order]
  starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
  ends = np.r_[starts[1:], len(values)]  # exclusive
  mean_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
  ranks = np.empty(len(values), np.float64)
  ranks[order] = np.repeat(mean_rank, ends - starts)
  return ranks


# ---------------------------------------------------------------------------------------- targets
def targets_from_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """CheXpert-style labels [N, C] (1 positive, 0 negative, -1 uncertain, nan unmentioned) ->
  (binary targets float32 [N, C], mask bool [N, C]).

  Unmentioned counts as negative (a report that does not name a finding is read as its absence);
  uncertain entries are masked out of training losses and of the AUROC of that class.
  """
  labels = np.asarray(labels, np.float32)
  known = np.isnan(labels) | np.isin(labels, (-1.0, 0.0, 1.0))
  if not known.all():
    bad = sorted(set(labels[~known].tolist()))[:5]
    raise ValueError(f"labels must be 1, 0, -1 or nan, got {bad}")
  targets = (labels == 1.0).astype(np.float32)
  mask = labels != -1.0
  return targets, mask


@dataclasses.dataclass(frozen=True)
class ClassTable:
  """Per-class AUROC (nan where a class cannot be scored, with the reason) and counts."""

  names: tuple[str, ...]
  auroc: np.ndarray  # float64 [C]
  positives: np.ndarray  # int [C] positives counted
  negatives: np.ndarray  # int [C]
  notes: tuple[str, ...]  # '' or why the class has no AUROC

  @property
  def mean_without_no_finding(self) -> float:
    return mean_without_no_finding(self.names, self.auroc)

  def as_dict(self) -> dict:
    return {
      "per_class": {
        name: {
          "auroc": None if math.isnan(a) else float(a),
          "positives": int(p),
          "negatives": int(n),
          **({"note": note} if note else {}),
        }
        for name, a, p, n, note in zip(
          self.names, self.auroc, self.positives, self.negatives, self.notes, strict=True
        )
      },
      "mean_auroc_without_no_finding": _none_if_nan(self.mean_without_no_finding),
      "num_classes_in_mean": int(
        sum(1 for n, a in zip(self.names, self.auroc, strict=True) if n != NO_FINDING and a == a)
      ),
    }


def per_class_auroc(
  targets: np.ndarray,
  scores: np.ndarray,
  mask: np.ndarray | None = None,
  names: Sequence[str] = CHEXPERT_OBSERVATIONS,
) -> ClassTable:
  """AUROC of each column of `scores` [N, C] against `targets` [N, C] over the rows `mask` keeps.

  A class with no positive or no negative among its rows gets nan (and a note), never an error, so a
  table over a small split still reports the classes it can.
  """
  targets, scores = np.asarray(targets), np.asarray(scores)
  if targets.shape != scores.shape or targets.ndim != 2 or targets.shape[1] != len(names):
    raise ValueError(
      f"targets {targets.shape} and scores {scores.shape} must both be [N, {len(names)}]"
    )
  mask = np.ones(targets.shape, bool) if mask is None else np.asarray(mask, bool)
  values, pos, neg, notes = [], [], [], []
  for c in range(len(names)):
    t, s = targets[mask[:, c], c], scores[mask[:, c], c]
    n_pos = int((t == 1).sum())
    pos.append(n_pos)
    neg.append(len(t) - n_pos)
    if n_pos == 0 or n_pos == len(t):
      values.append(math.nan)
      notes.append("no positives" if n_pos == 0 else "no negatives")
    else:
      values.append(auroc(t, s))
      notes.append("")
  return ClassTable(tuple(names), np.array(values), np.array(pos), np.array(neg), tuple(notes))


def mean_without_no_finding(names: Sequence[str], values: np.ndarray) -> float:
  """Mean of the scored (non-nan) classes other than "No Finding"; nan when none is scored."""
  kept = [v for n, v in zip(names, values, strict=True) if n != NO_FINDING and not math.isnan(v)]
  return float(np.mean(kept)) if kept else math.nan


def _none_if_nan(x: float) -> float | None:
  return None if math.isnan(x) else float(x)


# ------------------------------------------------------------------------------ low-data subsets
@dataclasses.dataclass(frozen=True)
class Subset:
  """Rows of the train split kept for one fraction, and how the minimum of positives was met."""

  fraction: float
  indices: np.ndarray  # int64, sorted
  target_size: int  # round(fraction * N), at least 1
  added: dict[str, int]  # class -> examples added to reach min_positives
  short: dict[str, int]  # class -> positives in the whole split, where that is < min_positives

  def as_dict(self) -> dict:
    return {
      "fraction": self.fraction,
      "size": int(len(self.indices)),
      "target_size": self.target_size,
      "added_for_min_positives": dict(self.added),
      "classes_short_of_min_positives": dict(self.short),
    }


def low_data_subset(
  targets: np.ndarray,
  fraction: float,
  *,
  seed: int = 0,
  min_positives: int = 2,
  mask: np.ndarray | None = None,
  names: Sequence[str] = CHEXPERT_OBSERVATIONS,
) -> Subset:
  """The first round(fraction * N) rows of one seeded permutation of the split, then, for each class
  with fewer than `min_positives` (counted where `mask` holds), its next positives in that order.

  The permutation depends only on (seed, N), so subsets are deterministic and nested (1% within
  10% within 100%). Classes the whole split has fewer positives of than the minimum keep them all
  and are reported in `short`.
  """
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"fraction must be in (0, 1], got {fraction}")
  targets = np.asarray(targets)
  n = len(targets)
  if n == 0:
    raise ValueError("the train split is empty")
  mask = np.ones(targets.shape, bool) if mask is None else np.asarray(mask, bool)
  order = np.random.default_rng([seed, n]).permutation(n)
  target_size = max(1, round(fraction * n))
  chosen = np.zeros(n, bool)
  chosen[order[:target_size]] = True
  positive = (targets == 1) & mask
  added: dict[str, int] = {}
  short: dict[str, int] = {}
  for c, name in enumerate(names):
    total = int(positive[:, c].sum())
    if total < min_positives:
      short[name] = total
    missing = min(min_positives, total) - int(positive[chosen, c].sum())
    if missing > 0:
      extra = [i for i in order if positive[i, c] and not chosen[i]][:missing]
      chosen[extra] = True
      added[name] = len(extra)
  return Subset(float(fraction), np.flatnonzero(chosen), target_size, added, short)


# --------------------------------------------------------------------------------- linear probe
@dataclasses.dataclass(frozen=True)
class LinearProbe:
  """Logistic regression per label on standardised features: score = x_std @ weights + bias."""

  mean: np.ndarray  # [D] feature mean of the train rows
  scale: np.ndarray  # [D] feature std of the train rows (1 where constant)
  weights: np.ndarray  # [D, C]
  bias: np.ndarray  # [C]
  l2: np.ndarray  # [C] the weight decay chosen for each label
  validation_auroc: np.ndarray  # [C] validation AUROC at the chosen weight decay (nan: unscored)

  def logits(self, features: np.ndarray) -> np.ndarray:
    x = (np.asarray(features, np.float32) - self.mean) / self.scale
    return x @ self.weights + self.bias


def fit_linear_probe(
  train_x: np.ndarray,
  train_y: np.ndarray,
  train_mask: np.ndarray,
  val_x: np.ndarray,
  val_y: np.ndarray,
  val_mask: np.ndarray,
  *,
  l2_grid: Sequence[float] = L2_GRID,
  class_balanced: bool = False,
  iterations: int = 200,
) -> LinearProbe:
  """Fits one logistic regression per label for every weight decay of `l2_grid` and keeps, per
  label, the one with the best validation AUROC (ties: the larger decay).

  Loss per label: mean over its train rows of the binary cross-entropy, plus l2 / 2 * |w|^2 (bias
  not decayed). `class_balanced` weighs positives and negatives of each label to equal totals.
  A label whose validation rows are all of one class takes the decay with the best mean
  validation AUROC over the others (the largest decay when no label can be scored).
  """
  train_x = np.asarray(train_x, np.float32)
  mean = train_x.mean(0)
  scale = train_x.std(0)
  scale = np.where(scale > 1e-8, scale, 1.0).astype(np.float32)
  xs = (train_x - mean) / scale
  weights = _example_weights(
    np.asarray(train_y, np.float32), np.asarray(train_mask), class_balanced
  )
  grid = jnp.asarray(np.asarray(l2_grid, np.float32))
  w_all, b_all = _fit_grid(
    jnp.asarray(xs), jnp.asarray(train_y, jnp.float32), weights, grid, iterations
  )
  w_all, b_all = np.asarray(w_all), np.asarray(b_all)  # [G, D, C], [G, C]
  val_xs = (np.asarray(val_x, np.float32) - mean) / scale
  num_classes = train_y.shape[1]
  val_auc = np.full((len(l2_grid), num_classes), np.nan)
  for g in range(len(l2_grid)):
    scores = val_xs @ w_all[g] + b_all[g]
    names = tuple(str(c) for c in range(num_classes))
    val_auc[g] = per_class_auroc(val_y, scores, val_mask, names).auroc
  fallback = len(l2_grid) - 1
  mean_auc = np.array([np.nanmean(row) if np.isfinite(row).any() else -np.inf for row in val_auc])
  if np.isfinite(mean_auc).any():
    fallback = int(len(l2_grid) - 1 - np.argmax(mean_auc[::-1]))
  chosen = np.empty(num_classes, np.int64)
  for c in range(num_classes):
    column = val_auc[:, c]
    if np.isfinite(column).any():
      chosen[c] = len(l2_grid) - 1 - int(np.nanargmax(column[::-1]))
    else:
      chosen[c] = fallback
  classes = np.arange(num_classes)
  return LinearProbe(
    mean=mean,
    scale=scale,
    weights=w_all[chosen, :, classes].T,
    bias=b_all[chosen, classes],
    l2=np.asarray(l2_grid, np.float64)[chosen],
    validation_auroc=val_auc[chosen, classes],
  )


def _example_weights(targets: np.ndarray, mask: np.ndarray, balanced: bool) -> jnp.ndarray:
  """Per-entry loss weights [N, C]: 1/n_c for the kept rows of class c (so each label's loss is a
  mean), or with `balanced` 1/(2 n_pos) and 1/(2 n_neg)."""
  mask = mask.astype(np.float32)
  if balanced:
    pos = targets * mask
    neg = (1.0 - targets) * mask
    w = pos / np.maximum(pos.sum(0), 1.0) / 2.0 + neg / np.maximum(neg.sum(0), 1.0) / 2.0
  else:
    w = mask / np.maximum(mask.sum(0), 1.0)
  return jnp.asarray(w, jnp.float32)


def _fit_grid(x, y, weights, grid, iterations: int):
  """L-BFGS fits of all labels at once, one per weight decay of `grid` (vmapped)."""
  return jax.jit(_fit_many, static_argnums=4)(x, y, weights, grid, iterations)


def _fit_many(x, y, weights, grid, iterations):
  return jax.vmap(lambda l2: _fit_one(x, y, weights, l2, iterations))(grid)


def _fit_one(x, y, weights, l2, iterations):
  """Minimises sum_c [sum_i w_ic BCE(x_i . w_c + b_c, y_ic) + l2/2 |w_c|^2] with L-BFGS."""
  params = (jnp.zeros((x.shape[1], y.shape[1]), jnp.float32), jnp.zeros(y.shape[1], jnp.float32))

  def loss(p):
    w, b = p
    logits = x @ w + b
    bce = optax.sigmoid_binary_cross_entropy(logits, y)
    return jnp.sum(weights * bce) + 0.5 * l2 * jnp.sum(w * w)

  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  def step(_, carry):
    p, state = carry
    value, grad = value_and_grad(p, state=state)
    updates, state = solver.update(grad, state, p, value=value, grad=grad, value_fn=loss)
    return optax.apply_updates(p, updates), state

  params, _ = jax.lax.fori_loop(0, iterations, step, (params, solver.init(params)))
  return params
