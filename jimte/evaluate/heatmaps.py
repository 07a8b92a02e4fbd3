"""Heatmap PNGs of where a trained model grounds a report's finding phrases in an X-ray.

For one (image, report) pair, a row per phrase: the X-ray in its original pixels, the word->region
attention of the phrase and the region-phrase cosine map over it (`JimteModel.phrase_maps`).
The phrases are the report's findings as the report labeler reads them (positive or uncertain
mentions, not "No Finding"), or phrases the caller names; never the words the model happens to
match best.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np

from jimte.evaluate.attention_png import write_figure_png
from jimte.image_files import read_xray


def finding_phrases(text: str, *, labeler=None) -> list[tuple[str, int]]:
  """(phrase, character offset) of each finding the labeler reads in `text` as positive or
  uncertain, in report order (a phrase mentioned twice is kept once: its first mention)."""
  if labeler is None:
    from data_pipeline.labels import ReportLabeler

    labeler = ReportLabeler()
  found, seen = [], set()
  for mention in sorted(labeler.label(text).mentions, key=lambda m: m.span):
    if mention.observation == "No Finding" or mention.status == "negative":
      continue
    key = mention.phrase.lower()
    if key not in seen:
      seen.add(key)
      found.append((mention.phrase, int(mention.span[0])))
  return found


def named_phrases(text: str, phrases: Sequence[str]) -> list[tuple[str, int]]:
  """(phrase, offset of its first case-insensitive whole-word occurrence) for each named phrase;
  a phrase the report does not contain is an error naming it."""
  out = []
  for phrase in phrases:
    match = re.search(rf"(?<!\w){re.escape(phrase.strip())}(?!\w)", text, flags=re.IGNORECASE)
    if match is None:
      raise ValueError(f"phrase {phrase!r} does not occur in the report")
    out.append((text[match.start() : match.end()], match.start()))
  return out


def render_png(path: str, pixels: np.ndarray, maps, *, title: str = "") -> str:
  """Writes the figure of one pair's `PhraseMaps` over `pixels` (the original [H, W] image)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = max(1, len(maps.phrases))
  fig, axes = plt.subplots(rows, 3, figsize=(8.4, 2.9 * rows), squeeze=False)
  height, width = pixels.shape
  extent = (0, width, height, 0)
  for i in range(rows):
    for ax in axes[i]:
      ax.imshow(pixels, cmap="gray", vmin=0, vmax=1, extent=extent)
      ax.set_xticks([])
      ax.set_yticks([])
    if not maps.phrases:
      axes[i, 0].set_title("no finding phrase in the report", fontsize=8)
      axes[i, 1].axis("off")
      axes[i, 2].axis("off")
      continue
    phrase = maps.phrases[i]
    axes[i, 0].set_title(f"'{phrase}'", fontsize=8)
    axes[i, 1].imshow(maps.attention[i], cmap="jet", alpha=0.45, extent=extent)
    axes[i, 1].set_title("word→region attention", fontsize=7)
    axes[i, 2].imshow(maps.similarity[i], cmap="jet", alpha=0.45, extent=extent, vmin=-1, vmax=1)
    axes[i, 2].set_title("region–phrase cosine", fontsize=7)
    for ax, heat in ((axes[i, 1], maps.attention[i]), (axes[i, 2], maps.similarity[i])):
      row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
      ax.plot([col], [row], marker="+", color="white", markersize=9, markeredgewidth=1.5)
  if title:
    fig.suptitle(title[:140], fontsize=8)
  fig.tight_layout()
  return write_figure_png(fig, path)


def pair_heatmap(model, image, text: str, path: str, *, phrases=None, labeler=None) -> str:
  """The heatmap PNG of one pair at `path`: `phrases` named by the caller, else the report's
  findings (`finding_phrases`)."""
  chosen = named_phrases(text, phrases) if phrases else finding_phrases(text, labeler=labeler)
  maps = model.phrase_maps(image, text, chosen)
  pixels = read_xray(image).pixels
  return render_png(path, pixels, maps, title=text)


def write_heatmaps(model, images, texts: Sequence[str], out_dir: str, *, phrases=None) -> list:
  """One PNG per (image, text) pair in `out_dir` (heatmap-000.png, ...), e.g. a query image
  against each retrieved report; returns the paths."""
  from data_pipeline.labels import ReportLabeler

  labeler = None if phrases else ReportLabeler()
  paths = []
  for i, (image, text) in enumerate(zip(images, texts, strict=True)):
    path = os.path.join(out_dir, f"heatmap-{i:03d}.png")
    paths.append(pair_heatmap(model, image, text, path, phrases=phrases, labeler=labeler))
  return paths
