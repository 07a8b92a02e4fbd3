"""The explanation prompt of a conditioned retrieval: what the default template puts in it and in
which order, the limits and what they leave out, a custom template file, and the errors."""

import re
import textwrap

import pytest

from jimte import explain
from jimte.explain import Query, RetrievedCase

QUERY = Query(
  regions=("left lower lung zone", "right costophrenic angle"),
  mode="or",
  box=(0.55, 0.5, 0.85, 0.9),
  text="left basal opacity",
)


def make_cases():
  """Three cases given out of rank order; case B says nothing of the right costophrenic angle."""
  return [
    RetrievedCase(
      case_id="study-C",
      rank=3,
      score=0.41,
      region_scores={"left lower lung zone": 0.4},
      region_sentences={
        "left lower lung zone": ["C: Minimal left basal atelectasis."],
        "right costophrenic angle": ["C: Blunting of the right costophrenic angle."],
      },
      findings=["Atelectasis", "Pleural Other"],
    ),
    RetrievedCase(
      case_id="study-A",
      rank=1,
      score=0.8766,  # printed with 3 decimals: 0.877
      region_scores={"left lower lung zone": 0.9, "right costophrenic angle": 0.25},
      region_sentences={
        "left lower lung zone": ["A: Left lower lobe consolidation.", "A: Air bronchograms."],
        "right costophrenic angle": ["A: Small right pleural effusion."],
      },
      findings=["Consolidation", "Pleural Effusion"],
    ),
    RetrievedCase(
      case_id="study-B",
      rank=2,
      score=0.5,
      region_scores={"left lower lung zone": 0.6},
      region_sentences={"Left Lower Lung Zone": ["B: Patchy left basilar opacity."]},
      findings=["Lung Opacity"],
    ),
  ]


def in_order(text, parts):
  """Whether every part occurs in `text`, each after the one before."""
  positions = [text.find(part) for part in parts]
  return -1 not in positions and positions == sorted(positions)


def test_default_prompt_holds_query_cases_in_rank_order_and_the_uncertainty_rule():
  prompt = explain.build_prompt(QUERY, make_cases())
  assert "Regions: left lower lung zone, right costophrenic angle" in prompt
  assert "at least one of these regions" in prompt  # the "or" rule, spelled out
  assert "(0.55, 0.50, 0.85, 0.90)" in prompt and "Query text: left basal opacity" in prompt
  assert "Query image: (none given)" in prompt
  assert "not a diagnosis" in prompt and "state your uncertainty" in prompt
  assert "(the best 3 of 3, best first)" in prompt
  assert "left out" not in prompt  # everything fits the default limits
  assert in_order(
    prompt,
    [
      "Case 1: study-A (similarity 0.877)",
      "Consolidation, Pleural Effusion",
      "A: Left lower lobe consolidation.",
      "A: Air bronchograms.",
      "A: Small right pleural effusion.",
      "Case 2: study-B (similarity 0.500)",
      "Lung Opacity",
      "B: Patchy left basilar opacity.",  # found under its differently spelled region name
      "Case 3: study-C (similarity 0.410)",
      "Atelectasis, Pleural Other",
      "C: Minimal left basal atelectasis.",
      "C: Blunting of the right costophrenic angle.",
      "INSTRUCTIONS",
    ],
  )


def test_a_queried_region_without_sentence_or_score_is_said_so():
  prompt = explain.build_prompt(QUERY, make_cases())
  case_b = prompt[prompt.index("Case 2:") : prompt.index("Case 3:")]
  assert case_b.endswith(
    f"  right costophrenic angle (region similarity (not scored)):\n    {explain.NO_SENTENCE}\n\n"
  )
  assert prompt.count(explain.NO_SENTENCE) == 1


def limited_template(**overrides):
  """The default template with some fields replaced."""
  template = explain.load_template()
  for name, value in overrides.items():
    template[name] = value
  return template


def test_max_cases_keeps_the_best_ranks_and_counts_the_rest():
  prompt = explain.build_prompt(QUERY, make_cases(), limited_template(max_cases=1))
  assert "study-A" in prompt and "study-B" not in prompt and "study-C" not in prompt
  assert "B: Patchy" not in prompt and "Lung Opacity" not in prompt
  assert "(the best 1 of 3, best first)" in prompt
  assert (
    "2 further retrieved case(s) are left out of this prompt, which shows at most 1 of the 3."
    in prompt
  )
  assert "For each of the 1 cases" in prompt


def test_max_sentences_per_region_cuts_and_counts_the_sentences():
  prompt = explain.build_prompt(QUERY, make_cases(), limited_template(max_sentences_per_region=1))
  assert "A: Left lower lobe consolidation." in prompt and "A: Air bronchograms." not in prompt
  assert prompt.count("(1 more sentence(s) of this region left out)") == 1
  assert "(at most 1 sentences per region are shown)" in prompt


CUSTOM_TEMPLATE = """
import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.preamble = "CUSTOM: preliminary, not a diagnosis; say how sure you are."
  c.query_format = "Q[{mode}] {regions} | {text} | {image} | {box}"
  c.cases_header = "{num_shown}/{num_cases}"
  c.case_format = "#{rank} {case_id} {score} [{findings}]\\n{region_blocks}"
  c.region_format = "{region}={region_score}\\n{sentences}"
  c.omitted_format = "-{num_left_out}"
  c.instructions = "Explain {regions}; {{braces}} are literal."
  c.max_cases = int(arg) if arg else 5
  c.max_sentences_per_region = 2
  return c
"""


def test_a_custom_template_file_is_used_verbatim(tmp_path):
  path = tmp_path / "my_template.py"
  path.write_text(CUSTOM_TEMPLATE)
  query = Query(regions=("cardiac silhouette",), mode="and", image="img/7.png")
  case = RetrievedCase(
    case_id="s1",
    rank=1,
    score=0.5,
    region_scores={"cardiac silhouette": 0.25},
    region_sentences={"cardiac silhouette": ["The heart is enlarged."]},
    findings=[],
  )
  second = RetrievedCase(case_id="s2", rank=2, score=0.125)
  expected = textwrap.dedent(
    """\
    CUSTOM: preliminary, not a diagnosis; say how sure you are.

    Q[and] cardiac silhouette | (none given) | img/7.png | (none given)

    1/2

    #1 s1 0.500 [(none recorded)]
    cardiac silhouette=0.250
        - The heart is enlarged.

    -1

    Explain cardiac silhouette; {braces} are literal.
    """
  )
  # "path.py:arg" passes the text after the colon to get_config: here max_cases = 1.
  assert explain.build_prompt(query, [case, second], f"{path}:1") == expected
  assert "#2 s2 0.125 [(none recorded)]" in explain.build_prompt(query, [case, second], path)


def test_write_prompt_writes_the_built_text(tmp_path):
  target = tmp_path / "out" / "prompt.txt"
  text = explain.write_prompt(str(target), QUERY, make_cases())
  assert target.read_text(encoding="utf-8") == text == explain.build_prompt(QUERY, make_cases())


def test_a_bad_region_name_is_an_error_listing_the_valid_ones():
  with pytest.raises(
    ValueError, match="'left lower lobe'.*right lung, right upper lung zone.*abdomen"
  ):
    Query(regions=("left lower lobe",))
  with pytest.raises(ValueError, match="'heart'.*cardiac silhouette"):
    RetrievedCase(case_id="x", rank=1, score=0.0, region_sentences={"heart": ["Big."]})
  with pytest.raises(ValueError, match="'lingula'"):
    RetrievedCase(case_id="x", rank=1, score=0.0, region_scores={"lingula": 0.1})


def test_bad_queries_and_cases_are_errors():
  with pytest.raises(ValueError, match="'xor'"):
    Query(regions=("left lung",), mode="xor")
  with pytest.raises(ValueError, match="non-empty"):
    Query(regions=())
  with pytest.raises(ValueError, match="repeat"):
    Query(regions=("left lung", "Left Lung"))
  with pytest.raises(ValueError, match=r"\(y0, x0, y1, x1\)"):
    Query(regions=("left lung",), box=(0.1, 0.2))
  with pytest.raises(ValueError, match="rank must be a positive integer"):
    RetrievedCase(case_id="x", rank=0, score=0.0)
  with pytest.raises(ValueError, match="list of str"):
    RetrievedCase(case_id="x", rank=1, score=0.0, region_sentences={"left lung": "One."})
  twins = [RetrievedCase(case_id="a", rank=1, score=0.0), RetrievedCase("b", 1, 0.0)]
  with pytest.raises(ValueError, match="share a rank"):
    explain.build_prompt(QUERY, twins)
  with pytest.raises(ValueError, match="no retrieved cases"):
    explain.build_prompt(QUERY, [])


def write_broken_template(tmp_path, old, new):
  """The custom template with one line replaced, written to a file; returns its path."""
  assert old in CUSTOM_TEMPLATE
  path = tmp_path / "broken.py"
  path.write_text(CUSTOM_TEMPLATE.replace(old, new))
  return str(path)


@pytest.mark.parametrize(
  ("old", "new", "message"),
  [
    ('  c.case_format = "#', '  c.other = "#', "field 'case_format' is missing"),
    (
      "{case_id} {score}",
      "{case_id} {diagnosis}",
      r"'case_format' uses unknown placeholder \{diagnosis\}",
    ),
    ("{num_left_out}", "{}", r"'omitted_format' uses unknown placeholder \{\}"),
    ('c.preamble = "CUSTOM', 'c.preamble = "{regions} CUSTOM', r"'preamble'.*takes none"),
    ("{region_score}", "{region_score:.3f}", "'region_format' cannot be filled with text"),
    ("{mode}", "{mode", "'query_format' is not a format string"),
    ("c.max_sentences_per_region = 2", "c.max_sentences_per_region = 0", "positive integer"),
    ("c.max_cases = int(arg) if arg else 5", "c.max_cases = 5\n  c.max_cased = 1", "'max_cased'"),
  ],
)
def test_a_bad_template_names_its_file_and_field(tmp_path, old, new, message):
  path = write_broken_template(tmp_path, old, new)
  with pytest.raises(ValueError, match=f"template {re.escape(path)}: .*{message}"):
    explain.build_prompt(QUERY, make_cases(), path)
  with pytest.raises(ValueError, match=message):
    explain.load_template(path)


def test_a_missing_template_file_is_an_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere.py"):
    explain.load_template(str(tmp_path / "nowhere.py"))
  no_config = tmp_path / "empty.py"
  no_config.write_text("X = 1\n")
  with pytest.raises(ValueError, match="defines no get_config"):
    explain.load_template(str(no_config))
