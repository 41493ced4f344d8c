#!/usr/bin/env bash
# VNN-COMP install_tool.sh v1: install the verifier into a Python virtual environment.
#
# Default: (re)install into .venv at the repository root, where prepare_instance.sh and
# run_instance.sh look for it.  VERIFIER_VENV=DIR: use the environment DIR as it is (it must
# already hold the verifier, e.g. one made by `make install`); nothing is installed then.
# PYTHON=python3.X picks the interpreter of a new environment (Python >= 3.10).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
check_args install_tool.sh 1 "v1" "$@" || exit 1

if [ -n "${VERIFIER_VENV:-}" ]; then
    if ! "$VENV/bin/python" -c "import verifier" 2>/dev/null || [ ! -x "$VENV/bin/verify" ]; then
        echo "install_tool.sh: VERIFIER_VENV=$VENV holds no installed verifier" >&2
        exit 1
    fi
    echo "install_tool.sh: using the existing environment $VENV"
else
    "${PYTHON:-python3}" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet "$TOOL_DIR"
fi

# smoke test: load a shipped model and run it in onnxruntime (install time is not counted)
"$VENV/bin/verify" "$TOOL_DIR/models/digits_mlp.onnx" > /dev/null
echo "install_tool.sh: verifier $("$VENV/bin/python" -c 'import verifier; print(verifier.__version__)') ready in $VENV"
