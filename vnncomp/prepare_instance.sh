#!/usr/bin/env bash
# VNN-COMP prepare_instance.sh v1 CATEGORY ONNX VNNLIB
#
# Verifies, converts and caches nothing: all work on an instance happens in run_instance.sh,
# inside its timeout.  It checks the arguments and the installation, and stops a verify run of
# ours that an earlier instance left behind (run_instance.sh records its own pid and the
# process group it starts in $TMPDIR/verifier-vnncomp-UID.pgid).
# Exit 0: ready (every category is attempted); 1: bad arguments or no installation.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
check_args prepare_instance.sh 4 "v1 CATEGORY ONNX VNNLIB" "$@" || exit 1
ONNX_FILE=$3
VNNLIB_FILE=$4

if [ ! -x "$VENV/bin/verify" ]; then
    echo "prepare_instance.sh: no verifier in $VENV (run install_tool.sh v1 first)" >&2
    exit 1
fi
for f in "$ONNX_FILE" "$VNNLIB_FILE"; do
    if [ ! -f "$f" ]; then
        echo "prepare_instance.sh: file not found: $f" >&2
        exit 1
    fi
done

# A leftover: run_instance.sh was killed (it is gone) but the process group it started, a
# `timeout` running our verify, still lives.  A run whose script is alive is left alone, and a
# pid that was reused by another program is not ours.
if [ -f "$PIDFILE" ] && read -r script_pid pgid < "$PIDFILE" \
        && [[ "$script_pid$pgid" =~ ^[0-9]+$ ]]; then
    if ! kill -0 "$script_pid" 2>/dev/null \
            && [ "$(ps -o comm= -p "$pgid" 2>/dev/null)" = "timeout" ] \
            && ps -o args= -p "$pgid" | grep -q "/bin/verify "; then
        kill -KILL -- "-$pgid" 2>/dev/null
    fi
    kill -0 "$script_pid" 2>/dev/null || rm -f "$PIDFILE"
fi
exit 0
