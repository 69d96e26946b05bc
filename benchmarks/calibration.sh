#!/usr/bin/env bash
# Calibration reports (issue 11): does a world express AdaGRPO's premise? Runs `adagrpo calibrate` on the default
# world and the imitation-deficit world with noisy-oracle rewards (noise level × where it lives) and a trained
# reward model, writing benchmarks/results/calibration/<name>.{txt,json}. Needs the SFT (and reward) checkpoints:
#   SFT_DEFAULT=runs/noise-map/sft-default-s0/best.ckpt SFT_BIASED=runs/noise-map/sft-biased-s0/best.ckpt \
#   REWARD_DEFAULT=runs/noise-map/reward-default-s0/best.ckpt REWARD_BIASED=runs/noise-map/reward-biased-s0/best.ckpt \
#   bash benchmarks/calibration.sh [name ...]        # default: every report below; USERS=500 test events each
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/results/calibration
mkdir -p "$OUT"
USERS=${USERS:-500}
SFT_DEFAULT=${SFT_DEFAULT:-runs/noise-map/sft-default-s0/best.ckpt}
SFT_BIASED=${SFT_BIASED:-runs/noise-map/sft-biased-s0/best.ckpt}
REWARD_DEFAULT=${REWARD_DEFAULT:-runs/noise-map/reward-default-s0/best.ckpt}
REWARD_BIASED=${REWARD_BIASED:-runs/noise-map/reward-biased-s0/best.ckpt}
noisy() { echo "{class_path: adagrpo.lightning_modules.NoisyReward, init_args: {noise: $1, noise_on: $2}}"; }
declare -A DATA SFT REWARD
add() { DATA[$1]=$2; SFT[$1]=$3; REWARD[$1]=$4; }
add default_trained configs/data/synthetic_rl.yaml "$SFT_DEFAULT" "$REWARD_DEFAULT"
add default_uniform0.1 configs/data/synthetic_rl.yaml "$SFT_DEFAULT" "$(noisy 0.1 uniform)"
add biased_trained configs/data/synthetic_biased_rl.yaml "$SFT_BIASED" "$REWARD_BIASED"
for n in 0.0 0.05 0.1 0.2 0.3 0.4 1.2; do add "biased_uniform$n" configs/data/synthetic_biased_rl.yaml "$SFT_BIASED" "$(noisy $n uniform)"; done
for n in 0.1 0.3 1.2; do add "biased_tail$n" configs/data/synthetic_biased_rl.yaml "$SFT_BIASED" "$(noisy $n tail)"; done
add biased_segment0.3 configs/data/synthetic_biased_rl.yaml "$SFT_BIASED" "$(noisy 0.3 segment)"
NAMES=("$@")
[ ${#NAMES[@]} -eq 0 ] && NAMES=(default_trained default_uniform0.1 biased_trained biased_uniform0.0 biased_uniform0.05
                                 biased_uniform0.1 biased_uniform0.2 biased_uniform0.3 biased_uniform0.4 biased_uniform1.2
                                 biased_tail0.1 biased_tail0.3 biased_tail1.2 biased_segment0.3)
for name in "${NAMES[@]}"; do
    if [[ "${REWARD[$name]}" == *.ckpt && ! -f "${REWARD[$name]}" ]]; then echo "[$name] skipped: no ${REWARD[$name]}"; continue; fi
    echo "[$name]"
    python -m adagrpo calibrate --data "${DATA[$name]}" --sft "${SFT[$name]}" --reward "${REWARD[$name]}" \
        --users "$USERS" --json "$OUT/$name.json" > "$OUT/$name.txt"
done
