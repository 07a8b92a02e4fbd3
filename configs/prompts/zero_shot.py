"""Report-style prompt sets for zero-shot classification: per label, sentences a report would say
when the finding is present (`positive`) and when it is absent (`negative`).

  python -m jimte.classify --workdir DIR --mode zero_shot --prompts configs/prompts/zero_shot.py

Keys are CheXpert observation names (data_pipeline/names.py); a label left out is not scored. The
score of an image for a label is softmax(gamma * [mean cos(image, positive prompts), mean
cos(image, negative prompts)])[0] (jimte/evaluate/zero_shot.py). Prompts are written the way IU /
MIMIC-CXR reports phrase findings, not copied from the synthetic generator's phrase lists.
"""

from __future__ import annotations

import ml_collections


def _entry(positive, negative):
  return dict(positive=tuple(positive), negative=tuple(negative))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c["No Finding"] = _entry(
    (
      "No acute cardiopulmonary abnormality.",
      "The lungs are clear. The heart size is normal. No pleural effusion or pneumothorax.",
      "Normal chest radiograph.",
    ),
    (
      "There is a moderate right pleural effusion.",
      "Focal consolidation in the left lower lobe.",
      "The heart is enlarged.",
      "There is a small left apical pneumothorax.",
    ),
  )
  c["Enlarged Cardiomediastinum"] = _entry(
    ("The cardiomediastinal silhouette is enlarged.", "The mediastinum is widened."),
    ("The cardiomediastinal silhouette is within normal limits.", "Normal mediastinal contours."),
  )
  c["Cardiomegaly"] = _entry(
    (
      "The heart is enlarged.",
      "There is moderate cardiomegaly.",
      "The cardiac silhouette is enlarged.",
    ),
    (
      "The heart size is normal.",
      "Heart size and mediastinal contours are within normal limits.",
      "No cardiomegaly.",
    ),
  )
  c["Lung Lesion"] = _entry(
    (
      "There is a 2 cm nodule in the right upper lobe.",
      "A pulmonary mass is seen in the left lung.",
      "There is a nodular opacity in the right lower lobe.",
    ),
    ("No pulmonary nodules or masses.", "No suspicious pulmonary nodule."),
  )
  c["Lung Opacity"] = _entry(
    ("There is an opacity in the right lower lobe.", "Patchy airspace opacities are present."),
    ("No focal airspace opacity.", "The lungs are clear."),
  )
  c["Edema"] = _entry(
    (
      "There is mild pulmonary edema.",
      "Diffuse interstitial edema is present.",
      "Findings are consistent with pulmonary edema.",
    ),
    ("No pulmonary edema.", "There is no evidence of pulmonary edema."),
  )
  c["Consolidation"] = _entry(
    (
      "There is consolidation in the left lower lobe.",
      "Focal airspace consolidation in the right lung base.",
      "Dense consolidation of the right upper lobe.",
    ),
    ("No focal consolidation.", "There is no focal airspace consolidation."),
  )
  c["Pneumonia"] = _entry(
    (
      "Findings are concerning for pneumonia.",
      "Right lower lobe opacity consistent with pneumonia.",
    ),
    ("No evidence of pneumonia.", "No focal consolidation to suggest pneumonia."),
  )
  c["Atelectasis"] = _entry(
    (
      "There is mild atelectasis at the left lung base.",
      "Bibasilar atelectasis.",
      "Subsegmental atelectasis in the right lower lobe.",
    ),
    ("No atelectasis.", "The lungs are well expanded without atelectasis."),
  )
  c["Pneumothorax"] = _entry(
    (
      "There is a small left apical pneumothorax.",
      "A large right pneumothorax is present.",
      "Moderate pneumothorax on the right.",
    ),
    ("No pneumothorax.", "There is no pneumothorax."),
  )
  c["Pleural Effusion"] = _entry(
    (
      "There is a small left pleural effusion.",
      "Moderate right pleural effusion.",
      "Bilateral pleural effusions are present.",
    ),
    ("No pleural effusion.", "There is no pleural effusion.", "No pleural effusions."),
  )
  c["Pleural Other"] = _entry(
    ("There is pleural thickening on the right.", "Blunting of the costophrenic angle."),
    ("No pleural thickening.", "The costophrenic angles are sharp."),
  )
  c["Fracture"] = _entry(
    ("There is an acute rib fracture.", "A healed fracture of the right clavicle."),
    ("No acute osseous abnormality.", "No displaced rib fractures."),
  )
  c["Support Devices"] = _entry(
    (
      "An endotracheal tube is in appropriate position.",
      "A right-sided central venous catheter is seen.",
      "A nasogastric tube is in the stomach.",
    ),
    ("No lines or tubes.", "No support devices are seen."),
  )
  return c
