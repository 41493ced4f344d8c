# Sourced by the three VNN-COMP scripts: the version check, where the tool and its environment
# are, and where run_instance.sh records the verify it runs (for prepare_instance.sh).
VERSION_STRING=v1
TOOL_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VERIFIER_VENV:-$TOOL_DIR/.venv}"
PIDFILE="${TMPDIR:-/tmp}/verifier-vnncomp-$(id -u).pgid"

# check_args SCRIPT COUNT USAGE ARG...: the version string first, then COUNT arguments in all
check_args() {
    local script=$1 count=$2 usage=$3
    shift 3
    if [ "${1:-}" != "$VERSION_STRING" ]; then
        echo "$script: expected first argument (version string) '$VERSION_STRING', got '${1:-}'" >&2
        return 1
    fi
    if [ $# -ne "$count" ]; then
        echo "$script: usage: $script $usage" >&2
        return 1
    fi
}
