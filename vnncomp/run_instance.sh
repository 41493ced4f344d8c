#!/usr/bin/env bash
# VNN-COMP run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT
#
# Writes RESULTS_FILE in the competition's format: sat (then every (X_i ...) and (Y_j ...)),
# unsat, unknown, timeout or error.  The timeout counts from this script's start, start-up
# included: the verifier gets TIMEOUT minus what has passed, minus VERIFIER_STARTUP seconds for
# importing, loading the model and writing the result (measured here: about 1.1 s to import and
# 0.1 s to load a mnist_fc net on a busy 2-core machine; default 2), minus VERIFIER_KILL_MARGIN
# (default 1).  At TIMEOUT - VERIFIER_KILL_MARGIN its whole process group is killed and the
# result is `timeout`.
# Exit 0 when the result is sat, unsat, unknown or timeout; 1 for error or bad arguments.
START=$(date +%s.%N)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
check_args run_instance.sh 6 "v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT" "$@" || exit 1
CATEGORY=$2
ONNX_FILE=$3
VNNLIB_FILE=$4
RESULTS_FILE=$5
TIMEOUT=$6

# seconds left since START: "hard soft" (both at least 0.1, so a tiny timeout still runs)
budget() {
    awk -v t="$TIMEOUT" -v s="$START" -v now="$(date +%s.%N)" \
        -v k="${VERIFIER_KILL_MARGIN:-1}" -v u="${VERIFIER_STARTUP:-2}" 'BEGIN {
        if (t !~ /^[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$/ || t + 0 <= 0) exit 1
        hard = t - (now - s) - k; if (hard < 0.1) hard = 0.1
        soft = hard - u; if (soft < 0.1) soft = 0.1
        printf "%.3f %.3f\n", hard, soft }'
}
if ! read -r HARD SOFT < <(budget); then
    echo "run_instance.sh: TIMEOUT must be a positive number of seconds, got '$TIMEOUT'" >&2
    exit 1
fi
echo "run_instance.sh: $CATEGORY $ONNX_FILE $VNNLIB_FILE: verifier deadline $SOFT s, hard kill at $HARD s" >&2

rm -f "$RESULTS_FILE"
# VNN-COMP's unsat answers are about real arithmetic (the field's tools and the expected answers
# prove that), so proofs here are real-arithmetic ones; VERIFIER_ARITHMETIC=float32 asks for the
# model as onnxruntime runs it instead.  A sat answer is always a float32 point replayed in
# onnxruntime (or float64 where the box holds no float32 point).
# GNU timeout runs verify in a process group of its own and kills the whole group
timeout --signal=KILL "$HARD" "$VENV/bin/verify" "$ONNX_FILE" --vnnlib "$VNNLIB_FILE" \
    --timeout "$SOFT" --arithmetic "${VERIFIER_ARITHMETIC:-real}" \
    --results-file "$RESULTS_FILE" < /dev/null &
tpid=$!
echo "$$ $tpid" > "$PIDFILE"         # for prepare_instance.sh, should this script be killed
wait "$tpid"
rc=$?
rm -f "$PIDFILE"

answer=$(head -n 1 "$RESULTS_FILE" 2>/dev/null)
case "$rc:$answer" in
    0:unsat | 1:sat | 3:unknown | 3:timeout) ;;         # verify wrote the result file
    124:* | 137:*)                                      # SIGKILL: the hard limit, or not?
        if awk -v s="$START" -v now="$(date +%s.%N)" -v t="$TIMEOUT" \
               -v k="${VERIFIER_KILL_MARGIN:-1}" 'BEGIN { exit !(now - s >= t - k - 0.2) }'; then
            echo timeout > "$RESULTS_FILE"
        else
            echo "run_instance.sh: verify was killed before the time limit" >&2
            echo error > "$RESULTS_FILE"
            exit 1
        fi ;;
    *)                                                  # 2: bad input (message above), a crash
        echo "run_instance.sh: verify exited with $rc" >&2
        echo error > "$RESULTS_FILE"
        exit 1 ;;
esac
exit 0
