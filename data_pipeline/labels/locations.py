"""Place words of a report -> the Chest ImaGenome regions each mention is tied to.

The location terms (sides, zones, named structures), how a sentence's place words are shared out
among its mentions (`locate`), and how a located mention maps to region names (`mention_regions`)
with the per-observation defaults; the rules are specified in docs/labeler.md ("Regions").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from data_pipeline.labels.results import NO_FINDING, SUPPORT_DEVICES
from data_pipeline.names import LUNG_OBSERVATIONS, REGION_INDEX

if TYPE_CHECKING:
  from data_pipeline.labels.context import RawMention, ReportContext

# Location-gap separators between two mentions (docs/labeler.md, "Regions").
_LOC_SEPARATOR = re.compile(
  r",|;|/|\band\b|\bor\b|\bwith\b|\bversus\b|\bvs\b|\bas\s+well\s+as\b|\bplus\b|\bbut\b|\bwhich\b"
  r"|\blikely\b|\bmay\b|\bpossibl[ey]\b|\bprobabl[ey]\b|\bsuggest\w*|\bconcerning\b"
  r"|\brepresent\w*|\bconsistent\b|\bcompatible\b|\bdue\b|\bsecondary\b|\bfrom\b|\bthere\b"
)
# Hard boundaries that do not cut a first mention's location words ("At the left base, there is
# ...").
_LOC_KEEP_BOUNDARY = re.compile(r",|there")
# A gap opening with a preposition belongs to the mention before it ("opacity in the right base").
_LOC_PREPOSITION = re.compile(
  r"\s*(?:in|at|on|of|within|involving|over|along|near|throughout|from)\b"
)
# Where the location words after the last mention of a sentence stop.
_LOC_TAIL_CUT = re.compile(r",|;|:|\bbut\b|\bwith\b|\bthere\b|\bhowever\b")
_LOC_WINDOW_TOKENS = 10
# A sentence-initial place phrase whose comma does not cut it off from the finding after it.
_LOC_PREAMBLE = re.compile(r"\s*(?:in|at|on|within|along|over|throughout|involving|projecting)\b")

_ZONE_FOLLOW = r"(?=(?:[\s-]+[a-z&]+){0,3}?[\s-]+(?:lobes?|lungs?|zones?|fields?|hemithorax)\b)"
_LOCATION_TERMS: tuple[tuple[str, str], ...] = (
  # (group name, regex); misc regions first so "right atrium" is not read as a side.
  ("ra", r"\bright\s+atri(?:um|al)\b"),
  ("cavoatrial", r"\bcav(?:o|al)[\s-]*atrial\b"),
  ("svc", r"\bsvc\b|\b(?:superior\s+)?vena\s+cava\b"),
  ("upper_med", r"\b(?:superior|upper)\s+mediastin\w*|\bparatracheal\b"),
  ("mediastinum", r"\b\w*mediastin\w*"),
  ("aortic_arch", r"\baortic\s+(?:arch|knob)\b|\barch\b"),
  ("carina", r"\bcarin\w*"),
  ("trachea", r"\b(?:endo)?trache\w*|\bet\s*tube\b|\bett\b"),
  ("spine", r"\bspin(?:e|al)\b|\bvertebr\w*|\bthoracolumbar\b|\b[tl]\d{1,2}\b"),
  (
    "abdomen",
    r"\babdom\w*|\bstomach\b|\bgastric\b|\b(?:naso|oro)gastric\b|\bng\b|\bog\b|\benteric\b"
    r"|\bfeeding\b|\bdobhoff\b|\bupper\s+quadrant\b|\bbowel\b|\bsubdiaphragmatic\b",
  ),
  (
    "heart",
    r"\bheart\b|\bcardiac\b|\bventric\w*|\bpericardi\w*|\bpacer\b|\bpacemaker\b|\b(?:a)?icd\b"
    r"|\bdefib\w*|\bvalve\b|\bleads?\b",
  ),
  ("clavicle", r"\bclavic\w*"),
  ("rib", r"\bribs?\b"),
  ("both_lower", r"\bbi-?bas(?:ilar|al|ally|ilarly|es)\b"),
  ("both_apical", r"\bbi-?apical(?:ly)?\b|\bbi-?apices\b"),
  ("left_lower", r"\bretrocardiac\b|\blll\b"),
  ("left_mid", r"\blingul\w*"),
  ("left_upper", r"\blul\b"),
  ("right_mid", r"\bmiddle\s+lobes?\b|\brml\b"),
  ("right_upper", r"\brul\b"),
  ("right_lower", r"\brll\b"),
  (
    "both",
    r"\bbilateral(?:ly)?\b|\bboth(?=(?:\s+[a-z]+)?\s+(?:lungs?|sides|bases|apices|lobes|hemithora\w*|hila"
    r"|upper|lower|mid|costophrenic|perihilar|basilar|apical)\b)",
  ),
  ("right", r"\bright\b|\brt\b"),
  ("left", r"\bleft\b|\blt\b"),
  ("apical", r"\bapex\b|\bapices\b|\bapical(?:ly)?\b"),
  (
    "lower",
    r"\blung\s+bases?\b|\bbas(?:e|es|ilar|al|ally|ilarly)\b|\blower"
    + _ZONE_FOLLOW
    + r"|\binfrahilar\b",
  ),
  ("upper", r"\bupper" + _ZONE_FOLLOW + r"|\bsuprahilar\b"),
  ("mid", r"\bmid-?\s*lungs?\b|\bmid-?\s*zones?\b|\b(?:mid|middle)" + _ZONE_FOLLOW),
  ("hilar", r"\b(?:peri|para)?hil(?:ar|um|a|us)\b"),
  ("cpa", r"\bcostophrenic\b|\bcp\s+angles?\b|\bcostodiaphragmatic\b"),
  ("hemidiaphragm", r"\bhemidiaphragm\w*|\bdiaphragm\w*|\bsubpulmonic\b"),
)
# The leading guard lets the engine skip positions inside words before trying the alternatives.
LOCATION_RE = re.compile(
  r"(?<![a-z0-9])(?:" + "|".join(f"(?P<{name}>{pat})" for name, pat in _LOCATION_TERMS) + ")"
)
_IMPLIED = {
  "both_lower": (("right", "left"), "lower"),
  "both_apical": (("right", "left"), "apical"),
  "left_lower": (("left",), "lower"),
  "left_mid": (("left",), "mid"),
  "left_upper": (("left",), "upper"),
  "right_mid": (("right",), "mid"),
  "right_upper": (("right",), "upper"),
  "right_lower": (("right",), "lower"),
}
_ZONES = frozenset(
  {"apical", "lower", "upper", "mid", "hilar", "cpa", "hemidiaphragm", "clavicle", "rib"}
)
_SIDES = {"both": ("right", "left"), "right": ("right",), "left": ("left",)}
_MISC_REGION = {
  "ra": "right atrium",
  "cavoatrial": "cavoatrial junction",
  "svc": "svc",
  "upper_med": "upper mediastinum",
  "mediastinum": "mediastinum",
  "aortic_arch": "aortic arch",
  "carina": "carina",
  "trachea": "trachea",
  "spine": "spine",
  "abdomen": "abdomen",
  "heart": "cardiac silhouette",
}
_ZONE_SUFFIX = {
  None: "lung",
  "upper": "upper lung zone",
  "mid": "mid lung zone",
  "lower": "lower lung zone",
  "apical": "apical zone",
  "hilar": "hilar structures",
  "cpa": "costophrenic angle",
  "hemidiaphragm": "hemidiaphragm",
  "clavicle": "clavicle",
  "rib": "lung",
}
_LUNG_OBSERVATIONS = frozenset(LUNG_OBSERVATIONS)
# Device words -> where the device is when the report names no place for it.
_DEVICE_DEFAULTS: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = (
  (re.compile(r"\b(?:endo)?trache\w*|\bet\s*tube\b|\bett\b"), ("trachea",)),
  (
    re.compile(
      r"\b(?:naso|oro)gastric\b|\bng\b|\bog\b|\benteric\b|\bfeeding\b|\bdobhoff\b|\bgastric\b"
    ),
    ("abdomen",),
  ),
  (
    re.compile(r"\bpacer\b|\bpacemaker\b|\b(?:a)?icd\b|\bdefib\w*|\bvalve\b|\bleads?\b"),
    ("cardiac silhouette",),
  ),
  (
    re.compile(
      r"\bpicc\b|\bline\b|\blines\b|\bcatheter\b|\bport\w*\b|\bmediport\b|\bcannula\b|\bswan"
      r"|\bcentral\b"
    ),
    ("svc",),
  ),
)
_CHEST_DRAIN = re.compile(
  r"\bchest\s+tubes?\b|\bthoracostomy\b|\bdrain\w*|\bpigtail\b|\bpleural\s+(?:catheter|tube)"
)


def parse_locations(
  kinds: Sequence[str],
) -> tuple[tuple[tuple[str | None, str | None], ...], tuple[str, ...]]:
  """(side, zone) pairs and side-free region groups from location terms (`_LOCATION_TERMS` names)
  in reading order.

  Pending side words pair with the next zone word ("right upper and left lower lobes" -> (right,
  upper), (left, lower)); a zone with no pending side reuses the last side group ("right upper and
  lower lobes"); a side left without a zone gives (side, None); a zone never given a side gives
  (None, zone) -- read as both sides by the region mapper.
  """
  pairs: list[tuple[str | None, str | None]] = []
  misc: list[str] = []
  pending: list[str] = []
  last: tuple[str, ...] | None = None
  for kind in kinds:
    if kind in _MISC_REGION:
      if kind not in misc:
        misc.append(kind)
      continue
    if kind in _SIDES:
      pending.extend(sd for sd in _SIDES[kind] if sd not in pending)
      continue
    if kind in _IMPLIED:
      sides, zone = _IMPLIED[kind]
      pairs.extend((sd, zone) for sd in sides)
      last = sides
      pending = []  # "right middle lobe": the side word is the one the zone already implies
      continue
    if kind in _ZONES:
      if pending:
        last = tuple(pending)
        pending = []
      group: tuple[str | None, ...] = last if last else (None,)
      pairs.extend((sd, kind) for sd in group)
  if pending:
    sideless = [z for sd, z in pairs if sd is None]
    if sideless:  # "basilar atelectasis on the left": a trailing side completes side-less zones
      pairs = [p for p in pairs if p[0] is not None] + [(sd, z) for z in sideless for sd in pending]
    else:
      pairs.extend((sd, None) for sd in pending)
  seen: dict[tuple[str | None, str | None], None] = {}
  for p in pairs:
    seen.setdefault(p, None)
  return tuple(seen), tuple(misc)


def locate(kept: list[RawMention], ctx: ReportContext) -> None:
  """Attach location words to each mention (the gap rule is in docs/labeler.md, "Regions").

  Each mention owns a character range before it and one after it; the location terms found
  once per report (`ctx.locations`) inside those ranges and inside the mention are parsed.
  """
  by_sentence: dict[int, list[RawMention]] = {}
  for r in kept:
    by_sentence.setdefault(r.sentence, []).append(r)
  low = ctx.low
  for si, group in by_sentence.items():
    sent_s, sent_e = ctx.sentences[si]
    group.sort(key=lambda r: (r.start, r.end))
    pre: dict[int, tuple[int, int]] = {}
    post: dict[int, tuple[int, int]] = {}
    for k, r in enumerate(group):
      if k == 0:
        # From the sentence start, cut after the last clause boundary or comma, except a
        # comma closing a place preamble ("At the left base, there is atelectasis").
        s = sent_s
        for bs, be in ctx.hard:
          if sent_s <= bs and be <= r.start and not _LOC_KEEP_BOUNDARY.match(low, bs):
            s = max(s, be)
        for m in re.finditer(",", low[s : r.start]):
          if not _LOC_PREAMBLE.match(low, s, s + m.start()):
            s = s + m.end()
        pre[id(r)] = (ctx.last_tokens_start(s, r.start, _LOC_WINDOW_TOKENS), r.start)
      if k + 1 < len(group):
        nxt = group[k + 1]
        if nxt.start <= r.end:
          post[id(r)] = (r.end, r.end)
          pre[id(nxt)] = (nxt.start, nxt.start)
          continue
        last_sep = None
        for m in _LOC_SEPARATOR.finditer(low, r.end, nxt.start):
          last_sep = m
        if last_sep is not None:
          post[id(r)] = (r.end, last_sep.start())
          pre[id(nxt)] = (last_sep.end(), nxt.start)
        elif _LOC_PREPOSITION.match(low, r.end, nxt.start):
          post[id(r)] = (r.end, nxt.start)
          pre[id(nxt)] = (nxt.start, nxt.start)
        else:
          post[id(r)] = (r.end, r.end)
          pre[id(nxt)] = (r.end, nxt.start)
      else:
        cut = _LOC_TAIL_CUT.search(low, r.end, sent_e)
        end = cut.start() if cut else sent_e
        post[id(r)] = (r.end, ctx.first_tokens_end(r.end, end, _LOC_WINDOW_TOKENS))
    for r in group:
      # pre ends where the mention starts and post starts where it ends: one range
      r.own = (min(pre[id(r)][0], r.start), max(post[id(r)][1], r.end))
      r.locations = parse_locations(ctx.location_kinds(*r.own))
      if r.observation != "Fracture":
        # ribs place fractures only; "opacity overlying the left 5th rib" is in the left lung
        pairs = tuple(
          dict.fromkeys(
            (sd, None if z == "rib" else z)
            for sd, z in r.locations[0]
            if sd is not None or z != "rib"
          )
        )
        r.locations = (pairs, r.locations[1])
    # A lung finding with no place of its own takes the place of the finding it interprets or is
    # coordinated with: the nearest earlier lung finding of the sentence ("opacity in the left
    # base, likely atelectasis"; "left basilar opacity/atelectasis"), else a finding right after
    # it ("atelectasis or consolidation in the left base").
    for k, r in enumerate(group):
      if r.observation not in _LUNG_OBSERVATIONS or r.locations[0]:
        continue
      donor = None
      for o in reversed(group[:k]):
        if o.observation in _LUNG_OBSERVATIONS and o.locations[0] and o.end <= r.start:
          donor = o
          break
      if donor is None and k + 1 < len(group):
        o = group[k + 1]
        gap = low[r.end : o.start] if o.start > r.end else ""
        if (
          o.observation in _LUNG_OBSERVATIONS
          and o.locations[0]
          and ";" not in gap
          and ctx.tokens_between(r.end, o.start) <= 3
        ):
          donor = o
      if donor is not None:
        r.locations = (donor.locations[0], r.locations[1])
    # Last resort: place words elsewhere in the clause that no other finding claims
    # ("blunting of the right costophrenic angle from a small effusion").
    for r in group:
      if r.observation not in _LUNG_OBSERVATIONS or r.locations[0]:
        continue
      cs, ce = ctx.clause(r.start, r.end, sent_s, sent_e)
      claimed = [o.own for o in group if o is not r and o.observation != NO_FINDING]
      kinds = [
        kind
        for (ls, le, kind) in ctx.locations
        if cs <= ls and le <= ce and not any(a <= ls and le <= b for a, b in claimed)
      ]
      pairs, _ = parse_locations(kinds)
      if pairs:
        r.locations = (pairs, r.locations[1])


def mention_regions(r: RawMention, low: str) -> tuple[str, ...]:
  """Chest ImaGenome region names of a located mention, in the standard index order."""
  pairs, misc = r.locations
  obs = r.observation
  out: set = set()
  if obs == "Cardiomegaly":
    out.add("cardiac silhouette")
  elif obs == "Enlarged Cardiomediastinum":
    out.add("mediastinum")
    if "upper_med" in misc:
      out.add("upper mediastinum")
    if re.search(r"cardi|heart|pericard", low[r.start : r.end]):
      out.add("cardiac silhouette")
  elif obs == "Fracture":
    for side, zone in pairs:
      if zone in ("clavicle", "rib"):
        for sd in (side,) if side else ("right", "left"):
          out.add(f"{sd} {_ZONE_SUFFIX[zone]}")
    if "spine" in misc:
      out.add("spine")
  elif obs == SUPPORT_DEVICES:
    out.update(_MISC_REGION[m] for m in misc)
    for side, zone in pairs:
      if zone == "clavicle":
        out.update(f"{sd} clavicle" for sd in ((side,) if side else ("right", "left")))
    if not out:
      ctx_text = low[max(0, r.start - 40) : r.end + 1]
      if _CHEST_DRAIN.search(ctx_text):
        sides = {s for s, _ in pairs if s} or {"right", "left"}
        out.update(f"{sd} lung" for sd in sides)
      else:
        for rx, regions in _DEVICE_DEFAULTS:
          if rx.search(low[r.start : r.end]) or rx.search(ctx_text):
            out.update(regions)
            break
  else:
    lung = obs in _LUNG_OBSERVATIONS
    effusion = obs == "Pleural Effusion"
    for side, zone in pairs:
      sides = (side,) if side else ("right", "left")
      if zone is None and effusion:
        zones = ("cpa",)
      elif zone == "lower" and effusion:
        zones = ("lower", "cpa")
      elif zone is None and not lung:
        continue  # a bare side word says nothing for an "other finding"
      else:
        zones = (zone,)
      for sd in sides:
        for z in zones:
          out.add(f"{sd} {_ZONE_SUFFIX[z]}")
    out.update(_MISC_REGION[m] for m in misc if m != "heart")
    if not out and lung:
      suffix = "costophrenic angle" if effusion else "lung"
      out.update((f"right {suffix}", f"left {suffix}"))
  return tuple(sorted(out, key=REGION_INDEX.__getitem__))
