#!/usr/bin/env bash
# One entry point for a fresh clone: sets up .venv with the pinned versions, then
#   ./run.sh demo        train LeNet on the embedded digits data (no network needed)
#   ./run.sh test [ARGS] run the test suite (pytest ARGS)
#   ./run.sh bench       run the benchmarks
#   ./run.sh divekit ... any divekit command inside the environment
set -euo pipefail
cd "$(dirname "$0")"
venv="${DIVEKIT_VENV:-.venv}"
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"

stamp="$(cat constraints.txt pyproject.toml | sha1sum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.divekit-stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "setting up $venv (pinned versions from constraints.txt) ..." >&2
    "$python" -m venv "$venv"
    # torch named by exact version: that picks the CPU build where one is offered locally.
    # pip compiles bytecode on one core; compileall afterwards uses all of them.
    "$venv/bin/pip" install -q --no-compile -c constraints.txt \
        "torch==$(sed -n 's/^torch==//p' constraints.txt)" -e ".[test]"
    "$venv/bin/python" -m compileall -q -j 0 \
        "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
        > /dev/null || true
    echo "$stamp" > "$venv/.divekit-stamp"
fi

cmd="${1:-demo}"
[ $# -gt 0 ] && shift
case "$cmd" in
    demo) exec "$venv/bin/divekit" recipe run digits-lenet "$@" ;;
    test) exec "$venv/bin/python" -m pytest "$@" ;;
    bench) exec "$venv/bin/divekit" bench "$@" ;;
    divekit) exec "$venv/bin/divekit" "$@" ;;
    *) echo "usage: ./run.sh demo|test|bench|divekit [ARGS]" >&2; exit 2 ;;
esac
