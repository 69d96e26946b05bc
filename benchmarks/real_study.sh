#!/usr/bin/env bash
# The real-data study (issue 6): on Amazon Beauty or Industrial_and_Scientific, SFT, a reward model on simulated
# exposure (popularity^1 + co-occurrence logging policy), the fixed mixtures λ ∈ {0.1, 0.3, 1.0}, pure GRPO,
# AdaGRPO and its two single-diagnostic ablations — all from the same SFT start, same steps, one seed.
# CPU sizes by default (policy_mini, a capped number of RL steps and test users); on a GPU pass
#   POLICY=configs/model/policy_small.yaml TRAINER_OVERLAY=configs/trainer/gpu.yaml SFT_STEPS=3000 RL_STEPS=600 \
#   TEST_USERS=0
# SFT_ONLY=1 stops after the SFT stage and its test.
#
#   ADAGRPO_DATA_ROOT=../shared/data bash benchmarks/real_study.sh beauty|industrial
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/study_lib.sh
DATASET=${1:?usage: real_study.sh beauty|industrial}
EXP=$DATASET-study
RUNS=${ADAGRPO_RUNS:-runs}
POLICY=${POLICY:-configs/model/policy_mini.yaml}
# SFT length in optimizer steps (a ceiling; EarlyStopping of sft.yaml ends it), validation every SFT_VAL_EVERY steps:
# the rule of configs/experiments/sft.yaml, so Beauty (~88 steps/epoch at batch 256) and Industrial (~33) both get
# enough updates (the former 20 epochs gave Industrial 660 steps and Beauty 1,760).
SFT_STEPS=${SFT_STEPS:-1500}
SFT_VAL_EVERY=${SFT_VAL_EVERY:-100}
# SFT_EPOCHS (the earlier interface, used by the commands in beauty_study.md / industrial_study.md): an epoch count
# instead of the step budget.
SFT_LEN=(--trainer.max_steps "$SFT_STEPS")
[ -n "${SFT_EPOCHS:-}" ] && SFT_LEN=(--trainer.max_epochs "$SFT_EPOCHS" --trainer.max_steps -1)
RM_EPOCHS=${RM_EPOCHS:-3}
RL_STEPS=${RL_STEPS:-150}
RL_VAL_EVERY=${RL_VAL_EVERY:-50}   # validation (and best-checkpoint selection) every N RL steps
TEST_USERS=${TEST_USERS:-4000}     # RL runs: a seeded subset of test users (0 = all); SFT is tested on all users
TRAINER=()
[ -n "${TRAINER_OVERLAY:-}" ] && TRAINER=(--config "$TRAINER_OVERLAY")
CAP=()
[ "$TEST_USERS" != 0 ] && CAP=(--data.init_args.max_test_samples "$TEST_USERS")

# SFT (all test users: HR@K, NDCG@K, hallucination).
fit_once sft --config configs/experiments/sft.yaml "${TRAINER[@]}" --data "configs/data/$DATASET.yaml" \
    --model.init_args.policy "$POLICY" --experiment "$EXP" --run_name sft "${SFT_LEN[@]}" \
    --trainer.val_check_interval "$SFT_VAL_EVERY" \
    --data.init_args.max_eval_samples 2000
python -m adagrpo test --config configs/experiments/sft.yaml "${TRAINER[@]}" --data "configs/data/$DATASET.yaml" \
    --model.init_args.policy "$POLICY" --experiment "$EXP" --run_name sft
[ -n "${SFT_ONLY:-}" ] && exit 0

# Reward model on simulated exposure, with its bias report.
fit_once reward --config configs/experiments/reward.yaml "${TRAINER[@]}" \
    --data "configs/data/${DATASET}_reward.yaml" --experiment "$EXP" --run_name reward --trainer.max_epochs "$RM_EPOCHS"
python -m adagrpo test --config configs/experiments/reward.yaml "${TRAINER[@]}" \
    --data "configs/data/${DATASET}_reward.yaml" --experiment "$EXP" --run_name reward

# RL variants from the same start (continue_sft: the NLL-only control under the same schedule).
export ADAGRPO_SFT_CKPT=$RUNS/$EXP/sft/best.ckpt ADAGRPO_REWARD_CKPT=$RUNS/$EXP/reward/best.ckpt
for c in continue_sft grpo_fixed_0.1 grpo_fixed_0.3 grpo_fixed_1.0 pure_grpo adagrpo adagrpo_difficulty_only \
         adagrpo_discriminability_only; do
    args=(--config "configs/experiments/$c.yaml" "${TRAINER[@]}" --data "configs/data/${DATASET}_rl.yaml"
          --experiment "$EXP" --run_name "$c" "${CAP[@]}")
    fit_once "$c" "${args[@]}" --trainer.max_steps "$RL_STEPS" --trainer.val_check_interval "$RL_VAL_EVERY" \
        --data.init_args.max_eval_samples 1000
    python -m adagrpo test "${args[@]}"
    python -m adagrpo test "${args[@]}" --checkpoint last
done

# SFT again on the RL runs' test users (same caps, so the same seeded subset), for a paired comparison.
[ "$TEST_USERS" != 0 ] && python -m adagrpo test --config configs/experiments/sft.yaml "${TRAINER[@]}" \
    --data "configs/data/$DATASET.yaml" --model.init_args.policy "$POLICY" --experiment "$EXP" \
    --run_name "sft-${TEST_USERS}users" --ckpt_path "$RUNS/$EXP/sft/best.ckpt" \
    --data.init_args.max_eval_samples 1000 "${CAP[@]}"

python -m adagrpo compare --experiment "$EXP" --out "$RUNS/$EXP"
python -m adagrpo analyze --data "configs/data/${DATASET}_rl.yaml" --sft "$ADAGRPO_SFT_CKPT" \
    --reward "$ADAGRPO_REWARD_CKPT" --policy grpo_fixed_1.0="$RUNS/$EXP/grpo_fixed_1.0/best.ckpt" \
    --policy adagrpo="$RUNS/$EXP/adagrpo/best.ckpt" --max-users 3000 --out "$RUNS/$EXP/strata" --experiment "$EXP"
