#!/usr/bin/env bash
# ALC-ITR end to end (README "ALC-ITR"): stage 2 (RRA-VL) from the main job's run on the synthetic
# set, and both stages on covid_cxr with the labeler's weak labels and the default atlas's boxes;
# each stage-2 run prints location-conditioned P@10 / R@10 / mAP (a hit: the same finding in the same
# region) for the global score and the conditioned ones, its stage-1 model's figures in brackets.
#
#   bash scripts/alc_demo.sh [WORKDIR] [OUT]     # defaults: workdirs/default, workdirs/alc_demo
#
# WORKDIR is a work dir of the default config (bash scripts/train_default.sh). covid_cxr is read from
# $SHARED_DATA/covid_chestxray (default ../shared/data) and built into OUT/tfds. Every step is skipped
# when its output exists; the figures are in each run's final_metrics.json (eval/anatomy/...).
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR=${1:-workdirs/default}
OUT=${2:-workdirs/alc_demo}
SHARED_DATA=${SHARED_DATA:-../shared/data}
PY=.venv/bin/python
mkdir -p "$OUT"
[[ -f "$WORKDIR/final_metrics.json" ]] || { echo "no finished run at $WORKDIR (run scripts/train_default.sh)" >&2; exit 1; }
step() { echo; echo "=== $*"; }

step "synthetic: stage 2 from $WORKDIR -> $OUT/synthetic_stage2"
[[ -f "$OUT/synthetic_stage2/final_metrics.json" ]] || "$PY" -m jimte.main --config configs/alc_itr.py \
  --workdir "$OUT/synthetic_stage2" --config.init_from="$WORKDIR" --noprogress

step "covid_cxr -> $OUT/tfds/covid_cxr/frontal_256"
[[ -d "$OUT/tfds/covid_cxr/frontal_256" ]] || .venv/bin/tfds build data_pipeline/builders/covid_cxr \
  --manual_dir "$SHARED_DATA/covid_chestxray" --data_dir "$OUT/tfds" \
  --config '{"name": "frontal_256", "max_side": 256}' >/dev/null
COVID=(--config.data.source=tfds --config.data.tfds_name=covid_cxr --config.data.tfds_config=frontal_256
  --config.data.tfds_data_dir="$OUT/tfds")
step "covid_cxr: stage 1 (the default config, ${COVID_EPOCHS:-30} epochs) -> $OUT/covid_stage1"
[[ -f "$OUT/covid_stage1/final_metrics.json" ]] || "$PY" -m jimte.main --config configs/default.py \
  --workdir "$OUT/covid_stage1" "${COVID[@]}" --config.num_epochs="${COVID_EPOCHS:-30}" --noprogress
step "covid_cxr: stage 2 (${COVID_STAGE2_EPOCHS:-10} epochs) -> $OUT/covid_stage2"
[[ -f "$OUT/covid_stage2/final_metrics.json" ]] || "$PY" -m jimte.main --config configs/alc_itr.py \
  --workdir "$OUT/covid_stage2" "${COVID[@]}" --config.init_from="$OUT/covid_stage1" \
  --config.num_epochs="${COVID_STAGE2_EPOCHS:-10}" --noprogress

step "location-conditioned retrieval (stage 2; its stage-1 model in brackets)"
"$PY" - "$OUT/synthetic_stage2" "$OUT/covid_stage2" <<'PYEOF'
import json, pathlib, sys
for run in sys.argv[1:]:
  final = json.loads((pathlib.Path(run) / "final_metrics.json").read_text())
  before = json.loads((pathlib.Path(run) / "untrained_metrics.json").read_text())
  print(run, f"({final['eval/anatomy/num_queries']:.0f} queries,",
        f"chance precision {final['eval/anatomy/chance_precision']:.3f})")
  print(f"  {'':13s}  P@10           R@10           mAP")
  for score in ("global", "region_text", "region_image", "blend"):
    cells = [f"{final[f'eval/anatomy/{score}/{m}']:.3f} ({before[f'eval/anatomy/{score}/{m}']:.3f})"
             for m in ("precision@10", "recall@10", "mean_average_precision")]
    print(f"  {score:13s}", "  ".join(cells))
PYEOF
