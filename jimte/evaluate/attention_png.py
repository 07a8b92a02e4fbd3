"""A PNG of word->region attention: for a few held-out pairs, the X-ray with the attention of its
best-matched words overlaid (the second softmax of losses.md, alpha[k, r], upsampled to the image).

Where the split carries ground truth (the synthetic set), the panels show the report's finding
phrases (`jimte.evaluate.grounding.finding_phrases`: 'nodular opacity', 'effusions', ...) with their
boxes; elsewhere, the content words with the highest matching term cos(E_k, c_k), i.e. the words the
model grounds most confidently.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from jimte import losses


def word_attention_for_pairs(encoded: Mapping[str, np.ndarray], rows: np.ndarray, gamma1: float):
  """alpha [n, T, H, W] and per-word match cos(E_k, c_k) [n, T] for the matched pairs `rows`."""
  regions = encoded["regions"][rows]
  n, h, w, d = regions.shape
  flat = jnp.asarray(regions.reshape(n, h * w, d))
  words = jnp.asarray(encoded["words"][rows])
  mask = jnp.asarray(encoded["word_mask"][rows])
  alpha = np.asarray(losses.word_region_attention(flat, words, mask, gamma1))  # [n, T, R]
  context = np.einsum("ntr,nrd->ntd", alpha, np.asarray(flat))
  w_np = np.asarray(words)
  cos = (context * w_np).sum(-1) / np.maximum(
    np.linalg.norm(context, axis=-1) * np.linalg.norm(w_np, axis=-1), 1e-8
  )
  cos = np.where(np.asarray(mask), cos, -np.inf)
  return alpha.reshape(n, -1, h, w), cos


STOPWORDS = frozenset(
  [
    "the",
    "a",
    "an",
    "and",
    "or",
    "of",
    "in",
    "on",
    "at",
    "to",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "with",
    "without",
    "no",
    "not",
    "there",
    "this",
    "that",
    "as",
    "for",
    "from",
    "by",
    "its",
    "it",
    "within",
    "normal",
    "limits",
    "seen",
    "noted",
    "prior",
    "study",
    "comparison",
    "views",
    "view",
    "chest",
  ]
)


def group_words(pieces: list[str]) -> list[list[int]]:
  """Groups SentencePiece pieces into whole words (a piece starting with U+2581 starts a word)."""
  words: list[list[int]] = []
  for k, piece in enumerate(pieces):
    # Special pieces (</s>, <pad>, ...) form groups of their own.
    if piece.startswith("\u2581") or not words or _is_special(piece) or _is_special(pieces[k - 1]):
      words.append([k])
    else:
      words[-1].append(k)
  return words


def _is_special(piece: str) -> bool:
  return piece.startswith("<") and piece.endswith(">")


def pick_words(
  pieces: list[str], match: np.ndarray, count: int
) -> list[tuple[str, list[int], float]]:
  """The `count` content words with the best matching term (max over their pieces)."""
  chosen = []
  valid = np.isfinite(match)  # padding and other masked slots have match -inf
  for group in group_words([p for p, ok in zip(pieces, valid, strict=True) if ok]):
    group = [int(k) for k in np.flatnonzero(valid)[group]]
    text = "".join(pieces[k] for k in group).replace("\u2581", "").strip(".,;:")
    scores = match[group]
    if not np.isfinite(scores).any() or len(text) < 3 or text in STOPWORDS or text.startswith("<"):
      continue
    chosen.append((text, group, float(np.max(scores))))
  chosen.sort(key=lambda item: -item[2])
  return chosen[:count]


def save_attention_png(
  path: str,
  encoded: Mapping[str, np.ndarray],
  tokenizer,
  *,
  gamma1: float,
  num_pairs: int = 4,
  words_per_pair: int = 4,
  boxes: Mapping[int, list[tuple[str, tuple[float, float, float, float]]]] | None = None,
  phrases: Mapping[int, list[tuple[str, list[int]]]] | None = None,
) -> str:
  """Writes the figure to `path` and returns it. `encoded` must hold 'image' and 'image_index'.

  Each panel shows one phrase of the report (its pieces' attention averaged): for a pair with
  `phrases` (example index -> [(label, alignment-word slots)]), those; otherwise whole content
  words chosen by the best matching term cos(E_k, c_k).
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.patches import Rectangle

  images = encoded["image"][:num_pairs]
  rows = np.searchsorted(encoded["index"], encoded["image_index"][:num_pairs])
  alpha, match = word_attention_for_pairs(encoded, rows, gamma1)
  n = len(rows)
  cols = 1 + words_per_pair
  fig, axes = plt.subplots(n, cols, figsize=(2.6 * cols, 2.9 * n), squeeze=False)
  for i in range(n):
    img = (images[i, ..., 0] + 1.0) / 2.0
    size = img.shape[0]
    tokens = encoded["tokens"][rows[i]]
    pieces = [tokenizer.id_to_piece(int(t)) for t in tokens[1:]]
    report = tokenizer.decode(tokens[None])[0]
    axes[i, 0].imshow(img, cmap="gray", vmin=0, vmax=1)
    axes[i, 0].set_title(_wrap(report, 42), fontsize=5.5, loc="left")
    index = int(encoded["image_index"][i])
    if phrases and phrases.get(index):
      chosen = [
        (label, list(slots), float(np.max(match[i][list(slots)])))
        for label, slots in phrases[index][:words_per_pair]
      ]
    else:
      chosen = pick_words(pieces, match[i], words_per_pair)
    for j, (word, group, score) in enumerate(chosen):
      ax = axes[i, 1 + j]
      ax.imshow(img, cmap="gray", vmin=0, vmax=1)
      heat = alpha[i, group].mean(axis=0)
      ax.imshow(heat, cmap="jet", alpha=0.45, extent=(0, size, size, 0), interpolation="bilinear")
      ax.set_title(f"'{word}'  cos={score:.2f}", fontsize=7)
    if boxes:
      for finding, (y0, x0, y1, x1) in boxes.get(int(encoded["image_index"][i]), []):
        for ax in axes[i]:
          ax.add_patch(
            Rectangle(
              (x0 * size, y0 * size),
              (x1 - x0) * size,
              (y1 - y0) * size,
              fill=False,
              edgecolor="lime",
              linewidth=0.8,
            )
          )
        axes[i, 0].text(x0 * size, y0 * size, finding, color="lime", fontsize=5)
    for ax in axes[i]:
      ax.set_xticks([])
      ax.set_yticks([])
      if not ax.images:
        ax.axis("off")
  fig.suptitle(
    "word -> region attention (alpha) on held-out pairs; green: ground-truth boxes"
    + (" of the findings shown" if phrases else ""),
    fontsize=9,
  )
  fig.tight_layout()
  return write_figure_png(fig, path)


def write_figure_png(fig, path: str, dpi: int = 110) -> str:
  """Saves a matplotlib figure as a PNG at `path` (local or GCS, through tf.io.gfile) and closes
  it; returns the path."""
  import io

  import matplotlib.pyplot as plt
  import tensorflow as tf

  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=dpi)
  plt.close(fig)
  tf.io.gfile.makedirs(os.path.dirname(path) or ".")
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(buffer.getvalue())
  return path


def _wrap(text: str, width: int, max_lines: int = 6) -> str:
  words, lines, line = text.split(), [], ""
  for word in words:
    if len(line) + len(word) + 1 > width:
      lines.append(line)
      line = word
    else:
      line = f"{line} {word}".strip()
  lines.append(line)
  return "\n".join(lines[:max_lines]) + ("..." if len(lines) > max_lines else "")
