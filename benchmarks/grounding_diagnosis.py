"""Why a trained run grounds (or not): its maps, what its vectors know, and its attention's state.

    python benchmarks/grounding_diagnosis.py --workdir workdirs/default

On the held-out phantoms of the run's config (exact boxes and findings), from the run's latest
checkpoint, three readings, each separating one cause from the others:

1. Pointing game of several maps of each finding phrase over the region grid (docs/grounding.md's
   metric): the evaluator's region-phrase cosine; the raw dot product (a CAM-style map); the
   cosine after taking out each cell's mean over the split (the position component); and a
   map that reads no text at all, how far each cell's vector is from that cell's mean over the
   split ("anomaly"). If even the text-free map misses the boxes, the region features do not
   localise the findings and no alignment can: the cause is the image features.
2. What the vectors know: a ridge-regression probe per finding kind (fit on the first two
   thirds of the split, AUC on the rest) from the global image vector and from the sentence
   vector. A kind the sentence vectors separate and the image vectors do not is one the text
   tower has learnt and the image tower has not.
3. The region-word attention's first softmax (over the words, per region; losses.md) on matched
   pairs: the share of regions whose top word takes >= 0.99 of it (saturated: the gradient
   through that softmax vanishes) and the pieces the regions pick most.

Numbers, not pass/fail.
"""

from __future__ import annotations

import argparse
import collections
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np


def unit(x: np.ndarray) -> np.ndarray:
  """x / |x| along the last axis (zero vectors stay zero)."""
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def anomaly_maps(regions: np.ndarray) -> np.ndarray:
  """[N, h, w]: the distance of each cell's vector from that cell's mean over the N images."""
  return np.linalg.norm(regions - regions.mean(0, keepdims=True), axis=-1)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
  """Area under the ROC curve of `scores` for binary `labels` (ties by rank order)."""
  labels = np.asarray(labels, bool)
  if labels.all() or not labels.any():
    return float("nan")
  ranks = np.empty(len(scores))
  ranks[np.argsort(scores, kind="stable")] = np.arange(len(scores))
  positives = labels.sum()
  return float((ranks[labels].mean() - (positives - 1) / 2) / (~labels).sum())


def probe_auc(features: np.ndarray, labels: np.ndarray, ridge: float = 0.01) -> float:
  """Held-out AUC of a ridge-regression probe: fit on the first 2/3 of the rows (standardised
  features, penalty `ridge` times the number of rows), scored on the last 1/3."""
  x = np.asarray(features, np.float64)
  x = (x - x.mean(0)) / (x.std(0) + 1e-6)
  y = np.asarray(labels, np.float64)
  fit = np.arange(len(x)) < (2 * len(x)) // 3
  a = x[fit]
  w = np.linalg.solve(a.T @ a + ridge * len(a) * np.eye(x.shape[1]), a.T @ (y[fit] - y[fit].mean()))
  return auc(x[~fit] @ w, y[~fit] > 0.5)


def word_softmax(regions: np.ndarray, words: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Q [R, K_valid] of one matched pair: softmax over the valid words of region . word."""
  p = regions @ words[mask].T
  q = np.exp(p - p.max(1, keepdims=True))
  return q / q.sum(1, keepdims=True)


def pointing_games(
  maps_by_kind: Mapping[str, Callable[[int], np.ndarray]], phrases: Sequence, image_size: int
) -> dict[str, dict[str, float]]:
  """{map kind: {"all" | finding: pointing game}} of grid maps (phrase index -> [h, w])."""
  from jimte.evaluate import grounding, maps

  masks = [maps.box_mask(p.boxes, image_size, image_size) for p in phrases]
  findings = np.array([p.finding for p in phrases])
  out = {}
  for kind, grid_of in maps_by_kind.items():
    heats = maps.grid_to_pixels(
      np.stack([grid_of(i) for i in range(len(phrases))]), *masks[0].shape
    )
    hits = np.array([grounding.pointing_hit(h, m) for h, m in zip(heats, masks, strict=True)])
    out[kind] = {"all": float(hits.mean())}
    out[kind].update({f: float(hits[findings == f].mean()) for f in sorted(set(findings))})
  return out


def encode_held_out(workdir: str):
  """The run's model on its config's held-out phantoms: (model, encoded arrays, texts, findings)."""
  import jax

  from data_pipeline import phantoms
  from jimte import data as data_lib
  from jimte.inference import JimteModel

  model = JimteModel.from_workdir(workdir)
  config = model.config
  if config.data.source != "synthetic":
    raise ValueError(f"{workdir}: the diagnosis needs the synthetic set's boxes (data.source)")
  split = phantoms.generate_split(
    config.data.num_eval,
    split="test",
    seed=config.data.seed,
    config=data_lib.phantom_config(config.data),
  )
  module = model.module
  apply = jax.jit(lambda v, x, t: module.apply(v, x, t, train=False))
  images = np.stack([model.preprocess(image)[0] for image in split["image"]])
  tokens = model.tokenizer.encode(list(split["text"]))
  parts = collections.defaultdict(list)
  for start in range(0, len(images), 32):
    out = apply(model.variables, images[start : start + 32], tokens[start : start + 32])
    for key in ("image_global", "regions", "sentence", "words", "word_mask"):
      parts[key].append(np.asarray(getattr(out, key)))
  encoded = {k: np.concatenate(v) for k, v in parts.items()}
  encoded["tokens"] = tokens
  encoded["index"] = np.arange(len(images))
  return model, encoded, list(split["text"]), list(split["findings"])


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--ridge", type=float, default=0.01, help="probe penalty per row")
  args = parser.parse_args(argv)

  from jimte.evaluate import grounding

  model, enc, texts, findings = encode_held_out(args.workdir)
  phrases, skipped = grounding.finding_phrases(enc, model.tokenizer, texts, findings)
  regions = enc["regions"].astype(np.float32)
  n, h, w, d = regions.shape
  flat = regions.reshape(n, h * w, d)
  centred = flat - flat.mean(0, keepdims=True)
  anomaly = anomaly_maps(regions).reshape(n, h * w)
  words = enc["words"].astype(np.float32)

  def phrase_vector(p, normalise=True):
    vectors = words[p.row, list(p.slots)]
    return unit(unit(vectors).mean(0)) if normalise else vectors.mean(0)

  kinds = {
    "cosine (the evaluator's)": lambda i: unit(flat[phrases[i].row]) @ phrase_vector(phrases[i]),
    "dot product": lambda i: flat[phrases[i].row] @ phrase_vector(phrases[i], False),
    "cosine, cells centred": lambda i: unit(centred[phrases[i].row]) @ phrase_vector(phrases[i]),
    "anomaly (no text)": lambda i: anomaly[phrases[i].row],
  }
  games = pointing_games(
    {k: (lambda i, f=f: f(i).reshape(h, w)) for k, f in kinds.items()}, phrases, model.image_size
  )
  names = sorted({p.finding for p in phrases})
  print(
    f"{args.workdir} (step {model.step}): {len(phrases)} finding phrases of {n} held-out phantoms, "
    f"{sum(skipped.values())} skipped, {h}x{w} regions"
  )
  print("\npointing game of each map")
  print("| map | all | " + " | ".join(names) + " |")
  print("|---|---|" + "---|" * len(names))
  for kind, game in games.items():
    print(f"| {kind} | {game['all']:.3f} | " + " | ".join(f"{game[f]:.2f}" for f in names) + " |")

  labels = {f: np.zeros(n, bool) for f in names}
  for p in phrases:
    labels[p.finding][p.row] = True
  print(f"\nheld-out AUC of a ridge probe per finding (fit on {(2 * n) // 3}, scored on the rest)")
  print("| vector | " + " | ".join(names) + " |")
  print("|---|" + "---|" * len(names))
  for name, key in (("global image vector", "image_global"), ("sentence vector", "sentence")):
    aucs = [probe_auc(enc[key], labels[f], args.ridge) for f in names]
    print(f"| {name} | " + " | ".join(f"{a:.2f}" for a in aucs) + " |")

  saturated, picked, finding_slots = [], collections.Counter(), 0
  phrase_slots = collections.defaultdict(set)
  for p in phrases:
    phrase_slots[p.row].update(p.slots)
  mask = enc["word_mask"].astype(bool)
  for row in range(n):
    valid = np.flatnonzero(mask[row])
    q = word_softmax(flat[row], words[row], mask[row])
    saturated.append(float((q.max(1) >= 0.99).mean()))
    top = valid[q.argmax(1)]
    finding_slots += int(sum(int(s) in phrase_slots[row] for s in top))
    pieces = enc["tokens"][row, 1:][top]
    picked.update(model.tokenizer.id_to_piece(int(t)) for t in pieces)
  total = n * h * w
  print(
    f"\nword softmax per region (matched pairs): {np.mean(saturated):.1%} of regions give >= 0.99 "
    f"to one word; {finding_slots / total:.1%} of regions pick a finding phrase's piece; the "
    "pieces picked most: "
    + ", ".join(f"{piece!r} {c / total:.1%}" for piece, c in picked.most_common(6))
  )


if __name__ == "__main__":
  main()
