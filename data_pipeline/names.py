"""The names every room shares: the 14 CheXpert observations and the 29 Chest ImaGenome regions.

One definition of each list, imported by the phantom generator, the report labeler, the TFDS
builders and the evaluators, so that every component names findings and places the same way. Plain
Python: no numpy, TensorFlow or jax.
"""

from __future__ import annotations

# The 14 CheXpert observations, in the column order of the CheXpert labeler output.
CHEXPERT_OBSERVATIONS: tuple[str, ...] = (
  "No Finding",
  "Enlarged Cardiomediastinum",
  "Cardiomegaly",
  "Lung Lesion",
  "Lung Opacity",
  "Edema",
  "Consolidation",
  "Pneumonia",
  "Atelectasis",
  "Pneumothorax",
  "Pleural Effusion",
  "Pleural Other",
  "Fracture",
  "Support Devices",
)

# The observations that sit in a lung or its pleura: the ones a report places by lobe, zone or side.
LUNG_OBSERVATIONS: tuple[str, ...] = (
  "Lung Lesion",
  "Lung Opacity",
  "Edema",
  "Consolidation",
  "Pneumonia",
  "Atelectasis",
  "Pneumothorax",
  "Pleural Effusion",
  "Pleural Other",
)

# Observation name -> its column in `CHEXPERT_OBSERVATIONS`.
CHEXPERT_INDEX: dict[str, int] = {name: i for i, name in enumerate(CHEXPERT_OBSERVATIONS)}


# The 29 Chest ImaGenome anatomical regions, in the standard index order.
CHEST_IMAGENOME_REGIONS: tuple[str, ...] = (
  "right lung",
  "right upper lung zone",
  "right mid lung zone",
  "right lower lung zone",
  "right hilar structures",
  "right apical zone",
  "right costophrenic angle",
  "right hemidiaphragm",
  "left lung",
  "left upper lung zone",
  "left mid lung zone",
  "left lower lung zone",
  "left hilar structures",
  "left apical zone",
  "left costophrenic angle",
  "left hemidiaphragm",
  "trachea",
  "spine",
  "right clavicle",
  "left clavicle",
  "aortic arch",
  "mediastinum",
  "upper mediastinum",
  "svc",
  "cardiac silhouette",
  "cavoatrial junction",
  "right atrium",
  "carina",
  "abdomen",
)

# Region name -> index in `CHEST_IMAGENOME_REGIONS`.
REGION_INDEX: dict[str, int] = {name: i for i, name in enumerate(CHEST_IMAGENOME_REGIONS)}

NUM_REGIONS = len(CHEST_IMAGENOME_REGIONS)


def region_id(name: str) -> int:
  """Index of a Chest ImaGenome region name; raises `KeyError` naming the bad region."""
  try:
    return REGION_INDEX[name]
  except KeyError:
    raise KeyError(f"{name!r} is not one of the 29 Chest ImaGenome regions") from None
