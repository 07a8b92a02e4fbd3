#!/usr/bin/env bash
# Downstream end to end (README "Downstream"): after the main job, on the synthetic test split and on
# covid_cxr: export embeddings, retrieve cases by image and by text (with heatmaps), the probe /
# fine-tuning / zero-shot classification tables.
#
#   bash scripts/downstream_demo.sh [WORKDIR] [OUT]     # defaults: workdirs/default, workdirs/downstream
#
# WORKDIR is a work dir of the default config (bash scripts/train_default.sh). covid_cxr is read from
# $SHARED_DATA/covid_chestxray (default ../shared/data), built into OUT/tfds, and a model of the default
# config is trained on its train split (OUT/covid_run) unless one is there. Every step is skipped when
# its output exists, so an interrupted demo continues.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR=${1:-workdirs/default}
OUT=${2:-workdirs/downstream}
SHARED_DATA=${SHARED_DATA:-../shared/data}
PY=.venv/bin/python
TFDS=.venv/bin/tfds
mkdir -p "$OUT"
[[ -d "$WORKDIR/checkpoints" ]] || { echo "no trained work dir at $WORKDIR (run scripts/train_default.sh)" >&2; exit 1; }

step() { echo; echo "=== $*"; }

# ----- The synthetic test split as a TFDS dataset: the default config's phantoms (same seed, size and
# ----- generator knobs, so the same 300 held-out cases the main job evaluated).
step "synthetic test split -> $OUT/tfds/synthetic_cxr/demo_test"
if [[ ! -d "$OUT/tfds/synthetic_cxr/demo_test" ]]; then
  phantom=$("$PY" - "$WORKDIR/config.json" <<'EOF'
import json, sys
data = json.load(open(sys.argv[1]))["data"]
print(json.dumps({"name": "demo_test", "n_train": 0, "n_validation": 0, "n_test": data["num_eval"],
                  "image_size": data["phantom_size"], "seed": data["seed"], "phantom": data["phantom"]}))
EOF
  )
  "$TFDS" build data_pipeline/builders/synthetic_cxr --data_dir "$OUT/tfds" --config "$phantom" >/dev/null
fi

step "export: images and reports of the synthetic test split"
for kind in image text; do
  [[ -f "$OUT/synthetic_${kind}s/manifest.json" ]] || .venv/bin/jimte export --workdir "$WORKDIR" \
    --tfds synthetic_cxr/demo_test --split test --data_dir "$OUT/tfds" --kind "$kind" \
    --out "$OUT/synthetic_${kind}s"
done

step "query image: the first test case as a PNG"
"$PY" - "$OUT" <<'EOF'
import sys
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image
out = sys.argv[1]
ds = tfds.builder("synthetic_cxr/demo_test", data_dir=f"{out}/tfds").as_dataset(split="test")
example = next(iter(tfds.as_numpy(ds.take(1))))
Image.fromarray(np.squeeze(example["image"], -1)).save(f"{out}/query.png")
print(f"{out}/query.png:", example["text"].decode()[:200])
EOF

step "retrieve: image -> reports (with heatmaps), text -> images, an exported id -> images"
.venv/bin/jimte retrieve --index "$OUT/synthetic_texts" --workdir "$WORKDIR" --image "$OUT/query.png" \
  --k 5 --heatmaps "$OUT/heatmaps"
.venv/bin/jimte retrieve --index "$OUT/synthetic_images" --workdir "$WORKDIR" \
  --text "Moderate left pleural effusion." --k 5
first_id=$("$PY" -c "from jimte.export import read_export; print(read_export('$OUT/synthetic_images').ids[0])")
.venv/bin/jimte retrieve --index "$OUT/synthetic_images" --id "$first_id" --k 5

step "heatmap of the query case and its own report"
report=$("$PY" -c "from jimte.export import read_export; print(read_export('$OUT/synthetic_images').reports[0])")
.venv/bin/jimte heatmap --workdir "$WORKDIR" --image "$OUT/query.png" --text "$report" \
  --out "$OUT/query_heatmap.png"

step "classification on the synthetic set (exact labels): probe, zero-shot, fine-tuning"
.venv/bin/jimte classify --workdir "$WORKDIR" --mode probe --fractions 1.0,0.1,0.01 --out "$OUT/classification"
.venv/bin/jimte classify --workdir "$WORKDIR" --mode zero_shot --out "$OUT/classification"
.venv/bin/jimte classify --workdir "$WORKDIR" --mode finetune --fractions 1.0,0.1,0.01 \
  --epochs "${FINETUNE_EPOCHS:-4}" --out "$OUT/classification"

# ----- covid_cxr: the real image-text set, built from its files, a default-config model trained on
# ----- its train split (307 pairs), then the same downstream on its test split.
step "covid_cxr -> $OUT/tfds/covid_cxr/frontal_256"
[[ -d "$OUT/tfds/covid_cxr/frontal_256" ]] || "$TFDS" build data_pipeline/builders/covid_cxr \
  --manual_dir "$SHARED_DATA/covid_chestxray" --data_dir "$OUT/tfds" \
  --config '{"name": "frontal_256", "max_side": 256}' >/dev/null
COVID_RUN="$OUT/covid_run"
step "train the default config on covid_cxr -> $COVID_RUN"
[[ -f "$COVID_RUN/final_metrics.json" ]] || "$PY" -m jimte.main --config configs/default.py \
  --workdir "$COVID_RUN" --config.data.source=tfds --config.data.tfds_name=covid_cxr \
  --config.data.tfds_config=frontal_256 --config.data.tfds_data_dir="$OUT/tfds" \
  --config.num_epochs="${COVID_EPOCHS:-30}" --noprogress
for kind in image text; do
  [[ -f "$OUT/covid_${kind}s/manifest.json" ]] || .venv/bin/jimte export --workdir "$COVID_RUN" \
    --tfds covid_cxr/frontal_256 --split test --data_dir "$OUT/tfds" --kind "$kind" --out "$OUT/covid_${kind}s"
done
.venv/bin/jimte retrieve --index "$OUT/covid_images" --workdir "$COVID_RUN" \
  --text "Bilateral patchy opacities in the lower lobes." --k 5
for mode in probe zero_shot; do
  .venv/bin/jimte classify --workdir "$COVID_RUN" --dataset covid_cxr --tfds_data_dir "$OUT/tfds" \
    --tfds_config frontal_256 --mode "$mode" --fractions 1.0,0.1 --out "$OUT/classification"
done
step "done: tables in $OUT/classification, heatmaps in $OUT/heatmaps and $OUT/query_heatmap.png"
