#!/usr/bin/env bash
# The four alignment stages end to end on CPU, then the plots:
#   base (pretrain) -> SFT -> preference pairs + reward model -> PPO and DPO -> docs/img/align_*.png
#   bash recipes/align_all.sh                  # runs/align, the numbers in docs/results.md (align)
#   OUT=runs/align_smoke SMOKE=1 bash recipes/align_all.sh   # a tiny run of every stage (~2 min)
set -euo pipefail
OUT=${OUT:-runs/align}
if [[ "${SMOKE:-0}" == 1 ]]; then
  PRE=(--max-steps 20 n_items=2000 n_eval=32); SFT=(--max-steps 5 n_train=64 n_eval=32)
  RM=(--max-steps 5 n_prompts=48 n_heldout_prompts=16); PPO=(--max-steps 2 prompts_per_step=16 n_eval=32)
  DPO=(--max-steps 5 n_eval=32)
else
  PRE=(); SFT=(); RM=(); PPO=(); DPO=()
fi
python recipes/align_pretrain.py --out "$OUT/base" "${PRE[@]}"
python recipes/sft.py --init "$OUT/base/model" --out "$OUT/sft" "${SFT[@]}"
python recipes/reward_model.py --sft "$OUT/sft/model" --pairs "$OUT/pairs.json" --out "$OUT/rm" "${RM[@]}"
python recipes/ppo.py --init "$OUT/sft/model" --reward "$OUT/rm/model" --out "$OUT/ppo" "${PPO[@]}"
python recipes/dpo.py --init "$OUT/sft/model" --pairs "$OUT/pairs.json" --out "$OUT/dpo" "${DPO[@]}"
python -m mmfm.align.report "$OUT" "${IMG:-$OUT/img}"
