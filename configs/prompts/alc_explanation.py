"""The prompt template with which an off-the-shelf LLM explains a location-conditioned retrieval.

  jimte.explain.build_prompt(query, cases, "configs/prompts/alc_explanation.py")

Fields are `str.format` templates filled by jimte/explain.py; every placeholder receives text (the
scores already printed with 3 decimals), so a literal brace is written `{{` / `}}`. Placeholders:
  query_format:    {regions} {mode} {mode_text} {box} {text} {image}
  cases_header:    {num_shown} {num_cases}
  case_format:     {rank} {case_id} {score} {findings} {region_blocks}
  region_format:   {region} {region_score} {sentences}
  omitted_format:  {num_left_out} {num_shown} {num_cases} {max_cases}
  instructions:    {regions} {num_shown} {max_sentences_per_region}
  preamble:        none
`max_cases` bounds the cases shown (best ranks first), `max_sentences_per_region` the report
sentences shown per case and queried region; what either leaves out is said in the prompt.
"""

from __future__ import annotations

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.preamble = (
    "You are assisting a radiologist who searched a database of chest X-ray reports for cases "
    "like a query, conditioned on anatomical regions: a case was retrieved for what its report "
    "says about those regions. Explain, region by region, why each retrieved case does or does "
    "not match the query.\n"
    "Your answer is preliminary and is not a diagnosis: a qualified clinician must check it "
    "against the images. Say so at the start of your answer, and state your uncertainty for every "
    "statement (likely, possible, or cannot tell from the text). The similarities below are model "
    "scores, not probabilities of disease."
  )
  c.query_format = (
    "QUERY\n"
    "Regions: {regions}\n"
    "Matching rule ({mode}): {mode_text}\n"
    "Box (y0, x0, y1, x1, as fractions of the image height and width): {box}\n"
    "Query text: {text}\n"
    "Query image: {image}"
  )
  c.cases_header = "RETRIEVED CASES (the best {num_shown} of {num_cases}, best first)"
  c.case_format = (
    "Case {rank}: {case_id} (similarity {score})\n"
    "Findings of this case's report: {findings}\n"
    "{region_blocks}"
  )
  c.region_format = "  {region} (region similarity {region_score}):\n{sentences}"
  c.omitted_format = (
    "{num_left_out} further retrieved case(s) are left out of this prompt, which shows at most "
    "{max_cases} of the {num_cases}."
  )
  c.instructions = (
    "INSTRUCTIONS\n"
    "1. Begin with: 'Preliminary, not a diagnosis.'\n"
    "2. For each of the {num_shown} cases, in rank order, and for each queried region ({regions}): "
    "say in one or two sentences whether the report sentences above describe the query's finding "
    "in that region, quoting them, and how certain you are.\n"
    "3. Use only the sentences and findings given above (at most {max_sentences_per_region} "
    "sentences per region are shown). Do not invent findings. Where a report says nothing of a "
    "region, say the match there cannot be judged from the text.\n"
    "4. End with one paragraph on how well the cases support the query as a whole, with your "
    "uncertainty, and what a clinician should check on the images."
  )
  c.max_cases = 5
  c.max_sentences_per_region = 3
  return c
