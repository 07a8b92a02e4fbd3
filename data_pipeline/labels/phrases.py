"""The CheXpert phrase lists: where they are, how they are read, and how a phrase becomes a regex.

The lists are data read at run time from a directory laid out like `labelers/chexpert/phrases`
(`mention/<observation>.txt`, optional `unmention/<observation>.txt`); `$JIMTE_CHEXPERT_PHRASES`
names it, else `<repo>/../shared/data/labelers/chexpert/phrases`. The matching convention is in
docs/labeler.md ("Mentions").
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from data_pipeline.names import CHEXPERT_OBSERVATIONS

# Environment variable naming the phrase-list directory (`.../labelers/chexpert/phrases`).
PHRASES_ENV_VAR = "JIMTE_CHEXPERT_PHRASES"

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


def _file_stem(observation: str) -> str:
  """Phrase-file stem of an observation ("Pleural Effusion" -> "pleural_effusion")."""
  return observation.lower().replace(" ", "_")


def default_phrases_dir() -> Path:
  """The phrase-list directory: `$JIMTE_CHEXPERT_PHRASES`, else `<repo>/../shared/data/...`."""
  env = os.environ.get(PHRASES_ENV_VAR)
  if env:
    return Path(env)
  return (
    Path(__file__).resolve().parents[3] / "shared" / "data" / "labelers" / "chexpert" / "phrases"
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


def alternation(phrases: Iterable[str]) -> re.Pattern[str] | None:
  """One compiled alternation of phrases, longest first so the longest match at a position wins."""
  pats = sorted({_phrase_pattern(p) for p in phrases if p.strip("_ ")}, key=len, reverse=True)
  if not pats:
    return None
  return re.compile("|".join(f"(?:{p})" for p in pats))


def unmention_alternation(phrases: Iterable[str]) -> re.Pattern[str] | None:
  """Like `alternation` but anchored at a word start: "calcified nodul" must not fire inside
  "uncalcified nodule"."""
  rx = alternation(phrases)
  return None if rx is None else re.compile(r"(?<![a-z0-9])(?:" + rx.pattern + ")")
