"""Reports: the findings and impression of a study, its CheXpert labels and each finding's mention.

`write_report` describes every finding once in the findings section (that mention is its
ground-truth words), summarises it in the impression, and fills normal topics with IU-style
boilerplate that may negate absent observations, never present ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from data_pipeline.names import CHEXPERT_INDEX, CHEXPERT_OBSERVATIONS
from data_pipeline.phantoms.config import DEFAULT_CONFIG, FINDING_TO_CHEXPERT, PhantomConfig
from data_pipeline.phantoms.phrases import (
  SEVERITY_ADJ,
  Phrase,
  capitalize,
  phrase_for,
  wrap_positive,
)
from data_pipeline.phantoms.placement import FindingSpec
from data_pipeline.phantoms.plans import ExamplePlan
from data_pipeline.phantoms.streams import pick, stream_rng


@dataclasses.dataclass(frozen=True)
class Mention:
  """Where the report describes one finding group: the whole phrase and its core term (char
  spans)."""

  words: str
  span: tuple[int, int]
  term: str
  term_span: tuple[int, int]
  severity_word: str


@dataclasses.dataclass(frozen=True)
class Report:
  """A written report with its labels and the mention of each finding group."""

  text: str
  findings_text: str
  impression_text: str
  labels: np.ndarray  # float32 [14]
  mentions: dict[int, Mention]  # finding group -> mention in the findings section


# Finding kinds inside the lung fields: "the lungs are clear" contradicts each of them.
_LUNG_KINDS = frozenset({"nodule", "consolidation", "atelectasis", "edema", "pneumothorax"})


# Normal / negated statements: (text, CheXpert labels it negates, finding kinds it contradicts).
_HEART_NORMAL = (
  (
    "The heart size and mediastinal contours are within normal limits.",
    ("Cardiomegaly", "Enlarged Cardiomediastinum"),
    (),
  ),
  (
    "Heart size and mediastinal contour are within normal limits.",
    ("Cardiomegaly", "Enlarged Cardiomediastinum"),
    (),
  ),
  ("The heart is normal in size.", ("Cardiomegaly",), ()),
  ("Heart size is normal.", ("Cardiomegaly",), ()),
  (
    "Normal heart size and mediastinal contours.",
    ("Cardiomegaly", "Enlarged Cardiomediastinum"),
    (),
  ),
  (
    "The cardiomediastinal silhouette is within normal limits.",
    ("Cardiomegaly", "Enlarged Cardiomediastinum"),
    (),
  ),
  (
    "The heart and mediastinum are unremarkable.",
    ("Cardiomegaly", "Enlarged Cardiomediastinum"),
    (),
  ),
  ("Heart size and pulmonary vascularity are within normal limits.", ("Cardiomegaly",), ("edema",)),
)
_HEART_REDACTED = (
  (
    "Heart XXXX, mediastinum and bony structures are unremarkable.",
    ("Enlarged Cardiomediastinum",),
    (),
  ),
)
_MEDIASTINUM_NORMAL = (
  ("The mediastinal contours are within normal limits.", ("Enlarged Cardiomediastinum",), ()),
  ("Normal mediastinal contours.", ("Enlarged Cardiomediastinum",), ()),
)
_LUNGS_CLEAR = (
  ("The lungs are clear.", (), tuple(_LUNG_KINDS)),
  ("Lungs are clear bilaterally.", (), tuple(_LUNG_KINDS)),
  ("The lungs are clear without focal consolidation.", ("Consolidation",), tuple(_LUNG_KINDS)),
  ("Both lungs are clear and expanded.", (), tuple(_LUNG_KINDS)),
)
_LUNG_NEGATIVES = (
  ("No focal airspace consolidation.", ("Consolidation",), ("consolidation",)),
  ("There is no focal consolidation.", ("Consolidation",), ("consolidation",)),
  ("No focal airspace disease.", ("Lung Opacity",), ("consolidation", "atelectasis", "edema")),
  (
    "No suspicious pulmonary opacity.",
    ("Lung Opacity",),
    ("consolidation", "atelectasis", "edema", "nodule"),
  ),
  ("No suspicious pulmonary nodules or masses.", ("Lung Lesion",), ("nodule",)),
  ("There is no pulmonary edema.", ("Edema",), ("edema",)),
  ("No pulmonary edema.", ("Edema",), ("edema",)),
  ("No pneumonia.", ("Pneumonia",), ("consolidation",)),
  ("Pulmonary vascularity is within normal limits.", (), ("edema",)),
)
_PLEURA_BOTH = (
  ("No pneumothorax or pleural effusion.", ("Pneumothorax", "Pleural Effusion"), ()),
  ("There is no pleural effusion or pneumothorax.", ("Pneumothorax", "Pleural Effusion"), ()),
  ("No pleural effusions or pneumothoraces.", ("Pneumothorax", "Pleural Effusion"), ()),
  ("No pneumothorax or effusion.", ("Pneumothorax", "Pleural Effusion"), ()),
)
_PLEURA_EFFUSION = (
  ("No pleural effusion.", ("Pleural Effusion",), ()),
  ("There is no pleural effusion.", ("Pleural Effusion",), ()),
  ("No pleural effusions.", ("Pleural Effusion",), ()),
)
_PLEURA_EFFUSION_REDACTED = (
  ("There are no XXXX of a pleural effusion.", ("Pleural Effusion",), ()),
)
_PLEURA_PNEUMOTHORAX = (
  ("No pneumothorax.", ("Pneumothorax",), ()),
  ("There is no evidence of pneumothorax.", ("Pneumothorax",), ()),
  ("There is no pneumothorax.", ("Pneumothorax",), ()),
)
_BONES = (
  ("No acute bony abnormality.", (), ()),
  ("The visualized osseous structures are intact.", (), ()),
  ("No acute osseous abnormality.", (), ()),
  ("Degenerative changes of the thoracic spine.", (), ()),
  ("No displaced rib fractures.", ("Fracture",), ()),
)
_NORMAL_IMPRESSIONS = (
  "No acute cardiopulmonary abnormality.",
  "No active disease.",
  "No acute cardiopulmonary disease.",
  "No acute cardiopulmonary process.",
  "No radiographic evidence of acute cardiopulmonary disease.",
  "Normal chest.",
)
_COMPARISONS = ("Comparison is made to the prior study.", "Comparison to prior chest radiograph.")
_COMPARISONS_REDACTED = (
  "Comparison: XXXX.",
  "Comparison is made to the prior study from XXXX.",
  "Compared with the prior radiograph from XXXX.",
)
_VIEWS = (
  "PA and lateral views of the chest.",
  "Frontal and lateral views of the chest.",
  "Frontal view of the chest.",
)


def _labels_in_phrase(text: str) -> list[str]:
  """Secondary observations a positive phrase asserts besides its kind (e.g. 'opacity')."""
  lowered = text.lower()
  found = []
  if "opaci" in lowered or "airspace disease" in lowered:
    found.append("Lung Opacity")
  if "cardiomediastinal" in lowered:
    found.append("Enlarged Cardiomediastinum")
  return found


def _eligible(
  statements, present_kinds, labels
) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
  """Statements that neither negate an asserted observation nor contradict a present finding."""
  out = []
  for text, negated, contradicts in statements:
    if any(
      not np.isnan(labels[CHEXPERT_INDEX[n]]) and labels[CHEXPERT_INDEX[n]] != 0 for n in negated
    ):
      continue
    if any(k in present_kinds for k in contradicts):
      continue
    out.append((text, negated, contradicts))
  return out


def _redundant(statement, chosen: Sequence[str], labels: np.ndarray) -> bool:
  """Whether a normal statement only repeats what earlier statements of the report said."""
  text, negated, _ = statement
  if negated and all(labels[CHEXPERT_INDEX[n]] == 0 for n in negated):
    return True
  for topic in ("vascularity", "lungs are clear", "bony", "osseous", "rib"):
    if topic in text and any(topic in earlier for earlier in chosen):
      return True
  return False


def _groups(findings: Sequence[FindingSpec]) -> list[list[FindingSpec]]:
  """Findings grouped into observations (bilateral findings together), in plan order."""
  by_group: dict[int, list[FindingSpec]] = {}
  for spec in findings:
    by_group.setdefault(spec.group, []).append(spec)
  return list(by_group.values())


def _impression_item(
  group: Sequence[FindingSpec], rng: np.random.Generator, config: PhantomConfig, labels: np.ndarray
) -> str:
  """One impression line for a finding group (may hedge consolidation as possible pneumonia)."""
  spec = group[0]
  if spec.kind == "cardiomegaly":
    return f"{capitalize(pick(rng, SEVERITY_ADJ['grade'][spec.severity]))} cardiomegaly."
  phrase = phrase_for(group, rng)
  for name in _labels_in_phrase(phrase.text):
    labels[CHEXPERT_INDEX[name]] = 1.0
  if spec.kind == "support_device":
    return f"{capitalize(phrase.term)} in appropriate position."
  item = capitalize(phrase.text)
  if spec.kind == "consolidation" and rng.random() < config.hedge_probability:
    labels[CHEXPERT_INDEX["Pneumonia"]] = -1.0
    return item + pick(rng, (", which may represent pneumonia.", ", concerning for pneumonia."))
  if spec.kind == "nodule" and rng.random() < 0.5:
    return item + ". Recommend chest CT for further evaluation."
  return item + "."


def write_report(plan: ExamplePlan, config: PhantomConfig = DEFAULT_CONFIG) -> Report:
  """Write the findings and impression of a study, its CheXpert labels and each finding's mention.

  Every finding is described once in the findings section (that mention is its ground-truth
  words) and summarised again in the impression; absent observations may be negated, never
  present ones; normal topics get IU-style boilerplate.
  """
  rng = stream_rng(plan.seed, plan.split, plan.index, "report")
  labels = np.full(len(CHEXPERT_OBSERVATIONS), np.nan, np.float32)
  groups = _groups(plan.findings)
  present = {spec.kind for spec in plan.findings}
  pathology = present - {"support_device"}

  # Positive statements first, so negations can be checked against everything asserted.
  topic_of = {
    "cardiomegaly": "heart",
    "pleural_effusion": "pleura",
    "pneumothorax": "pleura",
    "support_device": "devices",
  }
  positives: dict[str, list[tuple[str, int, Phrase, int]]] = {}
  for group in groups:
    spec = group[0]
    phrase = phrase_for(group, rng)
    sentence, offset = wrap_positive(phrase, rng, plan.is_followup)
    positives.setdefault(topic_of.get(spec.kind, "lungs"), []).append(
      (sentence, offset, phrase, spec.group)
    )
    labels[CHEXPERT_INDEX[FINDING_TO_CHEXPERT[spec.kind]]] = 1.0
    for name in _labels_in_phrase(phrase.text):
      labels[CHEXPERT_INDEX[name]] = 1.0
  impression_items = [
    _impression_item(group, rng, config, labels)
    for group in groups
    if group[0].kind != "support_device"
  ]
  device_items = [
    _impression_item(group, rng, config, labels)
    for group in groups
    if group[0].kind == "support_device"
  ]

  chosen: list[str] = []

  def choose(statements):
    """Pick one eligible statement that says something not said yet; apply its negations."""
    options = [
      o for o in _eligible(statements, present, labels) if not _redundant(o, chosen, labels)
    ]
    if not options:
      return None
    text, negated, _ = pick(rng, options)
    for name in negated:
      labels[CHEXPERT_INDEX[name]] = 0.0
    chosen.append(text)
    return text

  redact = rng.random() < config.redaction_probability
  negate = config.negation_probability
  topics: dict[str, list[str]] = {"heart": [], "lungs": [], "pleura": [], "bones": []}
  if "cardiomegaly" not in present:
    if rng.random() < 0.95:
      topics["heart"].append(
        choose(_HEART_REDACTED if redact and rng.random() < 0.4 else _HEART_NORMAL)
      )
  elif rng.random() < 0.5:
    topics["heart"].append(choose(_MEDIASTINUM_NORMAL))
  if not present & _LUNG_KINDS and rng.random() < negate + 0.1:
    topics["lungs"].append(choose(_LUNGS_CLEAR))
  for _ in range(int(rng.integers(0, 3)) if rng.random() < negate else 0):
    topics["lungs"].append(choose(_LUNG_NEGATIVES))
  if rng.random() < negate:
    if not present & {"pleural_effusion", "pneumothorax"} and rng.random() < 0.7:
      topics["pleura"].append(choose(_PLEURA_BOTH))
    else:
      if "pneumothorax" not in present:
        topics["pleura"].append(choose(_PLEURA_PNEUMOTHORAX))
      if "pleural_effusion" not in present:
        topics["pleura"].append(choose(_PLEURA_EFFUSION_REDACTED if redact else _PLEURA_EFFUSION))
  if rng.random() < 0.55:
    topics["bones"].append(choose(_BONES))
  for name in topics:  # drop unavailable choices and repeats, keeping order
    seen = set()
    topics[name] = [t for t in topics[name] if t and not (t in seen or seen.add(t))]

  # Assemble the findings section: opening, device lines, then heart / lungs / pleura in a
  # varied order (positives lead their topic more often than not), bones last.
  pieces: list[tuple[str, tuple[int, Phrase, int] | None]] = []
  if plan.is_followup or rng.random() < config.comparison_probability:
    pieces.append((pick(rng, _COMPARISONS_REDACTED if redact else _COMPARISONS), None))
  if rng.random() < 0.12:
    pieces.append((pick(rng, _VIEWS), None))
  devices_first = rng.random() < 0.6
  order = ["heart", "lungs", "pleura"]
  if rng.random() < 0.5:
    order = [order[i] for i in rng.permutation(3)]
  order = (["devices"] + order if devices_first else order + ["devices"]) + ["bones"]
  for topic in order:
    positive = [(s, (o, p, g)) for s, o, p, g in positives.get(topic, [])]
    negative = [(t, None) for t in topics.get(topic, [])]
    block = positive + negative if rng.random() < 0.75 else negative + positive
    pieces.extend(block)
  mentions: dict[int, Mention] = {}
  findings_parts: list[str] = []
  cursor = 0
  for sentence, where in pieces:
    if where is not None:
      offset, phrase, group = where
      start = cursor + offset
      end = start + len(phrase.text)
      words = sentence[offset : offset + len(phrase.text)]
      term_at = words.lower().rfind(phrase.term.lower())
      severity_at = words.lower().find(phrase.severity_word.lower()) if phrase.severity_word else -1
      mentions[group] = Mention(
        words=words,
        span=(start, end),
        term=words[term_at : term_at + len(phrase.term)],
        term_span=(start + term_at, start + term_at + len(phrase.term)),
        severity_word=words[severity_at : severity_at + len(phrase.severity_word)]
        if severity_at >= 0
        else "",
      )
    findings_parts.append(sentence)
    cursor += len(sentence) + 1
  findings_text = " ".join(findings_parts)

  if not pathology:
    impression_items = device_items + [pick(rng, _NORMAL_IMPRESSIONS)]
  else:
    impression_items = impression_items + device_items
  if len(impression_items) > 1 and rng.random() < 0.5:
    impression_text = " ".join(f"{i + 1}. {item}" for i, item in enumerate(impression_items))
  else:
    impression_text = " ".join(impression_items)
  labels[CHEXPERT_INDEX["No Finding"]] = np.nan if pathology else 1.0
  text = f"{findings_text} {impression_text}" if findings_text else impression_text
  return Report(
    text=text,
    findings_text=findings_text,
    impression_text=impression_text,
    labels=labels,
    mentions=mentions,
  )
