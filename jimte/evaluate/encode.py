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

from jimte.models.text import SENTENCE_POOLINGS

ENCODED_KEYS = ("image_global", "regions", "sentence", "words", "word_mask")
# The text tower's sentence vector under its other pooling (jimte.models.text.SENTENCE_POOLINGS),
# with the same parameters: the original release offers both (`pool='cls'` or `'avg'`, one
# `sent_fc`), and its retrieval notebook scores the one its checkpoint was not trained with.
OTHER_POOLING_KEY = "sentence_other_pooling"


def other_pooling(model) -> str | None:
  """The sentence pooling the text tower of `model` was not built with, or None where the tower
  has no `sentence_pooling` of `jimte.models.text.SENTENCE_POOLINGS`."""
  pooling = getattr(getattr(model, "text", None), "sentence_pooling", None)
  if pooling not in SENTENCE_POOLINGS:
    return None
  return next(p for p in SENTENCE_POOLINGS if p != pooling)


def make_encode_fn(model) -> Callable:
  """A jitted function (variables, image, tokens) -> the joint outputs in eval mode, plus the
  sentence vector under the text tower's other pooling (`OTHER_POOLING_KEY`) where it has one;
  make it once per model (each call of this makes a new function, compiled anew)."""
  pooling = other_pooling(model)
  other = None if pooling is None else model.clone(text=model.text.clone(sentence_pooling=pooling))

  def encode(variables, image, tokens):
    out = model.apply(variables, image, tokens, train=False)
    result = {
      "image_global": out.image_global,
      "regions": out.regions,
      "sentence": out.sentence,
      "words": out.words,
      "word_mask": out.word_mask,
    }
    if other is not None:
      text = other.apply(variables, tokens, train=False, method=other.encode_text)
      result[OTHER_POOLING_KEY] = text.sentence
    return result

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
