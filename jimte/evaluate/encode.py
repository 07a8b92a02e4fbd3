"""Encodes a whole evaluation split with both towers (eval mode) into host numpy arrays.

Each host feeds its share of the split; outputs are gathered across hosts so every process holds the
full, padding-free arrays in split order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

ENCODED_KEYS = ("image_global", "regions", "sentence", "words", "word_mask")


def make_encode_fn(model) -> Callable:
  """A jitted function (variables, image, tokens) -> the joint outputs in eval mode; make it once
  per model (each call of this makes a new function, compiled anew)."""

  def encode(variables, image, tokens):
    out = model.apply(variables, image, tokens, train=False)
    return {
      "image_global": out.image_global,
      "regions": out.regions,
      "sentence": out.sentence,
      "words": out.words,
      "word_mask": out.word_mask,
    }

  return jax.jit(encode)


def encode_split(
  encode: Callable,
  variables: Mapping[str, Any],
  batches: Iterable[Mapping[str, jax.Array]],
  *,
  keep_images: int = 0,
  extra_keys: Iterable[str] = (),
) -> dict[str, np.ndarray]:
  """Runs `encode` (from `make_encode_fn`) over every batch; returns valid rows only, ordered by
  example index.

  `keep_images` keeps the first that many input images (for pictures); `extra_keys` are batch
  entries (e.g. tokens, ground truth) gathered alongside the embeddings.
  """
  collected: dict[str, list[np.ndarray]] = {}
  kept_images = 0
  for batch in batches:
    out = encode(variables, batch["image"], batch["tokens"])
    out = {
      **out,
      "tokens": batch["tokens"],
      "index": batch["index"],
      "valid": batch["valid"],
      **{k: batch[k] for k in extra_keys if k in batch},
    }
    if kept_images < keep_images:
      out["image"] = batch["image"]
    host = {k: _to_host(v) for k, v in out.items()}
    for k, v in host.items():
      collected.setdefault(k, []).append(v)
    if "image" in host:
      kept_images += int(host["valid"].sum())
  if not collected:
    raise ValueError("the evaluation split yielded no batches")
  arrays = {k: np.concatenate(v) for k, v in collected.items() if k != "image"}
  valid = arrays.pop("valid").astype(bool)
  order = np.argsort(arrays["index"][valid], kind="stable")
  result = {k: v[valid][order] for k, v in arrays.items()}
  if "image" in collected:
    images = np.concatenate(collected["image"])
    n_img = len(images)
    img_valid = valid[:n_img]
    img_index = arrays["index"][:n_img][img_valid]
    img_order = np.argsort(img_index, kind="stable")[:keep_images]
    result["image"] = images[img_valid][img_order]
    result["image_index"] = img_index[img_order]  # example index of each kept image
  return result


def _to_host(x) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))
