#!/usr/bin/env bash
# The four alignment stages end to end on CPU, then the plots:
#   base (pretrain) -> SFT -> preference pairs + reward model -> PPO and DPO -> docs/img/align_*.png
#   bash recipes/align_all.sh                  # runs/align, the numbers in docs/results.md (align)
#   OUT=runs/align_smoke SMOKE=1 bash recipes/align_all.sh   # a tiny run of every stage (~1 min)
# IMG=docs/img writes the plots there (align_accuracy.png, align_rm.png, align_ppo.png); default $OUT/img.
# Prints the wall time of each stage and of the whole pipeline.
set -euo pipefail
OUT=${OUT:-runs/align}
if [[ "${SMOKE:-0}" == 1 ]]; then
  # 30 SFT steps: enough for the format `Answer: N`, so the labeller finds answer>none pairs
  PRE=(--max-steps 20 n_items=2000 n_eval=32); SFT=(--max-steps 30 n_eval=32)
  RM=(--max-steps 5 n_prompts=96 n_heldout_prompts=32 batch_size=8); PPO=(--max-steps 2 prompts_per_step=16 n_eval=32)
  DPO=(--max-steps 5 batch_size=8 n_eval=32)
else
  PRE=(); SFT=(); RM=(); PPO=(); DPO=()
fi
START=$SECONDS
stage() { local t=$SECONDS; "$@"; echo "align_all: $2 done in $((SECONDS - t)) s (total $((SECONDS - START)) s)"; }
# Each stage without --data writes the built-in task's files under its --out/data (TRL's JSONL shapes) and reads
# them back; the reward model's run samples the preference pairs from this run's SFT model, and DPO trains on them.
PAIRS=(--data "$OUT/rm/data/preferences.jsonl" --val-data "$OUT/rm/data/preferences_heldout.jsonl")
stage python recipes/align_pretrain.py --out "$OUT/base" "${PRE[@]}"
stage python recipes/sft.py --init "$OUT/base/model" --out "$OUT/sft" "${SFT[@]}"
stage python recipes/reward_model.py --sft "$OUT/sft/model" --out "$OUT/rm" "${RM[@]}"
stage python recipes/ppo.py --init "$OUT/sft/model" reward="$OUT/rm/model,mmfm.align.rewards:exact_match" \
  reward_weights=[1,0] --out "$OUT/ppo" "${PPO[@]}"
stage python recipes/dpo.py --init "$OUT/sft/model" "${PAIRS[@]}" --out "$OUT/dpo" "${DPO[@]}"
python -m mmfm.align.report "$OUT" "${IMG:-$OUT/img}"
python -m mmfm.align.confirm "$OUT"  # the 808 held-out problems no setting was chosen on
echo "align_all: whole pipeline $((SECONDS - START)) s wall"
