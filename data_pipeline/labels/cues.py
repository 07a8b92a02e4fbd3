"""The negation / uncertainty cue table: cue phrases with a kind, a direction and a scope.

How the cues combine (nearest pre-cue wins, modifiers never lift a negation, uncertainty beats
negation, ...) is specified in docs/labeler.md ("Negation and uncertainty"); `ReportLabeler` applies
the rules. The post-cue reach tests (`GAP_BLOCK`, `GAP_VERB`, `ends_clause`) live here too.
"""

from __future__ import annotations

import dataclasses
import re

NEG, UNC, PSEUDO, ASSERT, MASK = "neg", "unc", "pseudo", "assert", "mask"
CLAUSE = -1  # pre-scope: to the end of the clause (or the next soft boundary)
PRE_CLAUSE_MAX_TOKENS = 25
_POST_MAX_TOKENS = 12


@dataclasses.dataclass(frozen=True)
class CueSpec:
  """A family of cue phrases: its kind, how far it reaches before/after a mention, how it
  combines."""

  pattern: str
  kind: str  # NEG, UNC, PSEUDO, ASSERT, or MASK (hides its words from the other cues)
  pre: int | None = None  # None: not a pre-cue; CLAUSE; or the maximum token gap
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

CUE_SPECS: tuple[CueSpec, ...] = (
  # --- negation -------------------------------------------------------------------------------
  CueSpec(r"\bno\b", NEG, pre=CLAUSE, needles=("no",)),
  CueSpec(r"\bnot\b", NEG, pre=CLAUSE, needles=("not",)),
  CueSpec(r"\bwithout\b", NEG, pre=CLAUSE, needles=("without",)),
  CueSpec(r"\bnegative\s+(?:for|of)\b", NEG, pre=CLAUSE, needles=("negative",)),
  CueSpec(r"\b(?:free|clear)\s+of\b", NEG, pre=CLAUSE, needles=("free", "clear")),
  CueSpec(r"\babsence\s+of\b", NEG, pre=CLAUSE, needles=("absence",)),
  CueSpec(
    r"\b(?:interval\s+)?(?:resolution|removal|clearing|disappearance)\s+of\b",
    NEG,
    pre=CLAUSE,
    needles=("resolution", "removal", "clearing", "disappearance"),
  ),
  CueSpec(r"\bresolved\b", NEG, pre=CLAUSE, post=_POST_MAX_TOKENS, needles=("resolved",)),
  CueSpec(r"\b(?:neither|nor|never)\b", NEG, pre=CLAUSE, needles=("neither", "nor", "never")),
  CueSpec(r"\brather\s+than\b", NEG, pre=CLAUSE, needles=("rather",)),
  CueSpec(
    r"\b(?:not|no\s+longer|never)[\s-]+"
    + _NOT_VERB_FILL
    + r"(?:seen|identified|present|visuali[sz]ed|demonstrated|appreciated|evident|noted|detected"
    r"|visible|apparent|shown|observed|found|suggested|confirmed|identifiable|discernible)\b",
    NEG,
    post=_POST_MAX_TOKENS,
    needles=("no", "never"),
  ),
  CueSpec(
    r"\b(?:cleared|disappeared|removed|absent|gone|excluded|ruled\s+out|negative)\b",
    NEG,
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
  CueSpec(
    r"\bno\s+(?:"
    + _MODS
    + r"\s+){0,3}(?:change|changes|increase|progression|worsening|difference)\b",
    PSEUDO,
    pre=CLAUSE,
    needles=("chang", "increase", "progression", "worsening", "difference"),
  ),
  CueSpec(
    r"\b(?:without|not)\s+(?:"
    + _MODS
    + r"\s+){0,3}(?:change|changed|progression|progressed|worsening"
    r"|worsened)\b",
    PSEUDO,
    pre=CLAUSE,
    needles=("chang", "progress", "worsen"),
  ),
  CueSpec(
    r"\b(?:partial(?:ly)?|incomplete(?:ly)?|near(?:ly)?|almost|mostly|largely|not\s+(?:completely|fully"
    r"|entirely))\s+(?:resolved|resolution|cleared|resolving)\b",
    PSEUDO,
    pre=CLAUSE,
    priority=1,
    needles=("resol", "cleared"),
  ),
  CueSpec(r"\bnot\s+only\b", PSEUDO, pre=CLAUSE, needles=("only",)),
  # --- uncertainty -----------------------------------------------------------------------------
  CueSpec(
    r"\b(?:cannot|can\s*not|can't|could\s+not|couldn't|may\s+not|not)\s+(?:be\s+)?"
    r"(?:entirely\s+|completely\s+|totally\s+|definitely\s+|fully\s+|reliably\s+|excluded\s+or\s+)?"
    r"(?:exclude[ds]?|ruled?\s+out)\b",
    UNC,
    pre=CLAUSE,
    post=_POST_MAX_TOKENS,
    priority=2,
    needles=("exclude", "rule"),
  ),
  CueSpec(
    r"\b(?:difficult|hard|unable)\s+to\s+(?:\w+ly\s+)?(?:exclude|rule\s+out)\b",
    UNC,
    pre=CLAUSE,
    post=_POST_MAX_TOKENS,
    needles=("difficult", "hard", "unable"),
  ),
  CueSpec(
    r"\b(?:rule\s+out|r/o|to\s+exclude)\b", UNC, pre=CLAUSE, needles=("rule", "r/o", "exclude")
  ),
  # requests and hedges about the examination itself
  CueSpec(
    r"\bfor\s+(?:further\s+)?evaluation\s+of\b|\b(?:evaluat\w*|eval|assess\w*)\s+for\b",
    UNC,
    pre=CLAUSE,
    needles=("eval", "assess"),
  ),
  CueSpec(
    r"\bcorrelat\w*(?:\s+clinically)?\s+(?:for|with)\b", UNC, pre=CLAUSE, needles=("correlat",)
  ),
  CueSpec(
    r"\bin\s+the\s+(?:appropriate|correct|right|proper)\s+clinical\s+(?:setting|context|scenario)\b",
    UNC,
    pre=CLAUSE,
    post=_POST_MAX_TOKENS,
    needles=("clinical",),
  ),
  CueSpec(
    r"\b(?:may|might|could)\s+not\s+be\s+(?:\w+ly\s+)?(?:seen|demonstrated|visible|detected|identified"
    r"|evident|apparent|visualized|appreciated)\b",
    UNC,
    post=_POST_MAX_TOKENS,
    priority=1,
    needles=("may", "might", "could"),
  ),
  CueSpec(
    r"\b(?:may|might|could)\s+(?:also\s+|still\s+)?be\s+(?:present|seen|noted|visible|identified|developing"
    r"|superimposed|obscured|masked|contributing|there|hidden)\b",
    UNC,
    pre=CLAUSE,
    post=_POST_MAX_TOKENS,
    priority=1,
    needles=("may", "might", "could"),
  ),
  CueSpec(
    r"\b(?:may|might|could|maybe|perhaps)\b",
    UNC,
    pre=CLAUSE,
    needles=("may", "might", "could", "perhaps"),
  ),
  CueSpec(
    r"\b(?:possible|possibly|probable|probably|likely|unlikely|presumed|presumably|presumptive|questionable"
    r"|questionably|equivocal|indeterminate|uncertain)\b",
    UNC,
    pre=CLAUSE,
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
  CueSpec(
    r"\bquestion(?:ed)?(?:\s+of)?\b",
    UNC,
    pre=CLAUSE,
    post=_POST_MAX_TOKENS,
    post_needs_end=True,
    needles=("question",),
  ),
  CueSpec(
    r"\b(?:differential(?:\s+diagnosis)?(?:\s+(?:includes?|of))?|ddx|consider(?:ed|ation)?"
    r"|(?:raises?\s+the\s+)?possibility(?:\s+of)?)\b",
    UNC,
    pre=CLAUSE,
    post=_POST_MAX_TOKENS,
    post_needs_end=True,
    needles=("differential", "ddx", "consider", "possibility"),
  ),
  CueSpec(r"\b(?:versus|vs)\b\.?", UNC, pre=CLAUSE, post=3, needles=("vs", "versus")),
  CueSpec(
    r"\b(?:suspicious|suspicion|suspect(?:ed|s)?|suggest(?:s|ed|ive|ing|ion)?|concern(?:ing|s)?|worrisome"
    r"|favou?r(?:ed|s|ing)?)\b(?:\s+(?:for|of))?",
    UNC,
    pre=CLAUSE,
    post=_POST_MAX_TOKENS,
    post_needs_end=True,
    overrides_neg=False,
    needles=("suspic", "suspect", "suggest", "concern", "worrisome", "favo"),
  ),
  CueSpec(
    r"\bborderline\b|\b(?:top|upper|high)(?:\s*-\s*|\s+)normal\b"
    r"|\b(?:at\s+)?(?:the\s+)?upper\s+(?:limits?|range|end)\s+(?:of\s+)?(?:the\s+)?normal\b"
    r"|\bupper\s+normal\s+limits?\b",
    UNC,
    pre=4,
    post=_POST_MAX_TOKENS,
    priority=1,
    qualifier=True,
    needles=("borderline", "normal"),
  ),
  CueSpec(r"\?", UNC, pre=2, post=2, needles=("?",)),
  # --- masks: phrases holding a cue word that say nothing about presence ------------------------
  CueSpec(
    r"\bage[\s-]+(?:indeterminate|uncertain|unknown)\b"
    r"|\b(?:indeterminate|uncertain|unknown)\s+(?:age|chronicity)\b",
    MASK,
    priority=3,
    needles=("indeterminate", "uncertain", "unknown"),
  ),
  # --- attribute qualifiers ("heart size", "mediastinal silhouette") ----------------------------
  CueSpec(
    r"\bnormal(?:ly)?(?:\s+in\s+(?:size|caliber|contour|configuration|appearance))?\b|\bunremarkable\b"
    r"|\bwithin\s+(?:the\s+)?normal\s+limits\b|\bwnl\b|\bnon-?enlarged\b|\b(?:small|normal)(?:-|\s+)sized?\b"
    r"|\bnot\s+(?:(?:significantly|markedly|substantially|appreciably|particularly|definitely|grossly|clearly"
    r"|really|abnormally)\s+)?(?:enlarged|large|widened|wide|prominent|increased|abnormal)\b",
    NEG,
    pre=5,
    post=_POST_MAX_TOKENS,
    attribute_only=True,
    qualifier=True,
    needles=("normal", "unremarkable", "wnl", "enlarged", "small", "not"),
  ),
  CueSpec(
    r"\b(?:enlarg\w*|large|larger|increased|increasing|prominent|prominence|widen\w*|wide|bulg\w*|abnormal"
    r"|accentuated|dilat\w*|big|globular)\b",
    ASSERT,
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
class Cue:
  """One cue occurrence in a report."""

  start: int
  end: int
  spec: CueSpec


# Verbs: a gap that has one before a comma is a new clause, not a list of subjects.
GAP_VERB = re.compile(
  r"\b(?:is|are|was|were|appears?|remains?|seems?|has|have|shows?|demonstrates?)\b"
)
# What may follow a post-cue that must end its clause ("atelectasis is likely." / "..., likely
# and").
_CLAUSE_END = re.compile(
  r"\s*(?:$|[.,;:?!)\]]|and\b|or\b|but\b|given\b|in\s+the\s+(?:appropriate|correct|right)\b)"
)
# Words that stop a post-cue from reaching back to the mention.
GAP_BLOCK = re.compile(r"\b(?:with|without|by|for|no|not)\b")


def ends_clause(low: str, pos: int, clause_e: int) -> bool:
  """True if nothing but punctuation (or a conjunction) follows `pos` before the clause ends."""
  return _CLAUSE_END.match(low, pos, clause_e) is not None
