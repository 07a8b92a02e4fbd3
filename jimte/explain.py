"""A prompt with which an off-the-shelf LLM can explain a location-conditioned retrieval (ALC-ITR):
the query's regions, then each retrieved case's report sentences for those regions, in rank order.

No LLM is called: `build_prompt` fills a template config (configs/prompts/alc_explanation.py, or
any file of the same fields given by path) and `write_prompt` saves the text. Nothing is dropped
silently: a queried region a case's report says nothing of reads `NO_SENTENCE`, and the cases and
sentences cut by `max_cases` / `max_sentences_per_region` are counted in the prompt.
"""

from __future__ import annotations

import dataclasses
import math
import os
import string
from collections.abc import Mapping, Sequence

import ml_collections

from data_pipeline.names import CHEST_IMAGENOME_REGIONS
from jimte import config_files
from jimte.anatomy.regions import region_indices
from jimte.evaluate.conditioned_retrieval import MODES

DEFAULT_TEMPLATE = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  "configs",
  "prompts",
  "alc_explanation.py",
)
NO_SENTENCE = "(the report says nothing of this region)"
NO_FINDINGS = "(none recorded)"
NOT_GIVEN = "(none given)"
NOT_SCORED = "(not scored)"
MODE_TEXTS = {
  "and": "a retrieved case should match the query in every one of these regions at once",
  "or": "a retrieved case should match the query in at least one of these regions",
}

# Template field -> the placeholders it may use (each receives text).
TEMPLATE_PLACEHOLDERS: dict[str, frozenset[str]] = {
  "preamble": frozenset(),
  "query_format": frozenset({"regions", "mode", "mode_text", "box", "text", "image"}),
  "cases_header": frozenset({"num_shown", "num_cases"}),
  "case_format": frozenset({"rank", "case_id", "score", "findings", "region_blocks"}),
  "region_format": frozenset({"region", "region_score", "sentences"}),
  "omitted_format": frozenset({"num_left_out", "num_shown", "num_cases", "max_cases"}),
  "instructions": frozenset({"regions", "num_shown", "max_sentences_per_region"}),
}
TEMPLATE_LIMITS = ("max_cases", "max_sentences_per_region")  # positive integers
TEMPLATE_SOURCE = "source"  # optional: the file a template was loaded from, for error messages


def canonical_region(name: str) -> str:
  """The standard spelling of a Chest ImaGenome region name; an unknown name is a ValueError
  naming it and listing the 29 valid ones."""
  return CHEST_IMAGENOME_REGIONS[region_indices([name])[0]]


@dataclasses.dataclass(frozen=True)
class Query:
  """What was searched for: the regions it is conditioned on, how they combine ("and" / "or"),
  and whatever of a box (y0, x0, y1, x1, image fractions), a text and an image came with it."""

  regions: tuple[str, ...]
  mode: str = "or"
  box: tuple[float, float, float, float] | None = None
  text: str | None = None
  image: str | None = None

  def __post_init__(self):
    if isinstance(self.regions, str) or not self.regions:
      raise ValueError(f"a query needs a non-empty sequence of regions, got {self.regions!r}")
    regions = tuple(canonical_region(r) for r in self.regions)
    if len(set(regions)) != len(regions):
      raise ValueError(f"query regions repeat a region: {regions}")
    object.__setattr__(self, "regions", regions)
    if self.mode not in MODES:
      raise ValueError(f"query mode {self.mode!r} is not one of {MODES}")
    if self.box is not None:
      if len(self.box) != 4:
        raise ValueError(f"a query box is (y0, x0, y1, x1), got {self.box!r}")
      object.__setattr__(self, "box", tuple(float(v) for v in self.box))


@dataclasses.dataclass(frozen=True)
class RetrievedCase:
  """One retrieved case: its id, 1-based rank and score, and per region (names as in
  CHEST_IMAGENOME_REGIONS) its similarity and its report's sentences; `findings` of its report."""

  case_id: str
  rank: int
  score: float
  region_scores: Mapping[str, float] = dataclasses.field(default_factory=dict)
  region_sentences: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
  findings: Sequence[str] = ()

  def __post_init__(self):
    if int(self.rank) != self.rank or self.rank < 1:
      raise ValueError(f"case {self.case_id!r}: rank must be a positive integer, got {self.rank!r}")
    object.__setattr__(self, "rank", int(self.rank))
    object.__setattr__(self, "score", float(self.score))
    scores = _by_canonical_region(self.region_scores, f"case {self.case_id!r} region_scores")
    object.__setattr__(self, "region_scores", {r: float(s) for r, s in scores.items()})
    sentences = _by_canonical_region(self.region_sentences, f"case {self.case_id!r} sentences")
    for region, texts in sentences.items():
      if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"case {self.case_id!r}: sentences of {region!r} must be a list of str")
    object.__setattr__(self, "region_sentences", {r: list(t) for r, t in sentences.items()})
    if isinstance(self.findings, str) or not all(isinstance(f, str) for f in self.findings):
      raise ValueError(f"case {self.case_id!r}: findings must be a list of str")
    object.__setattr__(self, "findings", list(self.findings))


def _by_canonical_region(values: Mapping, what: str) -> dict:
  """`values` keyed by canonical region names; two keys naming one region are an error."""
  out = {}
  for name, value in values.items():
    region = canonical_region(name)
    if region in out:
      raise ValueError(f"{what}: region {region!r} is given twice")
    out[region] = value
  return out


def _load_config_file(path: str) -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config file `NAME.py[:arg]` (the path convention of
  jimte/evaluate/zero_shot.py's prompt files)."""
  file, arg = config_files.split_path(path)
  config_files.exists_or_raise(file, "template")
  if not file.endswith(".py"):
    raise ValueError(f"{file}: a template file is a .py config with get_config(arg)")
  config = config_files.call_get_config(file, arg, "jimte_explanation_template")
  if not isinstance(config, Mapping | ml_collections.ConfigDict):
    raise ValueError(f"{file}: get_config() returned {type(config).__name__}, not a ConfigDict")
  config = ml_collections.ConfigDict(config)
  config[TEMPLATE_SOURCE] = file
  return config


def load_template(path: str | os.PathLike = DEFAULT_TEMPLATE) -> ml_collections.ConfigDict:
  """The validated template of a config file (`validate_template`), its path in `source`."""
  template = _load_config_file(os.fspath(path))
  validate_template(template)
  return template


def validate_template(template) -> dict:
  """The template's fields as a dict, or an error naming the template file and the field: a field
  missing or unknown, a limit not a positive integer, a placeholder the field does not take."""
  fields = template.to_dict() if hasattr(template, "to_dict") else dict(template)
  source = fields.pop(TEMPLATE_SOURCE, "<template ConfigDict>")
  expected = set(TEMPLATE_PLACEHOLDERS) | set(TEMPLATE_LIMITS)
  missing, unknown = sorted(expected - set(fields)), sorted(set(fields) - expected)
  if missing:
    raise ValueError(f"template {source}: field {missing[0]!r} is missing")
  if unknown:
    raise ValueError(
      f"template {source}: unknown field {unknown[0]!r}; "
      f"the fields are {', '.join(sorted(expected))}"
    )
  for name in TEMPLATE_LIMITS:
    value = fields[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(
        f"template {source}: field {name!r} must be a positive integer, got {value!r}"
      )
  for name, allowed in TEMPLATE_PLACEHOLDERS.items():
    text = fields[name]
    if not isinstance(text, str):
      raise ValueError(f"template {source}: field {name!r} must be a string, got {text!r}")
    try:
      used = {parsed[1] for parsed in string.Formatter().parse(text) if parsed[1] is not None}
    except ValueError as e:
      raise ValueError(f"template {source}: field {name!r} is not a format string ({e})") from None
    unknown = sorted(used - allowed)
    if unknown:
      raise ValueError(
        f"template {source}: field {name!r} uses unknown placeholder {{{unknown[0]}}}; "
        f"it takes {', '.join('{' + p + '}' for p in sorted(allowed)) or 'none'}"
      )
    try:
      text.format(**dict.fromkeys(allowed, "x"))
    except (ValueError, KeyError, IndexError) as e:
      raise ValueError(
        f"template {source}: field {name!r} cannot be filled with text ({e})"
      ) from None
  return fields


def _number(value: float | None) -> str:
  """A score as the prompt prints it: 3 decimals, or `NOT_SCORED`."""
  return NOT_SCORED if value is None or math.isnan(value) else f"{value:.3f}"


def _sentence_lines(sentences: Sequence[str], limit: int) -> str:
  """The indented report sentences of one region, the first `limit`, then how many were cut."""
  if not sentences:
    return f"    {NO_SENTENCE}"
  lines = [f"    - {s}" for s in sentences[:limit]]
  if len(sentences) > limit:
    lines.append(f"    ({len(sentences) - limit} more sentence(s) of this region left out)")
  return "\n".join(lines)


def build_prompt(
  query: Query,
  cases: Sequence[RetrievedCase],
  template: ml_collections.ConfigDict | str | os.PathLike = DEFAULT_TEMPLATE,
) -> str:
  """The prompt text: preamble, query, the best `max_cases` cases by rank with their sentences for
  each queried region, a count of the cases left out, then the instructions. `template` is a
  ConfigDict or the path of a template file."""
  if isinstance(template, str | os.PathLike):
    template = _load_config_file(os.fspath(template))
  fields = validate_template(template)
  if not cases:
    raise ValueError("no retrieved cases to explain")
  ordered = sorted(cases, key=lambda case: case.rank)
  ranks = [case.rank for case in ordered]
  if len(set(ranks)) != len(ranks):
    raise ValueError(f"two retrieved cases share a rank: ranks {ranks}")
  shown = ordered[: fields["max_cases"]]
  counts = dict(num_shown=str(len(shown)), num_cases=str(len(ordered)))
  regions = ", ".join(query.regions)
  sections = [
    fields["preamble"],
    fields["query_format"].format(
      regions=regions,
      mode=query.mode,
      mode_text=MODE_TEXTS[query.mode],
      box=NOT_GIVEN if query.box is None else "(" + ", ".join(f"{v:.2f}" for v in query.box) + ")",
      text=NOT_GIVEN if query.text is None else query.text,
      image=NOT_GIVEN if query.image is None else query.image,
    ),
    fields["cases_header"].format(**counts),
  ]
  for case in shown:
    region_blocks = "\n".join(
      fields["region_format"].format(
        region=region,
        region_score=_number(case.region_scores.get(region)),
        sentences=_sentence_lines(
          case.region_sentences.get(region, []), fields["max_sentences_per_region"]
        ),
      )
      for region in query.regions
    )
    sections.append(
      fields["case_format"].format(
        rank=str(case.rank),
        case_id=case.case_id,
        score=_number(case.score),
        findings=", ".join(case.findings) if case.findings else NO_FINDINGS,
        region_blocks=region_blocks,
      )
    )
  if len(ordered) > len(shown):
    sections.append(
      fields["omitted_format"].format(
        num_left_out=str(len(ordered) - len(shown)), max_cases=str(fields["max_cases"]), **counts
      )
    )
  sections.append(
    fields["instructions"].format(
      regions=regions,
      num_shown=counts["num_shown"],
      max_sentences_per_region=str(fields["max_sentences_per_region"]),
    )
  )
  return "\n\n".join(sections) + "\n"


def write_prompt(
  path: str,
  query: Query,
  cases: Sequence[RetrievedCase],
  template: ml_collections.ConfigDict | str | os.PathLike = DEFAULT_TEMPLATE,
) -> str:
  """Writes `build_prompt(query, cases, template)` to `path` (UTF-8, parent folders created) and
  returns the text."""
  prompt = build_prompt(query, cases, template)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(prompt)
  return prompt
