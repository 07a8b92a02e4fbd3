"""Inference on a trained work dir: encode images and reports, similarities, similarity maps.

`JimteModel.from_workdir(workdir)` loads `config.json`, `tokenizer/` and a checkpoint (the latest
unless `step` is given). Images go through the training eval path's preprocessing
(`data_pipeline.input.preprocess.eval_view`), and similarity maps are mapped back to the original
image's pixel coordinates by inverting that geometry. Batches are padded to power-of-two buckets so
each tower compiles once per bucket.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np

from jimte import checkpointing
from jimte.anatomy.pooling import pool_boxes
from jimte.evaluate import maps
from jimte.image_files import XrayImage, read_xray
from jimte.models import joimternet

NORM_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class Geometry:
  """How an original [height, width] image became the model's [size, size] input: the centred
  square crop at (top, left) of side `side`, scaled by size / side."""

  height: int
  width: int
  top: int
  left: int
  side: int
  size: int

  def to_original(self, grid: np.ndarray) -> np.ndarray:
    """[..., h, w] values on the model input's grid (cell centres) -> [..., height, width] in the
    original image's pixels (bilinear; outside the crop, the nearest edge value)."""
    return maps.grid_to_pixels(
      grid, self.height, self.width, top=self.top, left=self.left, side=self.side
    )

  def box_to_input(self, boxes: np.ndarray) -> np.ndarray:
    """Boxes [..., 4] normalised [y0, x0, y1, x1] on the original image -> the same boxes
    normalised on the model input (clipped to it: the input is the centred crop)."""
    boxes = np.asarray(boxes, np.float32)
    y0, y1 = ((boxes[..., i] * self.height - self.top) / self.side for i in (0, 2))
    x0, x1 = ((boxes[..., i] * self.width - self.left) / self.side for i in (1, 3))
    return np.clip(np.stack([y0, x0, y1, x1], axis=-1), 0.0, 1.0).astype(np.float32)

  def to_input(self, row: float, col: float) -> tuple[float, float]:
    """An original pixel position (row, col) -> its position in the model input's pixels."""
    scale = self.size / self.side
    return (row - self.top) * scale, (col - self.left) * scale


def _native_window_start(length: int, size: int) -> int:
  """Where torchvision's CenterCrop(size) window starts along a side of `length` pixels, in the
  original's pixels: negative where the side is padded ((size - length) // 2 zeros before)."""
  before = max(size - length, 0) // 2
  padded = length + max(size - length, 0)
  return round((padded - size) / 2) - before


@dataclasses.dataclass(frozen=True)
class ImageEmbeddings:
  embeddings: np.ndarray  # [N, D] float32, L2-normalised global image vectors
  regions: np.ndarray | None = None  # [N, h, w, D] float32, L2-normalised region vectors


@dataclasses.dataclass(frozen=True)
class TextEmbeddings:
  embeddings: np.ndarray  # [N, D] float32, L2-normalised sentence vectors
  tokens: np.ndarray  # [N, L] int32 token ids
  words: np.ndarray | None = None  # [N, L-1, D] float32, L2-normalised word vectors
  word_mask: np.ndarray | None = None  # [N, L-1] bool


@dataclasses.dataclass(frozen=True)
class PhraseMaps:
  phrases: list[str]  # the phrases, in the order asked
  attention: np.ndarray  # [n, H, W] float32, original pixels: word->region attention (sums to 1)
  similarity: np.ndarray  # [n, H, W] float32, original pixels: cosine of regions to the phrase
  grid: tuple[int, int]  # the region grid the maps were upsampled from
  geometry: Geometry | None = None


@dataclasses.dataclass(frozen=True)
class SimilarityMap:
  map: np.ndarray  # [H, W] float32, original image pixels: cosine of regions to the sentence
  words: list[str]  # the text's alignment words (SentencePiece pieces), in order
  word_maps: np.ndarray  # [n_words, H, W] float32, cosine of regions to each word
  geometry: Geometry | None = None


def config_hash(config_json: str) -> str:
  """The first 16 hex digits of the sha256 of a work dir's config.json text."""
  return hashlib.sha256(config_json.encode()).hexdigest()[:16]


def buckets(n: int, batch_size: int) -> list[tuple[int, int]]:
  """(start, padded size) chunks covering n rows: full batches, then one power-of-two bucket."""
  out, start = [], 0
  while start < n:
    rows = min(batch_size, n - start)
    out.append(
      (start, rows if rows == batch_size else min(batch_size, 1 << (rows - 1).bit_length()))
    )
    start += rows
  return out


class JimteModel:
  """A trained JoImTeRNet with its config and tokenizer, for inference in eval mode."""

  def __init__(self, config, variables, tokenizer, *, step: int, config_json: str):
    self.config = config
    self.step = int(step)
    self.config_hash = config_hash(config_json)
    self.tokenizer = tokenizer
    self.image_size = int(config.image_size)
    model_config = config.model.copy_and_resolve_references()
    model_config.text.vocab_size = tokenizer.vocab_size
    self.model_config = model_config
    self.model_name = str(config.get("model_name", model_config.image.get("name", "joimternet")))
    self.embed_dim = int(model_config.embed_dim)
    self.module = joimternet.build_model(model_config)
    _check_variables(self.module, variables, self.image_size, tokenizer.max_len)
    self.variables = jax.device_put(variables)
    module = self.module
    self._image_fn = jax.jit(
      lambda v, x: module.apply(v, x, train=False, method=module.encode_image)
    )
    self._text_fn = jax.jit(lambda v, t: module.apply(v, t, train=False, method=module.encode_text))
    self.has_anatomy_head = bool(model_config.image.get("anatomy_head", False))
    self._anatomy_fn = jax.jit(self._anatomy)

  def _anatomy(self, variables, images, boxes):
    """Region embeddings [B, K, D] of boxes [B, K, 4] (model-input coordinates): the anatomy
    head's, or for a model without one the region grid pooled in the boxes."""
    module = self.module
    if self.has_anatomy_head:
      return module.apply(variables, images, False, boxes, method=module.encode_image).anatomy
    out = module.apply(variables, images, train=False, method=module.encode_image)
    return pool_boxes(out.regions, boxes)

  @classmethod
  def from_workdir(cls, workdir: str, step: int | None = None) -> JimteModel:
    """Loads `workdir/config.json`, `workdir/tokenizer` and the checkpoint at `step` (latest)."""
    from data_pipeline.tokenizer import Tokenizer

    config_path = os.path.join(workdir, "config.json")
    if not os.path.isfile(config_path):
      raise FileNotFoundError(f"{config_path}: no config.json (not a jimte work dir?)")
    with open(config_path) as f:
      config_json = f.read()
    config = ml_collections.ConfigDict(json.loads(config_json))
    tokenizer_dir = os.path.join(workdir, "tokenizer")
    if not os.path.isfile(os.path.join(tokenizer_dir, "tokenizer.json")):
      raise FileNotFoundError(f"{tokenizer_dir}: no saved tokenizer")
    tokenizer = Tokenizer.load(tokenizer_dir)
    state, meta = checkpointing.load_state_numpy(os.path.join(workdir, "checkpoints"), step)
    variables = {"params": state["params"]}
    if state.get("batch_stats"):
      variables["batch_stats"] = state["batch_stats"]
    return cls(config, variables, tokenizer, step=meta["step"], config_json=config_json)

  # ---- Images.
  def preprocess(self, image: XrayImage | str | np.ndarray) -> tuple[np.ndarray, Geometry]:
    """An image -> the eval-mode model input float32 [S, S, 1] in [-1, 1], and its geometry."""
    import tensorflow as tf

    from data_pipeline.input.preprocess import eval_view, uses_native_crop

    image = read_xray(image)
    height, width = image.pixels.shape
    levels = np.round(image.pixels * 255.0).astype(np.uint8)[..., None]  # as TFDS stores them
    native = uses_native_crop(self.config.data.get("augment", "none"))
    view = eval_view(tf.constant(levels), self.image_size, native_crop=native).numpy()
    if native:  # the S x S window at native resolution (torchvision's CenterCrop), scale 1
      geometry = Geometry(
        height,
        width,
        _native_window_start(height, self.image_size),
        _native_window_start(width, self.image_size),
        self.image_size,
        self.image_size,
      )
    else:
      side = min(height, width)
      geometry = Geometry(
        height, width, (height - side) // 2, (width - side) // 2, side, self.image_size
      )
    return view * 2.0 - 1.0, geometry

  def encode_images(
    self, images: Sequence[str | np.ndarray | XrayImage], *, regions: bool = False, batch_size=32
  ) -> ImageEmbeddings:
    """Files, arrays or `XrayImage`s -> L2-normalised global (and region) embeddings."""
    if isinstance(images, (str, np.ndarray, XrayImage)):
      raise TypeError("encode_images takes a sequence of images; wrap a single one in a list")
    arrays = np.stack([self.preprocess(x)[0] for x in images]) if len(images) else None
    if arrays is None:
      raise ValueError("encode_images got no images")
    return self.encode_image_arrays(arrays, regions=regions, batch_size=batch_size)

  def encode_image_arrays(
    self, images: np.ndarray, *, regions: bool = False, batch_size: int = 32
  ) -> ImageEmbeddings:
    """Model inputs float32 [N, S, S, 1] in [-1, 1] (as the eval pipeline gives) -> embeddings."""
    images = np.asarray(images, np.float32)
    s = self.image_size
    if images.ndim != 4 or images.shape[1:] != (s, s, 1):
      raise ValueError(f"image arrays must be [N, {s}, {s}, 1], got {images.shape}")
    glob, reg = [], []
    for start, size in buckets(len(images), batch_size):
      chunk = images[start : start + size]
      n = len(chunk)
      out = self._image_fn(self.variables, _pad(chunk, size))
      glob.append(np.asarray(out.global_emb)[:n])
      if regions:
        reg.append(np.asarray(out.regions)[:n])
    return ImageEmbeddings(
      embeddings=_l2(np.concatenate(glob)), regions=_l2(np.concatenate(reg)) if regions else None
    )

  # ---- Reports.
  def encode_reports(
    self, texts: Sequence[str], *, words: bool = False, batch_size: int = 64
  ) -> TextEmbeddings:
    """Report texts -> L2-normalised sentence (and word) embeddings, and their token ids."""
    if isinstance(texts, str):
      raise TypeError("encode_reports takes a sequence of texts; wrap a single text in a list")
    if not len(texts):
      raise ValueError("encode_reports got no texts")
    for i, t in enumerate(texts):
      if not isinstance(t, str) or not t.strip():
        raise ValueError(f"text {i} is empty: a report needs at least one word")
    tokens = self.tokenizer.encode(list(texts))
    sent, word, mask = [], [], []
    for start, size in buckets(len(tokens), batch_size):
      chunk = tokens[start : start + size]
      n = len(chunk)
      out = self._text_fn(self.variables, _pad(chunk, size))
      sent.append(np.asarray(out.sentence)[:n])
      if words:
        word.append(np.asarray(out.words)[:n])
        mask.append(np.asarray(out.word_mask)[:n])
    return TextEmbeddings(
      embeddings=_l2(np.concatenate(sent)),
      tokens=tokens,
      words=_l2(np.concatenate(word)) if words else None,
      word_mask=np.concatenate(mask).astype(bool) if words else None,
    )

  # ---- Anatomy (ALC-ITR, docs/alc_itr.md).
  def encode_anatomy(self, image, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One image and boxes [K, 4] (normalised [y0, x0, y1, x1] on the original image, e.g. atlas
    rows) -> (L2-normalised region embeddings [K, D], global embedding [D])."""
    boxes = np.asarray(boxes, np.float32)
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or not len(boxes):
      raise ValueError(f"boxes must be [K, 4] (y0, x0, y1, x1), got shape {boxes.shape}")
    if not np.all(np.isfinite(boxes)) or np.any(boxes[:, 2:] < boxes[:, :2]):
      raise ValueError(f"boxes must be finite with y1 >= y0 and x1 >= x0, got {boxes.tolist()}")
    model_input, geometry = self.preprocess(image)
    inputs = geometry.box_to_input(boxes)[None]
    regions = np.asarray(self._anatomy_fn(self.variables, model_input[None], inputs))[0]
    glob = np.asarray(self._image_fn(self.variables, model_input[None]).global_emb)[0]
    return _l2(regions), _l2(glob[None])[0]

  def region_text_length(self) -> int:
    """Tokens of a region text: the trained run's `alc.text_len` (32 for older runs)."""
    alc = self.config.get("alc") or {}
    return min(int(alc.get("text_len", 32)), self.tokenizer.max_len)

  def encode_region_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> np.ndarray:
    """Region texts (a region's report sentences, or its normal sentence) -> L2-normalised
    sentence vectors [N, D], tokenised to the region-text length training used."""
    from data_pipeline.tokenizer import Tokenizer

    if not len(texts):
      return np.zeros((0, self.embed_dim), np.float32)
    length = self.region_text_length()
    tokenizer = self.tokenizer
    if length != tokenizer.max_len:
      tokenizer = Tokenizer(tokenizer.model_proto, max_len=length)
    tokens = tokenizer.encode(list(texts))
    out = []
    for start, size in buckets(len(tokens), batch_size):
      chunk = tokens[start : start + size]
      out.append(
        np.asarray(self._text_fn(self.variables, _pad(chunk, size)).sentence)[: len(chunk)]
      )
    return _l2(np.concatenate(out))

  def similarity(self, images, texts: Sequence[str]) -> np.ndarray:
    """[N_images, N_texts] cosine similarities of global image and sentence embeddings."""
    return self.encode_images(images).embeddings @ self.encode_reports(texts).embeddings.T

  def similarity_map(self, image, text: str) -> SimilarityMap:
    """Cosine of each region to the sentence and to each word, in the original image's pixels."""
    model_input, geometry = self.preprocess(image)
    img = self.encode_image_arrays(model_input[None], regions=True)
    txt = self.encode_reports([text], words=True)
    regions = img.regions[0]  # [h, w, D]
    from data_pipeline.tokenizer import BOS_ID, EOS_ID

    mask = txt.word_mask[0] & ~np.isin(txt.tokens[0, 1:], (BOS_ID, EOS_ID))
    word_vecs = txt.words[0][mask]  # [n, D]
    pieces = [self.tokenizer.id_to_piece(int(t)) for t in txt.tokens[0, 1:][mask]]
    sentence_grid = np.einsum("hwd,d->hw", regions, txt.embeddings[0])
    word_grids = np.einsum("hwd,nd->nhw", regions, word_vecs)
    return SimilarityMap(
      map=geometry.to_original(sentence_grid).astype(np.float32),
      words=pieces,
      word_maps=geometry.to_original(word_grids).astype(np.float32),
      geometry=geometry,
    )

  def phrase_maps(self, image, text: str, phrases: Sequence[tuple[str, int]]) -> PhraseMaps:
    """Where the model grounds each phrase of `text` in `image`, in the original image's pixels.

    `phrases`: (phrase, character offset in `text`) pairs, e.g. a finding's words. Per phrase,
    the word->region attention of training (losses.md's alpha, gamma1 of the config, averaged
    over the phrase's pieces) and the cosine of each region with the phrase vector (the mean of
    its normalised word vectors), as `jimte.evaluate.grounding` scores them. A phrase absent from
    the tokenised report (cut by max_len) is an error naming it.
    """
    from jimte.evaluate import grounding

    model_input, geometry = self.preprocess(image)
    if not isinstance(text, str) or not text.strip():
      raise ValueError("phrase_maps needs a non-empty report text")
    image_out = self._image_fn(self.variables, model_input[None])
    tokens = self.tokenizer.encode([text])
    text_out = self._text_fn(self.variables, tokens)
    encoded = {  # raw tower outputs, as training (and the grounding evaluator) sees them
      "regions": np.asarray(image_out.regions, np.float32),
      "words": np.asarray(text_out.words, np.float32),
      "word_mask": np.asarray(text_out.word_mask, bool),
    }
    h, w = encoded["regions"].shape[1:3]
    pieces = [self.tokenizer.id_to_piece(int(t)) for t in tokens[0, 1:]]
    report_words = grounding.report_words(pieces, encoded["word_mask"][0])
    found = []
    for phrase, start in phrases:
      slots = grounding.phrase_slots(report_words, text, phrase, int(start))
      if slots is None:
        raise ValueError(
          f"phrase {phrase!r} at character {start} is not in the tokenised report "
          f"(max_len {self.tokenizer.max_len} tokens)"
        )
      found.append(grounding.Phrase(0, "", phrase, slots, ()))
    labels = [p.term for p in found]
    grids = grounding.phrase_maps(encoded, found, float(self.config.loss.gamma1))
    attention, similarity = grids["attention"], grids["similarity"]
    empty = np.zeros((0, geometry.height, geometry.width), np.float32)
    return PhraseMaps(
      phrases=labels,
      attention=geometry.to_original(attention).astype(np.float32) if labels else empty,
      similarity=geometry.to_original(similarity).astype(np.float32) if labels else empty,
      grid=(h, w),
      geometry=geometry,
    )

  def compile_counts(self) -> dict[str, int]:
    """How many shapes each tower's jitted function has been compiled for (one per bucket)."""
    return {"image": self._image_fn._cache_size(), "text": self._text_fn._cache_size()}


def _check_variables(module, variables, image_size: int, text_length: int) -> None:
  """A checkpoint whose parameter shapes differ from what the config builds is refused by key."""
  expected = jax.eval_shape(
    lambda: joimternet.init_variables(module, jax.random.key(0), image_size, text_length)
  )
  want = {
    jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(expected)
  }
  got = {
    jax.tree_util.keystr(k): np.shape(v)
    for k, v in jax.tree_util.tree_leaves_with_path({c: variables.get(c, {}) for c in expected})
  }
  missing = sorted(set(want) - set(got))
  extra = sorted(set(got) - set(want))
  wrong = sorted(k for k in set(want) & set(got) if tuple(want[k]) != tuple(got[k]))
  if missing or extra or wrong:
    detail = "; ".join(
      [f"missing {missing[:3]}"] * bool(missing)
      + [f"unexpected {extra[:3]}"] * bool(extra)
      + [f"{k}: checkpoint {got[k]} vs config {want[k]}" for k in wrong[:3]]
    )
    raise ValueError(f"the checkpoint does not match its config: {detail}")


def _pad(chunk: np.ndarray, size: int) -> np.ndarray:
  if len(chunk) == size:
    return chunk
  return np.concatenate([chunk, np.zeros((size - len(chunk),) + chunk.shape[1:], chunk.dtype)])


def _l2(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), NORM_EPS)
