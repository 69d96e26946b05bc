# Shared by the study scripts (sourced, not run). Needs EXP set by the caller.
# fit_once RUN_NAME ARGS...: `adagrpo fit ARGS` unless runs/<experiment>/<RUN_NAME>/best.ckpt exists (FORCE=1 refits).
fit_once() {
    local run=$1; shift
    if [ -z "${FORCE:-}" ] && [ -f "${ADAGRPO_RUNS:-runs}/$EXP/$run/best.ckpt" ]; then
        echo "[$run] already fitted: ${ADAGRPO_RUNS:-runs}/$EXP/$run/best.ckpt (FORCE=1 to refit)"
    else
        python -m adagrpo fit --force "$@"  # no best.ckpt (or FORCE=1): replace whatever record is there
    fi
}
