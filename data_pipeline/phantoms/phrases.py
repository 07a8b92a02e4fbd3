"""Report phrases: the radiology words for one finding group and the sentence that carries them.

`phrase_for` names a finding (synonym, severity, laterality, place) and `wrap_positive` puts the
phrase into a findings-section sentence, keeping track of where the phrase starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from data_pipeline.phantoms.placement import FindingSpec
from data_pipeline.phantoms.streams import pick

_CM_PER_UNIT = 38.0  # canonical units -> centimetres, for sizes quoted in reports


@dataclasses.dataclass
class Phrase:
  """A noun phrase naming a finding, with the word(s) that carry the finding and its severity."""

  text: str
  term: str
  severity_word: str = ""
  grammar: str = (
    "a"  # 'a' (countable), 'mass' (uncountable), 'plural', or 'clause' ("heart is ...")
  )


SEVERITY_ADJ = {
  "size": {1: ("small",), 2: ("moderate", "moderate-sized"), 3: ("large",)},
  "grade": {1: ("mild",), 2: ("moderate",), 3: ("severe", "marked")},
  "grade_adv": {1: ("mildly",), 2: ("moderately",), 3: ("severely", "markedly")},
  "extent": {1: ("small", "mild"), 2: ("moderate",), 3: ("extensive", "dense")},
}

_ZONE_NOUNS = {
  "apical": ("{s} apex", "{s} lung apex", "{s} apical zone"),
  "upper": ("{s} upper lung zone", "{s} upper lobe", "{s} upper lung"),
  "mid": ("{s} mid lung zone", "{s} midlung", "{s} mid lung"),
  "lower": ("{s} lower lung zone", "{s} lung base", "{s} lower lobe"),
}
_ZONE_MODIFIERS = {
  "apical": ("{s} apical",),
  "upper": ("{s} upper lobe", "{s} upper lung"),
  "mid": ("{s} midlung", "{s} mid lung"),
  "lower": ("{s} basilar", "{s} lower lobe", "{s} base"),
}


def _zone_of(spec: FindingSpec) -> str:
  """Lung zone word of a region ('apical', 'upper', 'mid', 'lower')."""
  for zone in ("apical", "upper", "mid", "lower"):
    if zone in spec.region:
      return zone
  raise ValueError(f"{spec.region!r} is not a lung zone")


def phrase_for(group: Sequence[FindingSpec], rng: np.random.Generator) -> Phrase:
  """A radiology phrase for one finding group: kind synonym, severity, laterality and place."""
  spec = group[0]
  kind = spec.kind
  sev = spec.severity
  if kind == "nodule":
    zone = _zone_of(spec)
    if spec.variant == "mass":
      noun = pick(rng, ("mass", "masslike opacity", "pulmonary mass"))
    else:
      noun = pick(rng, ("nodule", "nodular opacity", "nodular density", "pulmonary nodule"))
    size_cm = f"{2 * spec.size * _CM_PER_UNIT:.1f} cm"
    size_word = size_cm if sev == 2 else pick(rng, (size_cm, SEVERITY_ADJ["size"][sev][0]))
    if rng.random() < 0.5:
      where = pick(rng, _ZONE_NOUNS[zone]).format(s=spec.side)
      return Phrase(f"{size_word} {noun} in the {where}", noun, size_word)
    where = pick(rng, _ZONE_MODIFIERS[zone]).format(s=spec.side)
    return Phrase(f"{size_word} {where} {noun}", noun, size_word)
  if kind == "consolidation":
    zone = _zone_of(spec)
    noun = pick(
      rng,
      (
        "consolidation",
        "airspace consolidation",
        "focal consolidation",
        "consolidative opacity",
        "patchy consolidation",
      ),
    )
    adj = pick(rng, SEVERITY_ADJ["extent"][sev])
    grammar = "a" if noun.endswith("opacity") else "mass"
    if rng.random() < 0.5:
      where = pick(rng, _ZONE_NOUNS[zone]).format(s=spec.side)
      return Phrase(f"{adj} {noun} in the {where}", noun, adj, grammar)
    where = pick(rng, _ZONE_MODIFIERS[zone]).format(s=spec.side)
    return Phrase(f"{adj} {where} {noun}", noun, adj, grammar)
  if kind == "pleural_effusion":
    if len(group) == 2:
      right, left = group if group[0].side == "right" else group[::-1]
      noun = pick(rng, ("pleural effusions", "effusions"))
      if right.severity == left.severity:
        adj = pick(rng, SEVERITY_ADJ["size"][right.severity])
        return Phrase(f"{adj} bilateral {noun}", noun, adj, "plural")
      big, small = ("right", "left") if right.severity > left.severity else ("left", "right")
      return Phrase(f"bilateral {noun}, {big} greater than {small}", noun, "", "plural")
    adj = pick(rng, SEVERITY_ADJ["size"][sev])
    side = spec.side
    if sev == 1 and rng.random() < 0.3:
      noun = pick(rng, ("pleural effusion", "effusion"))
      return Phrase(
        f"blunting of the {side} costophrenic angle consistent with a {adj} {noun}",
        noun,
        adj,
        "mass",
      )
    form = int(rng.integers(3))
    if form == 0:
      return Phrase(f"{adj} {side} pleural effusion", "pleural effusion", adj)
    if form == 1:
      return Phrase(f"{adj} {side}-sided effusion", "effusion", adj)
    amount = {1: "small", 2: "moderate", 3: "large"}[sev]
    return Phrase(f"{amount} amount of {side} pleural fluid", "pleural fluid", amount)
  if kind == "pneumothorax":
    adj = pick(rng, SEVERITY_ADJ["size"][sev])
    where = (
      f"{spec.side} apical"
      if spec.variant == "apical"
      else pick(rng, (spec.side, f"{spec.side}-sided"))
    )
    return Phrase(f"{adj} {where} pneumothorax", "pneumothorax", adj)
  if kind == "cardiomegaly":
    form = int(rng.integers(4))
    if form == 0:
      adj = pick(rng, SEVERITY_ADJ["grade"][sev])
      return Phrase(f"{adj} cardiomegaly", "cardiomegaly", adj, "mass")
    adv = pick(rng, SEVERITY_ADJ["grade_adv"][sev])
    if form == 1:
      return Phrase(f"{adv} enlarged cardiac silhouette", "enlarged cardiac silhouette", adv)
    if form == 2:
      adj = pick(rng, SEVERITY_ADJ["grade"][sev])
      return Phrase(
        f"{adj} enlargement of the cardiac silhouette",
        "enlargement of the cardiac silhouette",
        adj,
        "mass",
      )
    subject = pick(rng, ("heart", "cardiac silhouette"))
    return Phrase(f"{subject} is {adv} enlarged", "enlarged", adv, "clause")
  if kind == "atelectasis":
    adj = pick(rng, SEVERITY_ADJ["grade"][sev][:1] + (("minimal",) if sev == 1 else ()))
    if len(group) == 2:
      form = pick(
        rng,
        (
          "bibasilar atelectasis",
          "bibasilar linear atelectasis",
          "bibasilar subsegmental atelectasis",
        ),
      )
      return Phrase(f"{adj} {form}", "atelectasis", adj, "mass")
    zone = _zone_of(spec)
    form = int(rng.integers(3))
    if form == 0:
      where = pick(rng, _ZONE_MODIFIERS[zone]).format(s=spec.side)
      return Phrase(f"{adj} {where} atelectasis", "atelectasis", adj, "mass")
    where = pick(rng, _ZONE_NOUNS[zone]).format(s=spec.side)
    if form == 1:
      noun = pick(rng, ("linear atelectasis", "subsegmental atelectasis", "plate-like atelectasis"))
      return Phrase(f"{adj} {noun} in the {where}", "atelectasis", adj, "mass")
    return Phrase(
      f"streaky opacity in the {where} consistent with {adj} atelectasis", "atelectasis", adj, "a"
    )
  if kind == "edema":
    adj = pick(rng, SEVERITY_ADJ["grade"][sev])
    form = int(rng.integers(4))
    if form == 0:
      return Phrase(f"{adj} pulmonary edema", "pulmonary edema", adj, "mass")
    if form == 1:
      return Phrase(f"{adj} interstitial edema", "interstitial edema", adj, "mass")
    if form == 2:
      return Phrase(f"{adj} bilateral perihilar edema", "perihilar edema", adj, "mass")
    return Phrase(
      f"bilateral perihilar opacities consistent with {adj} pulmonary edema",
      "pulmonary edema",
      adj,
      "plural",
    )
  if kind == "support_device":
    if spec.variant == "endotracheal tube":
      noun = pick(rng, ("endotracheal tube", "ET tube"))
      cm = max(1.0, round(spec.size * _CM_PER_UNIT * 2.0) / 2.0)
      return Phrase(f"{noun} with tip {cm:g} cm above the carina", noun, "", "a")
    if spec.variant == "central venous catheter":
      noun = pick(
        rng,
        ("central venous catheter", "internal jugular central line", "internal jugular catheter"),
      )
      if spec.size < 0.01:
        tip = "at the cavoatrial junction"
      else:
        tip = pick(rng, ("in the SVC", "in the superior vena cava", "projecting over the SVC"))
      return Phrase(f"right {noun} with tip {tip}", noun, "", "a")
    noun = pick(rng, ("pacemaker", "cardiac pacemaker", "dual-lead pacemaker"))
    prefix = pick(rng, ("left-sided", "left chest wall", "left subclavian"))
    return Phrase(
      f"{prefix} {noun} with leads in the right atrium and right ventricle", noun, "", "a"
    )
  raise ValueError(f"unknown finding kind {kind!r}")


def _article(word: str) -> str:
  """'a' or 'an' before `word`."""
  return "an" if word[:1].lower() in "aeiou" else "a"


def capitalize(text: str) -> str:
  """Upper-case the first character only (`str.capitalize` would lower-case the rest)."""
  return text[:1].upper() + text[1:]


def wrap_positive(phrase: Phrase, rng: np.random.Generator, followup: bool) -> tuple[str, int]:
  """Put a finding phrase into a findings-section sentence; returns the sentence and phrase
  offset."""
  p = phrase.text
  if phrase.grammar == "clause":
    templates = ["The {P}."]
  elif phrase.grammar == "plural":
    templates = (
      ["There are {P}.", "{P}."]
      if "," in p
      else ["There are {P}.", "{P}.", "{P} are noted.", "{P} are present."]
    )
  elif phrase.grammar == "mass":
    templates = [
      "There is {P}.",
      "{P}.",
      "{P} is noted.",
      "{P} is present.",
      "There is evidence of {P}.",
    ]
    if followup:
      templates.append("Again noted is {P}.")
  else:
    art = _article(p)
    templates = [
      f"There is {art} {{P}}.",
      f"{capitalize(art)} {{P}} is noted.",
      "{P}.",
      f"{capitalize(art)} {{P}} is seen.",
      "{P} is present.",
    ]
    if followup:
      templates.append(f"Again seen is {art} {{P}}.")
  template = pick(rng, templates)
  offset = template.index("{P}")
  if offset == 0:
    p = capitalize(p)
  return template.replace("{P}", p), offset
