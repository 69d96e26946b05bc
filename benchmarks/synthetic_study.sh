#!/usr/bin/env bash
# The synthetic-world study (issue 5's table): one SFT start and one exposure-biased reward model, then the
# fixed mixtures, pure GRPO and AdaGRPO (and the single-diagnostic ablations), 3 seeds each, the same steps.
# Every stage is an ordinary `adagrpo fit`/`test`; results go to MLflow experiment "synthetic-study" and to
# runs/synthetic-study/ (compare.csv, frontier.png, strata). About 1.5-2 h on 2 CPU cores.
#
#   bash benchmarks/synthetic_study.sh [seeds...]        # default seeds: 0 1 2
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/study_lib.sh
EXP=synthetic-study
SEEDS=("${@:-0 1 2}")
RUNS=${ADAGRPO_RUNS:-runs}
STEPS=${STUDY_STEPS:-150}

# 1. SFT and the reward model (seed 0), evaluated like every other run. The seeded test subset depends on both
#    caps (validation is drawn first), so SFT is tested with the caps the RL runs use below.
fit_once sft --config configs/experiments/sft.yaml --experiment $EXP --run_name sft
python -m adagrpo test --config configs/experiments/sft.yaml --experiment $EXP --run_name sft \
    --data.init_args.max_eval_samples 500 --data.init_args.max_test_samples 2000  # the RL runs' caps: same test users
fit_once reward --config configs/experiments/reward.yaml --experiment $EXP --run_name reward
python -m adagrpo test --config configs/experiments/reward.yaml --experiment $EXP --run_name reward

# 2. RL variants x seeds from the same SFT start and reward model.
export ADAGRPO_SFT_CKPT=$RUNS/$EXP/sft/best.ckpt ADAGRPO_REWARD_CKPT=$RUNS/$EXP/reward/best.ckpt
CONFIGS=()
for c in ${STUDY_CONFIGS:-continue_sft grpo_fixed_0.1 grpo_fixed_0.3 grpo_fixed_1.0 pure_grpo adagrpo adagrpo_difficulty_only \
         adagrpo_discriminability_only}; do CONFIGS+=(--config "configs/experiments/$c.yaml"); done
python -m adagrpo ablate "${CONFIGS[@]}" --seeds ${SEEDS[@]} --experiment $EXP ${FORCE:+--force} \
    --trainer.max_steps "$STEPS" --data.init_args.max_eval_samples 500 --data.init_args.max_test_samples 2000

# 3. The table (best and final checkpoints, mean ± std over seeds) with the true utility of the recommendations.
python -m adagrpo compare --experiment $EXP --metric test/true/hr_10 --metric test_last/true/hr_10 \
    --metric test/true/utility_10 --metric test_last/true/utility_10

# 4. Where RL helps: strata by SFT difficulty x reward discriminability (seed 0 policies).
python -m adagrpo analyze --data configs/data/synthetic_rl.yaml --sft $ADAGRPO_SFT_CKPT \
    --reward $ADAGRPO_REWARD_CKPT --policy grpo_fixed_1.0=$RUNS/$EXP/grpo_fixed_1.0-s0/best.ckpt \
    --policy adagrpo=$RUNS/$EXP/adagrpo-s0/best.ckpt --policy pure_grpo=$RUNS/$EXP/pure_grpo-s0/best.ckpt \
    --out $RUNS/$EXP/strata --experiment $EXP
