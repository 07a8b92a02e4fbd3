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

from jimte.anatomy.pooling import pool_boxes
from jimte.models.text import other_head_pooling

ENCODED_KEYS = ("image_global", "regions", "sentence", "words", "word_mask")
# Anatomy entries of a batch kept beside the embeddings when present (jimte/anatomy/table.py).
ANATOMY_KEYS = ("region_codes", "region_text_ids")
# The text tower's sentence vector under its other pooling (jimte.models.text.HEAD_POOLINGS),
# with the same parameters: the original release offers both (`pool='cls'` or `'avg'`, one
# `sent_fc`), and its retrieval notebook scores the one its checkpoint was not trained with.
OTHER_POOLING_KEY = "sentence_other_pooling"


def other_pooling(model) -> str | None:
  """The other of the text tower's "first" / "mean" sentence poolings (the same sentence head on
  the other input), or None where the tower pools otherwise ("word_mean") or has no such field."""
  return other_head_pooling(getattr(getattr(model, "text", None), "sentence_pooling", None))


def make_encode_fn(model) -> Callable:
  """A jitted function (variables, image, tokens, anatomy=None) -> the joint outputs in eval mode,
  plus the sentence vector under the text tower's other pooling (`OTHER_POOLING_KEY`) where it has
  one; with `anatomy` (a batch's `region_boxes` and `region_tokens`) also the region embeddings
  (`anatomy` [b, 29, D]: the anatomy head's, or the grid pooled in the boxes for a model without
  one) and region-text vectors (`region_text` [b, 29, D]). Make it once per model."""
  pooling = other_pooling(model)
  other = None if pooling is None else model.clone(text=model.text.clone(sentence_pooling=pooling))

  has_head = bool(getattr(getattr(model, "image", None), "anatomy_head", False))

  def encode(variables, image, tokens, anatomy=None):
    boxes = None if anatomy is None or not has_head else anatomy["region_boxes"]
    out = model.apply(variables, image, tokens, train=False, boxes=boxes)
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
    if anatomy is not None:
      region_tokens = anatomy["region_tokens"]
      b, k, length = region_tokens.shape
      text = model.apply(
        variables, region_tokens.reshape(b * k, length), train=False, method=model.encode_text
      )
      # Without an anatomy head (a stage-1 model): the region grid pooled in the boxes, unprojected.
      pooled = out.anatomy if has_head else pool_boxes(out.regions, anatomy["region_boxes"])
      result["anatomy"] = pooled
      result["region_text"] = text.sentence.reshape(b, k, -1)
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
    if "region_boxes" in batch:
      anatomy = {k: batch[k] for k in ("region_boxes", "region_tokens")}
      out = encode(variables, batch["image"], batch["tokens"], anatomy)
    else:
      out = encode(variables, batch["image"], batch["tokens"])
    out = {
      **out,
      "tokens": batch["tokens"],
      "index": batch["index"],
      "valid": batch["valid"],
      **{k: batch[k] for k in (*extra_keys, *ANATOMY_KEYS) if k in batch},
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
