"""Rule-based radiology-report labeler: the 14 CheXpert observations and where each finding is.

`ReportLabeler` turns free-text chest X-ray reports into

* CheXpert-style labels for the 14 observations in `CHEXPERT_OBSERVATIONS`: 1 positive,
  0 negative, -1 uncertain, nan unmentioned;
* the anatomical places each mention is tied to, named as the 29 Chest ImaGenome regions in
  `CHEST_IMAGENOME_REGIONS` (used by anatomy-conditioned retrieval, ALC-ITR).

What comes from where
---------------------
*Mentions* come from the CheXpert phrase lists, read as data at run time from a directory laid out
like `labelers/chexpert/phrases`: `mention/<observation>.txt` (one phrase per line) and the
optional `unmention/<observation>.txt`. Matching follows the lists' own convention: a phrase
matches as a case-insensitive substring ("atelecta" finds "atelectasis"; the reported span is
widened to whole words), and a leading or trailing `_` demands a word boundary there
("_mediastinum" does not fire inside "pneumomediastinum"). A mention overlapping an unmention phrase
(matched from a word start) does not count: "effusion" in "pericardial effusion", "nodule" in
"calcified nodules" (but not in "uncalcified nodule"). A small project list (`EXTRA_UNMENTIONS`)
removes substring accidents the lists would otherwise make ("tube" in "tuberculosis", "plate" in
"endplate"). Where mentions of two observations overlap, one lying inside a longer one is dropped
("contour" inside "cardiac contour"); an "other finding" of `no_finding.txt` lying inside a
finding is dropped ("density" inside "nodular density").

*Negation and uncertainty* are decided by rules written for this project, without a dependency
parser: sentences, clauses (cut at "but", "however", "which", ";", "there is", ...), and cue phrases
with a direction and a scope (`_CUE_SPECS`; overlapping cues resolve to the longest, so "cannot
be excluded" beats "not"). A pre-cue ("no", "without", "negative for", "free of", "possible", "may",
...) governs the mentions after it up to the end of its clause or the start of a new subject (", the
...", "and there ..."), so lists such as "No pneumothorax, effusion, or consolidation." are negated
as a whole; the nearest cue wins, except that modifier-like uncertainty words ("suspicious",
"suggest", "concerning") never lift a negation ("no opacity to suggest pneumonia" is negative).
Post-cues ("is not seen", "has resolved", "cannot be excluded", "is likely") govern the mention they
predicate on when only filler words lie in between (no "with"/"for", no verb before a comma).
Double negatives ("cannot exclude", "not ruled out", "difficult to exclude") are uncertainty, and so
are hedges about the examination ("evaluation for", "correlate clinically for", "in the appropriate
clinical setting"). Pseudo-negations ("no change in", "not significantly changed", "partially
resolved") cancel a negation; masks ("age-indeterminate") hide a cue word that says nothing about
presence; a word-internal "non" prefix ("nonconsolidating") negates its mention. If a mention has
both an uncertainty and a negation cue, uncertainty wins ("No pneumothorax, effusion cannot be
excluded" leaves the effusion uncertain).

*Attribute mentions.* Several Cardiomegaly and Enlarged Cardiomediastinum phrases name an anatomical
attribute rather than an abnormality ("heart size", "the heart", "mediastinal silhouette",
"contour"). Such a mention counts only with a qualifier: "normal"/"unremarkable"/"within normal
limits"/"not enlarged" make it negative, "enlarged"/"prominent"/"widened" positive,
"borderline"/"top normal"/"upper limits of normal" uncertain (so does a hedge: "heart size may be
enlarged"); "stable heart size" alone is left unmentioned. A phrase is an attribute phrase when it
belongs to one of those two observations and contains no abnormality stem (`megal`, `enlarg`,
`widen`); this is a rule, not a list, so edited phrase files keep working.

*Aggregation* follows the CheXpert convention: across the mentions of one observation positive wins
over uncertain, which wins over negative; a positive or uncertain "chf"/"heart failure" adds an
uncertain Cardiomegaly; No Finding is 1 when no observation other than Support Devices -- and none
of the "other finding" phrases of `mention/no_finding.txt` (emphysema, granuloma, scoliosis, ...)
-- is positive or uncertain, and nan otherwise. An empty report is all nan (nothing was said).

*Regions.* Each mention owns the place words around it in its sentence that no neighbouring
mention claims: the gap between two mentions is split at its last separator (",", "and", "or",
"with", "/", "versus", "likely", ...), a gap opening with a preposition belongs to the earlier
mention ("opacity in the right base"), and the first mention of a sentence also owns a leading place
phrase ("At the left base, there is atelectasis"). Laterality ("right", "left", "bilateral",
"bibasilar") pairs with zones ("upper/mid/lower" + lobe/lung/zone, "base", "apex", "lingula",
"retrocardiac", "perihilar", "costophrenic", "hemidiaphragm") and maps to region names: "right
basilar atelectasis" -> right lower lung zone; "right upper and left lower lobes" -> right upper +
left lower lung zone. A lung finding with no place words of its own takes those of the lung finding
it interprets or is coordinated with ("opacity in the left base, likely atelectasis"), else
unclaimed place words of its clause. Observation rules: Cardiomegaly -> cardiac silhouette; Enlarged
Cardiomediastinum -> mediastinum (+ upper mediastinum for "superior/upper mediastinum", + cardiac
silhouette for "cardiomediastinal"); Pleural Effusion with no zone -> the costophrenic angle(s) (a
basal one -> lower lung zone + costophrenic angle). Unknown places, documented choice: a lung
finding with a side but no zone -> that whole lung ("right lung"); with a zone but no side -> that
zone on both sides; with neither -> both lungs (both costophrenic angles for effusion). Fractures go
to the clavicle, the spine, or for ribs (which have no region of their own) the lung of that side;
Support Devices to the place named (trachea, carina, svc, cavoatrial junction, right atrium,
abdomen, ...) or else a device-specific default (endotracheal tube -> trachea, enteric tube ->
abdomen, pacemaker / valve -> cardiac silhouette, line / catheter / port -> svc, chest tube -> lung
of that side). A place with no Chest ImaGenome counterpart (humerus, shoulder) gives an empty tuple.
"Other finding" mentions get regions only from explicit place words.

The module needs only numpy and the standard library (it must not import jax or jimte).
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from data_pipeline.names import CHEXPERT_OBSERVATIONS, REGION_INDEX

__all__ = [
  "EXTRA_UNMENTIONS",
  "PHRASES_ENV_VAR",
  "POSITIVE",
  "NEGATIVE",
  "UNCERTAIN",
  "STATUS_VALUES",
  "Mention",
  "LabelResult",
  "ReportLabeler",
  "default_phrases_dir",
  "load_phrase_lists",
  "split_sentences",
]


# Environment variable naming the phrase-list directory (`.../labelers/chexpert/phrases`).
PHRASES_ENV_VAR = "JIMTE_CHEXPERT_PHRASES"

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0
# Mention status -> label value.
STATUS_VALUES: Mapping[str, float] = {
  "positive": POSITIVE,
  "negative": NEGATIVE,
  "uncertain": UNCERTAIN,
}

# Project additions to the unmention lists: substrings in which a mention phrase is an accident of
# substring matching (or names a different structure), per observation.
EXTRA_UNMENTIONS: Mapping[str, tuple[str, ...]] = {
  "Support Devices": (
    "tubercul",  # "tube" inside tuberculosis / tuberculous
    "tuberosit",  # "tube" inside tuberosity
    "endplate",  # "plate" inside vertebral endplate(s)
    "end plate",
    "platelike",  # "plate" in platelike atelectasis
    "plate-like",
    "plate like",
    "plateau",
    "b-lines",  # Kerley B lines are an interstitial sign, not lines
    "kerley",
    "septal lines",
  ),
  "Enlarged Cardiomediastinum": (
    "hilar contour",  # "contour" of the hila or of the diaphragm is not the mediastinum
    "diaphragmatic contour",
    "diaphragm contour",
  ),
  "Pneumonia": (
    "postinfectious",  # sequela of an old infection
    "post-infectious",
    "granulomatous infection",  # healed granulomatous disease, not pneumonia
  ),
  "Lung Lesion": ("lumpectomy",),  # "lump" inside a breast operation
  "Pleural Other": ("cystic fibrosis",),  # "fibrosis" naming a genetic disease, not the pleura
  "Edema": ("soft tissue edema", "subcutaneous edema"),  # edema outside the lungs
}

_OBS_INDEX: dict[str, int] = {name: i for i, name in enumerate(CHEXPERT_OBSERVATIONS)}
_NO_FINDING = "No Finding"
_SUPPORT = "Support Devices"


def _file_stem(observation: str) -> str:
  """Phrase-file stem of an observation ("Pleural Effusion" -> "pleural_effusion")."""
  return observation.lower().replace(" ", "_")


# --------------------------------------------------------------------------------------------------
# Phrase lists
# --------------------------------------------------------------------------------------------------


def default_phrases_dir() -> Path:
  """The phrase-list directory: `$JIMTE_CHEXPERT_PHRASES`, else `<repo>/../shared/data/...`."""
  env = os.environ.get(PHRASES_ENV_VAR)
  if env:
    return Path(env)
  return (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "labelers" / "chexpert" / "phrases"
  )


def _read_phrases(path: Path) -> tuple[str, ...]:
  """Lower-cased, de-duplicated phrases of one list file (blank lines and `#` comments
  skipped)."""
  seen: dict[str, None] = {}
  for line in path.read_text(encoding="utf-8").splitlines():
    phrase = line.strip().lower()
    if phrase and not phrase.startswith("#"):
      seen.setdefault(phrase, None)
  return tuple(seen)


def load_phrase_lists(
  phrases_dir: str | os.PathLike | None = None,
) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
  """Read `mention/*.txt` and `unmention/*.txt` into `({observation: phrases}, {...})`.

  Every observation must have a mention file; unmention files are optional. Raises
  `FileNotFoundError` naming the missing path so a misconfigured checkout is easy to fix.
  """
  root = Path(phrases_dir) if phrases_dir is not None else default_phrases_dir()
  mention_dir = root / "mention"
  if not mention_dir.is_dir():
    raise FileNotFoundError(
      f"CheXpert phrase lists not found: {mention_dir} is not a directory. Pass phrases_dir= "
      f"or set {PHRASES_ENV_VAR} to the 'labelers/chexpert/phrases' directory."
    )
  mentions: dict[str, tuple[str, ...]] = {}
  unmentions: dict[str, tuple[str, ...]] = {}
  for obs in CHEXPERT_OBSERVATIONS:
    path = mention_dir / f"{_file_stem(obs)}.txt"
    if not path.is_file():
      raise FileNotFoundError(f"CheXpert mention list missing for {obs!r}: {path}")
    mentions[obs] = _read_phrases(path)
    upath = root / "unmention" / f"{_file_stem(obs)}.txt"
    unmentions[obs] = _read_phrases(upath) if upath.is_file() else ()
  return mentions, unmentions


def _phrase_pattern(phrase: str) -> str:
  """Regex for one list phrase: substring match, `_` at an end = word boundary, spaces =
  `\\s+`."""
  lead = r"(?<![a-z0-9])" if phrase.startswith("_") else ""
  trail = r"(?![a-z0-9])" if phrase.endswith("_") else ""
  words = [re.escape(w) for w in re.split(r"[\s_]+", phrase) if w]
  return lead + r"\s+".join(words) + trail


def _alternation(phrases: Iterable[str]) -> re.Pattern[str] | None:
  """One compiled alternation of phrases, longest first so the longest match at a position wins."""
  pats = sorted({_phrase_pattern(p) for p in phrases if p.strip("_ ")}, key=len, reverse=True)
  if not pats:
    return None
  return re.compile("|".join(f"(?:{p})" for p in pats))


def _unmention_alternation(phrases: Iterable[str]) -> re.Pattern[str] | None:
  """Like `_alternation` but anchored at a word start: "calcified nodul" must not fire inside
  "uncalcified nodule"."""
  rx = _alternation(phrases)
  return None if rx is None else re.compile(r"(?<![a-z0-9])(?:" + rx.pattern + ")")


# --------------------------------------------------------------------------------------------------
# Sentences, clauses, tokens
# --------------------------------------------------------------------------------------------------

_SENT_END = re.compile(r"[.!?]+(?=\s|$)|\n[ \t]*\n")
_ABBREVIATIONS = frozenset(
  {"vs", "e.g", "i.e", "approx", "dr", "mr", "mrs", "ms", "st", "fig", "cf", "etc"}
)
_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")
_PREV_WORD = re.compile(r"([a-z][a-z.]*)$")


def split_sentences(text: str) -> list[tuple[int, int]]:
  """Character spans of the sentences of `text`, terminal punctuation included.

  A sentence ends at `.`, `!` or `?` followed by whitespace (or the end), or at a blank line;
  periods of a few abbreviations ("vs.", "e.g.") and decimals ("1.5") do not end one. Numbered-list
  markers ("1.") become their own short sentences, which is harmless. Whitespace-only spans are
  dropped and spans are trimmed.
  """
  low = text.lower()
  spans: list[tuple[int, int]] = []
  start = 0
  for m in _SENT_END.finditer(low):
    if m.group(0)[0] == "." and m.end() - m.start() == 1:
      prev = _PREV_WORD.search(low, max(0, m.start() - 12), m.start())
      if prev and prev.group(1).rstrip(".") in _ABBREVIATIONS:
        continue
    end = m.end() if m.group(0)[0] != "\n" else m.start()
    spans.append((start, end))
    start = m.end()
  spans.append((start, len(text)))
  out = []
  for s, e in spans:
    while s < e and text[s].isspace():
      s += 1
    while e > s and text[e - 1].isspace():
      e -= 1
    if e > s:
      out.append((s, e))
  return out


# Clause boundaries: no negation/uncertainty scope and no post-cue reaches across them.
_HARD_BOUNDARY = re.compile(
  r";|:(?!\d)|\bbut\b|\bhowever\b|\balthough\b|\bthough\b|\bwhich\b|\bwhereas\b|\bwhile\b"
  r"|\bexcept\b|\baside\s+from\b|\bapart\s+from\b|\botherwise\b|\bwith\s+the\s+exception\s+of\b"
  r"|\bthere\s+(?:is|are|was|were|has|have|appears?|remains?|seems?)\b|\bthere's\b|,\s*with\b"
)
# Where a new subject starts: ends the scope of a preceding pre-cue (but not the reach of
# post-cues, so "The heart and the mediastinum are normal" still negates both).
_SOFT_BOUNDARY = re.compile(r"(?:,\s*(?:and\s+)?|\band\s+)(?:the|there|this|these|it|its|a|an)\b")
# Location-gap separators between two mentions (see module docstring).
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
# Verbs: a gap that has one before a comma is a new clause, not a list of subjects.
_GAP_VERB = re.compile(
  r"\b(?:is|are|was|were|appears?|remains?|seems?|has|have|shows?|demonstrates?)\b"
)
# What may follow a post-cue that must end its clause ("atelectasis is likely." / "..., likely
# and").
_CLAUSE_END = re.compile(
  r"\s*(?:$|[.,;:?!)\]]|and\b|or\b|but\b|given\b|in\s+the\s+(?:appropriate|correct|right)\b)"
)
# Words that stop a post-cue from reaching back to the mention.
_GAP_BLOCK = re.compile(r"\b(?:with|without|by|for|no|not)\b")


# --------------------------------------------------------------------------------------------------
# Negation / uncertainty cues
# --------------------------------------------------------------------------------------------------

_NEG, _UNC, _PSEUDO, _ASSERT, _MASK = "neg", "unc", "pseudo", "assert", "mask"
_CLAUSE = -1  # pre-scope: to the end of the clause (or the next soft boundary)
_PRE_CLAUSE_MAX_TOKENS = 25
_POST_MAX_TOKENS = 12


@dataclasses.dataclass(frozen=True)
class _CueSpec:
  """A family of cue phrases: its kind, how far it reaches before/after a mention, how it
  combines."""

  pattern: str
  kind: str  # _NEG, _UNC, _PSEUDO, _ASSERT, or _MASK (hides its words from the other cues)
  pre: int | None = None  # None: not a pre-cue; _CLAUSE; or the maximum token gap
  post: int | None = None  # None: not a post-cue; else the maximum token gap
  post_needs_end: bool = False  # as a post-cue, must end its clause ("atelectasis is likely.")
  overrides_neg: bool = True  # False: a modifier that never lifts an enclosing negation
  attribute_only: bool = False  # applies only to attribute mentions ("heart size")
  qualifier: bool = (
    False  # says how an attribute is (normal / enlarged / borderline): it makes one count
  )
  priority: int = 0  # tie-break between equally long overlapping cues (higher wins)
  needles: tuple[str, ...] = ()  # every match contains one of these, so absent cues skip the regex


# Modifiers allowed between "no"/"without" and "change" in a pseudo-negation.
_MODS = (
  r"(?:significant|significantly|definite|definitely|appreciable|substantial|marked|acute|radiographic"
  r"|interval|apparent|major|gross|visible|detectable|overall|further|real|new)"
)
# Words allowed between "not" and "seen" in a post-negation ("not well-seen", "not been
# identified").
_NOT_VERB_FILL = (
  r"(?:(?:been|be|well|clearly|definitely|really|convincingly|readily|currently|again|now|longer|identified"
  r"|otherwise)[\s-]+){0,2}"
)

_CUE_SPECS: tuple[_CueSpec, ...] = (
  # --- negation -------------------------------------------------------------------------------
  _CueSpec(r"\bno\b", _NEG, pre=_CLAUSE, needles=("no",)),
  _CueSpec(r"\bnot\b", _NEG, pre=_CLAUSE, needles=("not",)),
  _CueSpec(r"\bwithout\b", _NEG, pre=_CLAUSE, needles=("without",)),
  _CueSpec(r"\bnegative\s+(?:for|of)\b", _NEG, pre=_CLAUSE, needles=("negative",)),
  _CueSpec(r"\b(?:free|clear)\s+of\b", _NEG, pre=_CLAUSE, needles=("free", "clear")),
  _CueSpec(r"\babsence\s+of\b", _NEG, pre=_CLAUSE, needles=("absence",)),
  _CueSpec(
    r"\b(?:interval\s+)?(?:resolution|removal|clearing|disappearance)\s+of\b",
    _NEG,
    pre=_CLAUSE,
    needles=("resolution", "removal", "clearing", "disappearance"),
  ),
  _CueSpec(r"\bresolved\b", _NEG, pre=_CLAUSE, post=_POST_MAX_TOKENS, needles=("resolved",)),
  _CueSpec(r"\b(?:neither|nor|never)\b", _NEG, pre=_CLAUSE, needles=("neither", "nor", "never")),
  _CueSpec(r"\brather\s+than\b", _NEG, pre=_CLAUSE, needles=("rather",)),
  _CueSpec(
    r"\b(?:not|no\s+longer|never)[\s-]+"
    + _NOT_VERB_FILL
    + r"(?:seen|identified|present|visuali[sz]ed|demonstrated|appreciated|evident|noted|detected"
    r"|visible|apparent|shown|observed|found|suggested|confirmed|identifiable|discernible)\b",
    _NEG,
    post=_POST_MAX_TOKENS,
    needles=("no", "never"),
  ),
  _CueSpec(
    r"\b(?:cleared|disappeared|removed|absent|gone|excluded|ruled\s+out|negative)\b",
    _NEG,
    post=_POST_MAX_TOKENS,
    needles=(
      "cleared",
      "disappeared",
      "removed",
      "absent",
      "gone",
      "excluded",
      "ruled",
      "negative",
    ),
  ),
  # --- pseudo-negation: cancels a negation ("no change in the effusion") -------------------------
  _CueSpec(
    r"\bno\s+(?:"
    + _MODS
    + r"\s+){0,3}(?:change|changes|increase|progression|worsening|difference)\b",
    _PSEUDO,
    pre=_CLAUSE,
    needles=("chang", "increase", "progression", "worsening", "difference"),
  ),
  _CueSpec(
    r"\b(?:without|not)\s+(?:"
    + _MODS
    + r"\s+){0,3}(?:change|changed|progression|progressed|worsening"
    r"|worsened)\b",
    _PSEUDO,
    pre=_CLAUSE,
    needles=("chang", "progress", "worsen"),
  ),
  _CueSpec(
    r"\b(?:partial(?:ly)?|incomplete(?:ly)?|near(?:ly)?|almost|mostly|largely|not\s+(?:completely|fully"
    r"|entirely))\s+(?:resolved|resolution|cleared|resolving)\b",
    _PSEUDO,
    pre=_CLAUSE,
    priority=1,
    needles=("resol", "cleared"),
  ),
  _CueSpec(r"\bnot\s+only\b", _PSEUDO, pre=_CLAUSE, needles=("only",)),
  # --- uncertainty -----------------------------------------------------------------------------
  _CueSpec(
    r"\b(?:cannot|can\s*not|can't|could\s+not|couldn't|may\s+not|not)\s+(?:be\s+)?"
    r"(?:entirely\s+|completely\s+|totally\s+|definitely\s+|fully\s+|reliably\s+|excluded\s+or\s+)?"
    r"(?:exclude[ds]?|ruled?\s+out)\b",
    _UNC,
    pre=_CLAUSE,
    post=_POST_MAX_TOKENS,
    priority=2,
    needles=("exclude", "rule"),
  ),
  _CueSpec(
    r"\b(?:difficult|hard|unable)\s+to\s+(?:\w+ly\s+)?(?:exclude|rule\s+out)\b",
    _UNC,
    pre=_CLAUSE,
    post=_POST_MAX_TOKENS,
    needles=("difficult", "hard", "unable"),
  ),
  _CueSpec(
    r"\b(?:rule\s+out|r/o|to\s+exclude)\b", _UNC, pre=_CLAUSE, needles=("rule", "r/o", "exclude")
  ),
  # requests and hedges about the examination itself
  _CueSpec(
    r"\bfor\s+(?:further\s+)?evaluation\s+of\b|\b(?:evaluat\w*|eval|assess\w*)\s+for\b",
    _UNC,
    pre=_CLAUSE,
    needles=("eval", "assess"),
  ),
  _CueSpec(
    r"\bcorrelat\w*(?:\s+clinically)?\s+(?:for|with)\b", _UNC, pre=_CLAUSE, needles=("correlat",)
  ),
  _CueSpec(
    r"\bin\s+the\s+(?:appropriate|correct|right|proper)\s+clinical\s+(?:setting|context|scenario)\b",
    _UNC,
    pre=_CLAUSE,
    post=_POST_MAX_TOKENS,
    needles=("clinical",),
  ),
  _CueSpec(
    r"\b(?:may|might|could)\s+not\s+be\s+(?:\w+ly\s+)?(?:seen|demonstrated|visible|detected|identified"
    r"|evident|apparent|visualized|appreciated)\b",
    _UNC,
    post=_POST_MAX_TOKENS,
    priority=1,
    needles=("may", "might", "could"),
  ),
  _CueSpec(
    r"\b(?:may|might|could)\s+(?:also\s+|still\s+)?be\s+(?:present|seen|noted|visible|identified|developing"
    r"|superimposed|obscured|masked|contributing|there|hidden)\b",
    _UNC,
    pre=_CLAUSE,
    post=_POST_MAX_TOKENS,
    priority=1,
    needles=("may", "might", "could"),
  ),
  _CueSpec(
    r"\b(?:may|might|could|maybe|perhaps)\b",
    _UNC,
    pre=_CLAUSE,
    needles=("may", "might", "could", "perhaps"),
  ),
  _CueSpec(
    r"\b(?:possible|possibly|probable|probably|likely|unlikely|presumed|presumably|presumptive|questionable"
    r"|questionably|equivocal|indeterminate|uncertain)\b",
    _UNC,
    pre=_CLAUSE,
    post=_POST_MAX_TOKENS,
    post_needs_end=True,
    needles=(
      "possib",
      "probab",
      "likely",
      "presum",
      "question",
      "equivocal",
      "indeterminate",
      "uncertain",
    ),
  ),
  _CueSpec(
    r"\bquestion(?:ed)?(?:\s+of)?\b",
    _UNC,
    pre=_CLAUSE,
    post=_POST_MAX_TOKENS,
    post_needs_end=True,
    needles=("question",),
  ),
  _CueSpec(
    r"\b(?:differential(?:\s+diagnosis)?(?:\s+(?:includes?|of))?|ddx|consider(?:ed|ation)?"
    r"|(?:raises?\s+the\s+)?possibility(?:\s+of)?)\b",
    _UNC,
    pre=_CLAUSE,
    post=_POST_MAX_TOKENS,
    post_needs_end=True,
    needles=("differential", "ddx", "consider", "possibility"),
  ),
  _CueSpec(r"\b(?:versus|vs)\b\.?", _UNC, pre=_CLAUSE, post=3, needles=("vs", "versus")),
  _CueSpec(
    r"\b(?:suspicious|suspicion|suspect(?:ed|s)?|suggest(?:s|ed|ive|ing|ion)?|concern(?:ing|s)?|worrisome"
    r"|favou?r(?:ed|s|ing)?)\b(?:\s+(?:for|of))?",
    _UNC,
    pre=_CLAUSE,
    post=_POST_MAX_TOKENS,
    post_needs_end=True,
    overrides_neg=False,
    needles=("suspic", "suspect", "suggest", "concern", "worrisome", "favo"),
  ),
  _CueSpec(
    r"\bborderline\b|\b(?:top|upper|high)(?:\s*-\s*|\s+)normal\b"
    r"|\b(?:at\s+)?(?:the\s+)?upper\s+(?:limits?|range|end)\s+(?:of\s+)?(?:the\s+)?normal\b"
    r"|\bupper\s+normal\s+limits?\b",
    _UNC,
    pre=4,
    post=_POST_MAX_TOKENS,
    priority=1,
    qualifier=True,
    needles=("borderline", "normal"),
  ),
  _CueSpec(r"\?", _UNC, pre=2, post=2, needles=("?",)),
  # --- masks: phrases holding a cue word that say nothing about presence ------------------------
  _CueSpec(
    r"\bage[\s-]+(?:indeterminate|uncertain|unknown)\b"
    r"|\b(?:indeterminate|uncertain|unknown)\s+(?:age|chronicity)\b",
    _MASK,
    priority=3,
    needles=("indeterminate", "uncertain", "unknown"),
  ),
  # --- attribute qualifiers ("heart size", "mediastinal silhouette") ----------------------------
  _CueSpec(
    r"\bnormal(?:ly)?(?:\s+in\s+(?:size|caliber|contour|configuration|appearance))?\b|\bunremarkable\b"
    r"|\bwithin\s+(?:the\s+)?normal\s+limits\b|\bwnl\b|\bnon-?enlarged\b|\b(?:small|normal)(?:-|\s+)sized?\b"
    r"|\bnot\s+(?:(?:significantly|markedly|substantially|appreciably|particularly|definitely|grossly|clearly"
    r"|really|abnormally)\s+)?(?:enlarged|large|widened|wide|prominent|increased|abnormal)\b",
    _NEG,
    pre=5,
    post=_POST_MAX_TOKENS,
    attribute_only=True,
    qualifier=True,
    needles=("normal", "unremarkable", "wnl", "enlarged", "small", "not"),
  ),
  _CueSpec(
    r"\b(?:enlarg\w*|large|larger|increased|increasing|prominent|prominence|widen\w*|wide|bulg\w*|abnormal"
    r"|accentuated|dilat\w*|big|globular)\b",
    _ASSERT,
    pre=4,
    post=6,
    attribute_only=True,
    overrides_neg=False,
    qualifier=True,
    needles=(
      "enlarg",
      "large",
      "increas",
      "prominen",
      "wide",
      "bulg",
      "abnormal",
      "accentuated",
      "dilat",
      "big",
      "globular",
    ),
  ),
)


@dataclasses.dataclass(frozen=True)
class _Cue:
  """One cue occurrence in a report."""

  start: int
  end: int
  spec: _CueSpec


# --------------------------------------------------------------------------------------------------
# Location words
# --------------------------------------------------------------------------------------------------

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
_LOCATION_RE = re.compile(
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
_LUNG_OBSERVATIONS = frozenset(
  {
    "Lung Lesion",
    "Lung Opacity",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
  }
)
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
_ABNORMAL_PHRASE = re.compile(r"megal|enlarg|widen")
_NON_PREFIX = re.compile(r"(?<![a-z])non-?$")


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Mention:
  """One mention of an observation in a report.

  `phrase` is the report text of the mention, widened to whole words; `span` its character
  offsets in the report; `status` one of "positive", "negative", "uncertain"; `sentence` the
  sentence it sits in; `regions` Chest ImaGenome region names, in the standard index order.
  Mentions with observation "No Finding" are CheXpert's "other finding" phrases (emphysema,
  granuloma, ...): a positive or uncertain one means the report is not normal.
  """

  observation: str
  phrase: str
  span: tuple[int, int]
  status: str
  sentence: str
  regions: tuple[str, ...]

  @property
  def value(self) -> float:
    """The status as a label value (1 positive, 0 negative, -1 uncertain)."""
    return STATUS_VALUES[self.status]


@dataclasses.dataclass(frozen=True)
class LabelResult:
  """Labels of one report (float32 [14], CheXpert order, nan = unmentioned) and its mentions."""

  labels: np.ndarray
  mentions: tuple[Mention, ...]

  def as_dict(self) -> dict[str, float]:
    """`{observation: value}` for all 14 observations (nan for unmentioned)."""
    return {obs: float(v) for obs, v in zip(CHEXPERT_OBSERVATIONS, self.labels, strict=True)}

  def finding_regions(self) -> dict[str, tuple[str, ...]]:
    """`{observation: regions}` over positive/uncertain mentions (No Finding excluded).

    An observation appears as soon as one of its mentions is positive or uncertain, even when no
    region could be named for it (empty tuple); regions are in the standard index order.
    """
    acc: dict[str, set] = {}
    for m in self.mentions:
      if m.observation == _NO_FINDING or m.status == "negative":
        continue
      acc.setdefault(m.observation, set()).update(m.regions)
    return {
      obs: tuple(sorted(acc[obs], key=REGION_INDEX.__getitem__))
      for obs in CHEXPERT_OBSERVATIONS
      if obs in acc
    }


# --------------------------------------------------------------------------------------------------
# The labeler
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Raw:
  """A mention while it is being built: raw match span, widened span, observation."""

  observation: str
  raw: tuple[int, int]
  start: int
  end: int
  attribute: bool
  non_prefix: bool = False  # the word carries a negating "non" prefix ("nonconsolidating")
  own: tuple[int, int] = (0, 0)  # character range whose place words belong to this mention
  status: str | None = None
  sentence: int = 0
  locations: tuple[tuple[tuple[str | None, str | None], ...], tuple[str, ...]] = ((), ())


def _lower_same_length(text: str) -> str:
  """`text.lower()`, keeping character offsets even where Unicode lower-casing changes lengths."""
  low = text.lower()
  if len(low) == len(text):
    return low
  return "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


class ReportLabeler:
  """CheXpert-style labeler with anatomical regions; see the module docstring for the rules.

  `phrases_dir` is the `labelers/chexpert/phrases` directory (default:
  `default_phrases_dir()`). All regexes are compiled once here; labeling is pure Python and fast
  (thousands of reports/s).
  """

  def __init__(self, phrases_dir: str | os.PathLike | None = None):
    mentions, unmentions = load_phrase_lists(phrases_dir)
    self.phrases_dir = Path(phrases_dir) if phrases_dir is not None else default_phrases_dir()
    self.mention_phrases: dict[str, tuple[str, ...]] = mentions
    self.unmention_phrases: dict[str, tuple[str, ...]] = {
      obs: tuple(unmentions.get(obs, ())) + EXTRA_UNMENTIONS.get(obs, ())
      for obs in CHEXPERT_OBSERVATIONS
    }
    self._mention_re = {obs: _alternation(p) for obs, p in mentions.items()}
    # The first word of every phrase: an observation none of whose first words occurs is skipped.
    self._mention_needles = {
      obs: tuple({re.split(r"[\s_]+", p.strip("_ "))[0] for p in phrases if p.strip("_ ")})
      for obs, phrases in mentions.items()
    }
    self._unmention_re = {
      obs: _unmention_alternation(p) for obs, p in self.unmention_phrases.items()
    }
    # Cues: one alternation per spec, matched over the whole report.
    self._cue_res = [(re.compile(spec.pattern), spec) for spec in _CUE_SPECS]

  # ---------------------------------------------------------------- public API
  def label(self, text: str | None) -> LabelResult:
    """Label one report: 14 values (nan/1/0/-1) and every mention with status and regions."""
    text = "" if text is None else str(text)
    labels = np.full(len(CHEXPERT_OBSERVATIONS), np.nan, dtype=np.float32)
    if not text.strip():
      return LabelResult(labels, ())
    low = _lower_same_length(text)
    sentences = split_sentences(text)
    sent_starts = [s for s, _ in sentences]
    tok_starts = [m.start() for m in _WORD.finditer(low)]
    hard = [(m.start(), m.end()) for m in _HARD_BOUNDARY.finditer(low)]
    soft_starts = [m.start() for m in _SOFT_BOUNDARY.finditer(low)]
    cues = self._find_cues(low)
    cue_ends = [c.end for c in cues]
    cue_starts = [c.start for c in cues]
    raws = self._find_mentions(low)

    ctx = _Context(
      low, sentences, sent_starts, tok_starts, hard, soft_starts, cues, cue_starts, cue_ends
    )
    kept: list[_Raw] = []
    for r in raws:
      r.sentence = max(0, bisect.bisect_right(sent_starts, r.start) - 1)
      r.status = self._status(r, ctx)
      if r.status is not None:
        kept.append(r)
    self._locate(kept, ctx)

    mentions = []
    for r in kept:
      s, e = sentences[r.sentence]
      mentions.append(
        Mention(
          observation=r.observation,
          phrase=text[r.start : r.end],
          span=(r.start, r.end),
          status=r.status,
          sentence=text[s:e],
          regions=self._regions(r, low),
        )
      )
    return LabelResult(self._aggregate(mentions, labels), tuple(mentions))

  def label_many(self, texts: Iterable[str | None]) -> np.ndarray:
    """Labels of many reports as a float32 array [N, 14]."""
    rows = [self.label(t).labels for t in texts]
    if not rows:
      return np.zeros((0, len(CHEXPERT_OBSERVATIONS)), dtype=np.float32)
    return np.stack(rows).astype(np.float32, copy=False)

  def finding_regions(self, text: str | None) -> dict[str, tuple[str, ...]]:
    """`{observation: Chest ImaGenome regions}` of the positive/uncertain findings of a report."""
    return self.label(text).finding_regions()

  # ---------------------------------------------------------------- mentions
  def _find_mentions(self, low: str) -> list[_Raw]:
    """All mentions not inside an unmention phrase or inside a longer mention of another
    observation."""
    found: list[_Raw] = []
    for obs in CHEXPERT_OBSERVATIONS:
      rx = self._mention_re[obs]
      if rx is None or not any(n in low for n in self._mention_needles[obs]):
        continue
      matches = [(m.start(), m.end()) for m in rx.finditer(low) if m.end() > m.start()]
      if not matches:
        continue
      urx = self._unmention_re[obs]
      if urx is not None:
        # Overlap, not containment: "nodule" in "calcified nodules" overlaps "calcified nodul".
        blocked = [(m.start(), m.end()) for m in urx.finditer(low)]
        matches = [(s, e) for s, e in matches if not any(bs < e and s < be for bs, be in blocked)]
      for s, e in matches:
        ws, we = s, e
        while ws > 0 and low[ws - 1].isalnum():
          ws -= 1
        while we < len(low) and low[we].isalnum():
          we += 1
        attribute = obs in (
          "Cardiomegaly",
          "Enlarged Cardiomediastinum",
        ) and not _ABNORMAL_PHRASE.search(low[ws:we])
        non_prefix = _NON_PREFIX.search(low, max(0, s - 5), s) is not None
        found.append(_Raw(obs, (s, e), ws, we, attribute, non_prefix))
    # Containment: a finding inside a strictly longer finding of another observation is dropped
    # ("contour" inside "cardiac contour"); an "other finding" (No Finding list) is dropped when
    # it lies inside any finding ("density" inside "nodular density"), never the reverse.
    keep = []
    for a in found:
      drop = False
      for b in found:
        if b is a or b.observation == a.observation:
          continue
        inside = b.raw[0] <= a.raw[0] and a.raw[1] <= b.raw[1]
        if not inside:
          continue
        if (
          a.observation == _NO_FINDING
          and b.observation != _NO_FINDING
          or b.observation != _NO_FINDING
          and (b.raw[1] - b.raw[0]) > (a.raw[1] - a.raw[0])
        ):
          drop = True
        if drop:
          break
      if not drop:
        keep.append(a)
    keep.sort(key=lambda r: (r.start, r.end, _OBS_INDEX[r.observation]))
    return keep

  # ---------------------------------------------------------------- cues and status
  def _find_cues(self, low: str) -> list[_Cue]:
    """All cue occurrences, overlaps resolved: the longer cue wins, then the higher priority."""
    cand = []
    for rx, spec in self._cue_res:
      if spec.needles and not any(n in low for n in spec.needles):
        continue
      for m in rx.finditer(low):
        if m.end() > m.start():
          cand.append(_Cue(m.start(), m.end(), spec))
    cand.sort(key=lambda c: (-(c.end - c.start), -c.spec.priority, c.start))
    taken: list[tuple[int, int]] = []
    out = []
    for c in cand:
      if any(c.start < e and s < c.end for s, e in taken):
        continue
      taken.append((c.start, c.end))
      out.append(c)
    out.sort(key=lambda c: c.start)
    return out

  def _status(self, r: _Raw, ctx: _Context) -> str | None:
    """Status of one mention from its pre- and post-cues; None drops an unqualified attribute."""
    if r.non_prefix:
      return "negative"
    sent_s, sent_e = ctx.sentences[r.sentence] if ctx.sentences else (0, len(ctx.low))
    clause_s, clause_e = ctx.clause(r.start, r.end, sent_s, sent_e)
    pre, pre_modifier = self._pre_cue(r, ctx, clause_s)
    post, hedged = self._post_cue(r, ctx, clause_e)
    if r.attribute and not any(
      c is not None and c.spec.qualifier for c in (pre, pre_modifier, post)
    ):
      return None  # "stable heart size", "limited assessment of heart size": says nothing
    pre_kind = pre.spec.kind if pre else None
    post_kind = post.spec.kind if post else None
    if post_kind == _UNC or pre_kind == _UNC:
      return "uncertain"
    if post_kind == _NEG or pre_kind == _NEG:
      return "negative"
    if r.attribute and hedged:
      return "uncertain"  # "heart size may be enlarged"
    return "positive"

  @staticmethod
  def _applies(spec: _CueSpec, r: _Raw) -> bool:
    return r.attribute or not spec.attribute_only

  def _pre_cue(self, r: _Raw, ctx: _Context, clause_s: int) -> tuple[_Cue | None, _Cue | None]:
    """The governing cue before the mention (nearest wins; modifiers never lift a negation).

    Returns `(governing cue, modifier)`: the modifier is the modifier-like cue that a negation
    further back overrode ("enlargement" in "no enlargement of the heart"), else None.
    """
    soft = bisect.bisect_left(ctx.soft_starts, r.start) - 1
    scope_s = clause_s
    if soft >= 0 and ctx.soft_starts[soft] >= clause_s:
      scope_s = ctx.soft_starts[soft]
    # Cues never overlap, so sorted by start they are sorted by end too.
    i = bisect.bisect_right(ctx.cue_ends, r.start) - 1
    held: _Cue | None = None  # a modifier-like cue, waiting to see if a negation encloses it
    while i >= 0:
      c = ctx.cues[i]
      i -= 1
      if c.start < clause_s:
        break
      spec = c.spec
      if spec.pre is None or not self._applies(spec, r):
        continue
      gap_tokens = ctx.tokens_between(c.end, r.start)
      if spec.pre == _CLAUSE:
        if c.start < scope_s or gap_tokens > _PRE_CLAUSE_MAX_TOKENS:
          continue
      elif gap_tokens > spec.pre or "," in ctx.low[c.end : r.start]:
        continue
      if held is not None:
        # "no ... suspicious opacity", "no enlargement of the heart": the negation wins; an
        # overriding cue further back ends the search; further modifiers are skipped.
        if spec.kind == _NEG:
          return c, held
        if spec.overrides_neg:
          return held, None
        continue
      if not spec.overrides_neg:
        held = c
        continue
      return c, None
    return held, None

  def _post_cue(self, r: _Raw, ctx: _Context, clause_e: int) -> tuple[_Cue | None, bool]:
    """The first cue after the mention if it is a post-cue within reach; plus a hedge flag.

    Attribute mentions look past pre-only uncertainty words ("heart size may be enlarged"),
    remembering the hedge so that an enlargement becomes uncertain.
    """
    i = bisect.bisect_left(ctx.cue_starts, r.end)
    hedged = False
    while i < len(ctx.cues):
      c = ctx.cues[i]
      i += 1
      if c.start >= clause_e:
        break
      spec = c.spec
      if not self._applies(spec, r):
        continue
      if spec.post is None:
        if r.attribute and spec.kind == _UNC:
          hedged = True
          continue
        break
      gap = ctx.low[r.end : c.start]
      if ctx.tokens_between(r.end, c.start) > spec.post:
        break
      if _GAP_BLOCK.search(gap):
        break
      if "," in gap:
        before_comma = gap[: gap.rfind(",")]
        if _GAP_VERB.search(before_comma):
          break
      if spec.post_needs_end and not _ends_clause(ctx.low, c.end, clause_e):
        break
      return c, hedged
    return None, hedged

  # ---------------------------------------------------------------- locations
  def _locate(self, kept: list[_Raw], ctx: _Context) -> None:
    """Attach location words to each mention (see module docstring for the gap rule).

    Each mention owns a character range before it and one after it; the location terms found
    once per report (`ctx.locations`) inside those ranges and inside the mention are parsed.
    """
    by_sentence: dict[int, list[_Raw]] = {}
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
        r.locations = _parse_locations(ctx.location_kinds(*r.own))
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
        claimed = [o.own for o in group if o is not r and o.observation != _NO_FINDING]
        kinds = [
          kind
          for (ls, le, kind) in ctx.locations
          if cs <= ls and le <= ce and not any(a <= ls and le <= b for a, b in claimed)
        ]
        pairs, _ = _parse_locations(kinds)
        if pairs:
          r.locations = (pairs, r.locations[1])

  def _regions(self, r: _Raw, low: str) -> tuple[str, ...]:
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
    elif obs == _SUPPORT:
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

  # ---------------------------------------------------------------- aggregation
  @staticmethod
  def _aggregate(mentions: Sequence[Mention], labels: np.ndarray) -> np.ndarray:
    """CheXpert aggregation: positive > uncertain > negative; chf rule; No Finding rule."""
    rank = {"negative": 0, "uncertain": 1, "positive": 2}
    best: dict[str, str] = {}

    def vote(obs: str, status: str) -> None:
      if obs not in best or rank[status] > rank[best[obs]]:
        best[obs] = status

    abnormal = False
    for m in mentions:
      if m.status != "negative" and m.observation != _SUPPORT:
        abnormal = True
      if m.observation == _NO_FINDING:
        continue
      vote(m.observation, m.status)
      if (
        m.observation == "Edema"
        and m.status != "negative"
        and re.fullmatch(r"chf|heart\s+failure", m.phrase.lower())
      ):
        vote("Cardiomegaly", "uncertain")
    for obs, status in best.items():
      labels[_OBS_INDEX[obs]] = STATUS_VALUES[status]
    if not abnormal:
      labels[_OBS_INDEX[_NO_FINDING]] = POSITIVE
    return labels


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


class _Context:
  """Per-report lookup tables shared by the status and location rules."""

  def __init__(
    self, low, sentences, sent_starts, tok_starts, hard, soft_starts, cues, cue_starts, cue_ends
  ):
    self.low = low
    self.sentences = sentences
    self.sent_starts = sent_starts
    self.tok_starts = tok_starts
    self.hard = hard
    self.hard_starts = [s for s, _ in hard]
    self.hard_ends = sorted(e for _, e in hard)
    self.soft_starts = soft_starts
    self.cues = cues
    self.cue_starts = cue_starts
    self.cue_ends = cue_ends
    self.locations = [(m.start(), m.end(), m.lastgroup) for m in _LOCATION_RE.finditer(low)]
    self.loc_starts = [x[0] for x in self.locations]

  def tokens_between(self, a: int, b: int) -> int:
    """Number of word tokens starting in [a, b)."""
    if b <= a:
      return 0
    return bisect.bisect_left(self.tok_starts, b) - bisect.bisect_left(self.tok_starts, a)

  def last_tokens_start(self, a: int, b: int, n: int) -> int:
    """Start of the last `n` tokens of [a, b) (`a` when there are fewer)."""
    i = bisect.bisect_left(self.tok_starts, b) - n
    return max(a, self.tok_starts[i]) if i >= 0 else a

  def first_tokens_end(self, a: int, b: int, n: int) -> int:
    """End of the first `n` tokens of [a, b) (`b` when there are fewer)."""
    i = bisect.bisect_left(self.tok_starts, a) + n
    return min(b, self.tok_starts[i]) if i < len(self.tok_starts) else b

  def location_kinds(self, a: int, b: int) -> list[str]:
    """Names of the location terms lying wholly inside [a, b), in reading order."""
    if b <= a:
      return []
    i = bisect.bisect_left(self.loc_starts, a)
    out = []
    while i < len(self.locations) and self.locations[i][0] < b:
      if self.locations[i][1] <= b:
        out.append(self.locations[i][2])
      i += 1
    return out

  def clause(self, start: int, end: int, sent_s: int, sent_e: int) -> tuple[int, int]:
    """The clause around [start, end): between the nearest hard boundaries inside the sentence."""
    cs = sent_s
    i = bisect.bisect_right(self.hard_ends, start) - 1
    if i >= 0 and self.hard_ends[i] > cs:
      cs = self.hard_ends[i]
    ce = sent_e
    j = bisect.bisect_left(self.hard_starts, end)
    if j < len(self.hard_starts) and self.hard_starts[j] < ce:
      ce = self.hard_starts[j]
    return cs, ce


def _ends_clause(low: str, pos: int, clause_e: int) -> bool:
  """True if nothing but punctuation (or a conjunction) follows `pos` before the clause ends."""
  return _CLAUSE_END.match(low, pos, clause_e) is not None


def _parse_locations(
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
