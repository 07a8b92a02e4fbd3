"""Zero-shot classification: each label scored by how much closer an image's embedding sits to
report sentences saying the finding is there than to sentences saying it is not.

For label c with positive prompts P_c and negative prompts N_c (all L2-normalised sentence
embeddings) and an L2-normalised image embedding v:

  s_pos = mean_p cos(v, p),  s_neg = mean_n cos(v, n),  score = softmax(gamma * [s_pos, s_neg])[0]

`gamma` is the run's sentence-matching scale (config.loss.gamma3); it does not change the AUROC
(the score is monotone in s_pos - s_neg), only how calibrated the numbers look. The prompt sets
live in a config file (configs/prompts/zero_shot.py, or JSON of the same shape).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from data_pipeline.names import CHEXPERT_OBSERVATIONS
from jimte import config_files

DEFAULT_PROMPTS = os.path.join(
  os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
  "configs",
  "prompts",
  "zero_shot.py",
)


@dataclasses.dataclass(frozen=True)
class PromptSet:
  """Positive and negative prompts of each label, in CheXpert order of the labels present."""

  labels: tuple[str, ...]
  positive: tuple[tuple[str, ...], ...]
  negative: tuple[tuple[str, ...], ...]
  source: str


def load_prompts(path: str = DEFAULT_PROMPTS) -> PromptSet:
  """Reads a prompt file: `NAME.py[:arg]` with `get_config(arg)` returning a ConfigDict, or JSON,
  each mapping a CheXpert observation to {positive: [...], negative: [...]}. Errors name the file
  and the key."""
  file, arg = config_files.split_path(path)
  config_files.exists_or_raise(file, "prompt")
  if file.endswith(".py"):
    raw = config_files.call_get_config(file, arg, "jimte_prompts")
    raw = raw.to_dict() if hasattr(raw, "to_dict") else dict(raw)
  elif file.endswith(".json"):
    with open(file) as f:
      raw = json.load(f)
  else:
    raise ValueError(f"{file}: a prompt file is a .py config or .json")
  return prompts_from_mapping(raw, source=file)


def prompts_from_mapping(raw: Mapping, source: str = "<mapping>") -> PromptSet:
  """Validates {label: {positive, negative}} and orders the labels as CHEXPERT_OBSERVATIONS."""
  if not isinstance(raw, Mapping) or not raw:
    raise ValueError(f"{source}: expected a non-empty mapping of label -> prompt sets")
  unknown = sorted(set(raw) - set(CHEXPERT_OBSERVATIONS))
  if unknown:
    raise ValueError(
      f"{source}: unknown label {unknown[0]!r}; labels are {', '.join(CHEXPERT_OBSERVATIONS)}"
    )
  labels, positive, negative = [], [], []
  for label in CHEXPERT_OBSERVATIONS:
    if label not in raw:
      continue
    entry = raw[label]
    sets = []
    for side in ("positive", "negative"):
      texts = entry.get(side) if isinstance(entry, Mapping) else None
      if (
        not texts
        or isinstance(texts, str)
        or not all(isinstance(t, str) and t.strip() for t in texts)
      ):
        raise ValueError(f"{source}: {label}.{side} must be a non-empty list of non-empty strings")
      sets.append(tuple(texts))
    labels.append(label)
    positive.append(sets[0])
    negative.append(sets[1])
  return PromptSet(tuple(labels), tuple(positive), tuple(negative), source)


def prompt_similarities(
  image_embeddings: np.ndarray,
  prompts: PromptSet,
  encode_reports: Callable[[Sequence[str]], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
  """(s_pos, s_neg), each float32 [N, C]: mean cosine of each image with each label's positive /
  negative prompts. `encode_reports(texts) -> [M, D]` L2-normalised sentence embeddings."""
  texts = [t for group in (*prompts.positive, *prompts.negative) for t in group]
  text_emb = np.asarray(encode_reports(texts), np.float32)
  images = np.asarray(image_embeddings, np.float32)
  similarity = images @ text_emb.T  # [N, M]
  columns, start = [], 0
  for group in (*prompts.positive, *prompts.negative):
    columns.append(similarity[:, start : start + len(group)].mean(1))
    start += len(group)
  c = len(prompts.labels)
  stacked = np.stack(columns, 1)
  return stacked[:, :c], stacked[:, c:]


def zero_shot_scores(s_pos: np.ndarray, s_neg: np.ndarray, gamma: float) -> np.ndarray:
  """softmax(gamma * [s_pos, s_neg])[0] = sigmoid(gamma * (s_pos - s_neg)), float64 [N, C]."""
  margin = gamma * (np.asarray(s_pos, np.float64) - np.asarray(s_neg, np.float64))
  return 0.5 * (1.0 + np.tanh(0.5 * margin))  # the logistic function, without overflow
