"""The built-in synthetic chest X-ray set: procedural frontal chest phantoms with reports and ground
truth.

Each example is a grayscale frontal chest radiograph drawn from a parametric anatomy (`geometry`:
body outline, lungs, heart, diaphragm domes, ribs, clavicles, spine, trachea, hila), posed,
contrasted and noised at random, with 0..3 findings drawn at named Chest ImaGenome regions, and a
radiology-style report (findings, then impression) that describes them, negates some absent ones
and otherwise reads like the Indiana University reports.

Ground truth travels with every example: each finding's name, region, image box, severity and the
exact words of the report that describe it (with character spans), plus 14 CheXpert-order labels
(1 positive, 0 negated, -1 uncertain, nan unmentioned) and the boxes of all 29 regions.

Everything is a pure function of `(seed, split, index)`: example `i` is generated on its own,
from independent numpy Generators seeded with `[seed, split_code(split), index, stream]`, so a
split can be produced in any order or in parallel. Rendering is vectorised numpy on cached
coordinate grids.

Entry points: `generate_example`, `generate_split`, `findings_to_arrays`, `as_tf_dataset`;
`plan_example` + `render_plan` give control over the findings of an example (e.g. render the
same patient with and without a finding). `python -m data_pipeline.phantoms --out DIR --n 8`
writes PNGs and reports for a person to look at. numpy-only except `as_tf_dataset` (imports
TensorFlow lazily).

Modules, in the order an example is made:

* `config`: vocabularies (finding kinds, severities, devices) and `PhantomConfig`.
* `geometry`: the parametric anatomy, its pose and the 29 region boxes.
* `streams`: the independent random streams of each example.
* `placement`: which findings a study has and where they sit (`FindingSpec`).
* `plans`: everything random about one example (`ExamplePlan`).
* `canvas`, `chest`, `renderers`, `render`: drawing the radiograph of a plan.
* `phrases`, `reports`: writing its report and labels.
* `generate`: examples and splits with their ground truth.
* `tf_source`: the tf.data source; `preview`: PNGs and reports for a person.
"""

from data_pipeline.phantoms.config import (
  DEFAULT_FINDING_WEIGHTS,
  DEVICE_VARIANTS,
  FINDING_INDEX,
  FINDING_NAMES,
  FINDING_TO_CHEXPERT,
  MAX_FINDINGS,
  SEVERITY_NAMES,
  PhantomConfig,
)
from data_pipeline.phantoms.generate import (
  example_from_plan,
  findings_to_arrays,
  generate_example,
  generate_split,
)
from data_pipeline.phantoms.placement import FindingSpec, sample_findings
from data_pipeline.phantoms.plans import ExamplePlan, ImageStyle, plan_example
from data_pipeline.phantoms.preview import write_preview
from data_pipeline.phantoms.render import Rendering, render_plan
from data_pipeline.phantoms.reports import Mention, Report, write_report
from data_pipeline.phantoms.streams import split_code
from data_pipeline.phantoms.tf_source import TF_FEATURES, as_tf_dataset, example_to_features

__all__ = [
  "DEFAULT_FINDING_WEIGHTS",
  "DEVICE_VARIANTS",
  "FINDING_INDEX",
  "FINDING_NAMES",
  "FINDING_TO_CHEXPERT",
  "MAX_FINDINGS",
  "SEVERITY_NAMES",
  "TF_FEATURES",
  "ExamplePlan",
  "FindingSpec",
  "ImageStyle",
  "Mention",
  "PhantomConfig",
  "Rendering",
  "Report",
  "as_tf_dataset",
  "example_from_plan",
  "example_to_features",
  "findings_to_arrays",
  "generate_example",
  "generate_split",
  "plan_example",
  "render_plan",
  "sample_findings",
  "split_code",
  "write_preview",
  "write_report",
]
