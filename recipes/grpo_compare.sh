#!/usr/bin/env bash
# The comparison of docs/grpo.md (issue 17): from the same SFT model (runs/align/sft/model, made by align_all.sh),
# PPO re-run as align_all.sh runs it (its reward model, runs/align/rm/model), then every GRPO variant and RLOO with
# PPO's training time as their budget (max_train_s = PPO's train_s; --max-steps high enough never to bind), then
# seeds 1 and 2 of the two variants best on the tuning split (400 problems; the 808 confirmation problems choose
# nothing). Every run scores itself (GRPO) or is scored (PPO, mmfm.align.compare --score) on the confirmation set.
# Run it alone, as one timed job:
#   nohup flock -x /tmp/mmfm-cpu.lock bash recipes/grpo_compare.sh > runs/align_grpo/compare.log 2>&1 &
# Smoke test (tiny steps, no lock):  OUT=runs/align_grpo/smoke SMOKE=1 LOSSES="dapo rloo" bash recipes/grpo_compare.sh
set -euo pipefail
HERE=$(dirname "$0")  # the recipes folder (a frozen copy of the code may run this; see docs/grpo.md)
OUT=${OUT:-runs/align_grpo}
SFT=${SFT:-runs/align/sft/model}
RM=${RM:-runs/align/rm/model}
LOSSES=${LOSSES:-dapo grpo dr_grpo bnpo rloo}
SEEDS=${SEEDS:-1 2}
if [[ "${SMOKE:-0}" == 1 ]]; then
  PPO=(--max-steps 1 prompts_per_step=8); GRPO=(--max-steps 2 prompts_per_step=4); MAX_STEPS=2
else
  PPO=(); GRPO=(); MAX_STEPS=100000
fi
mkdir -p "$OUT"
python "$HERE/ppo.py" --init "$SFT" reward="$RM,mmfm.align.rewards:exact_match" reward_weights=[1,0] \
  --out "$OUT/ppo" "${PPO[@]}"
python -P -m mmfm.align.compare --score "$OUT/ppo" --init "$SFT" > /dev/null
BUDGET=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['train_s'])" "$OUT/ppo/metrics.json")
echo "grpo_compare: PPO trained for $BUDGET s: the GRPO runs' max_train_s"
grpo() { python "$HERE/grpo.py" --init "$SFT" max_train_s="$BUDGET" "${GRPO[@]}" --max-steps "$MAX_STEPS" "$@"; }
RUNS=()
for loss in $LOSSES; do
  grpo loss="$loss" --out "$OUT/$loss"; RUNS+=("$OUT/$loss")
done
# the two best variants on the tuning split (heldout/accuracy, greedy), then their other seeds
BEST=$(python -c "import json, sys; d = sys.argv[1]; names = sys.argv[2:]
acc = {n: json.load(open(f'{d}/{n}/metrics.json'))['heldout/accuracy'] for n in names}
print(' '.join(sorted(names, key=lambda n: -acc[n])[:2]))" "$OUT" $LOSSES)
echo "grpo_compare: best two on the tuning split: $BEST"
for loss in $BEST; do
  for seed in $SEEDS; do
    grpo loss="$loss" --seed "$seed" --out "$OUT/${loss}_seed$seed"; RUNS+=("$OUT/${loss}_seed$seed")
  done
done
python -P -m mmfm.align.compare runs/align "$OUT/ppo" "${RUNS[@]}" | tee "$OUT/table.md"
