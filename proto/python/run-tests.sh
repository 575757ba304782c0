#!/usr/bin/env bash
# Tests of the Python client (berth-client) against a real agent.
#
#   proto/python/run-tests.sh [PYTEST ARGS...]
#
# Expects the test environment to be up and its variables exported
# (. "$(scripts/testenv up)": BERTH_TEST_CONTAINERD_SOCKET, BERTH_TEST_REGISTRY,
# BERTH_TEST_IMAGE_*, ...) and BERTH_BIN_DIR to name the directory holding
# berth-agent (default: target/debug of this repository).
#
# Makes a fresh venv (python3 -m venv; on Debian that needs python3-venv, which
# is installed when missing), pip-installs this package (its stubs are generated
# from proto/berth/v1/agent.proto while it is built) and pytest, and runs pytest.
# Exits with pytest's status. BERTH_PY_VENV=DIR keeps (and reuses) the venv there.

set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(cd "$here/../.." && pwd -P)

log() { printf '[berth-client %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

if [[ -z ${BERTH_TEST_CONTAINERD_SOCKET:-} || -z ${BERTH_TEST_REGISTRY:-} ]]; then
    log "ERROR: the BERTH_TEST_* variables are not set: bring the test environment up first"
    log "       (. \"\$(scripts/testenv up)\"; then $0)"
    exit 2
fi
export BERTH_BIN_DIR=${BERTH_BIN_DIR:-$repo/target/debug}
if [[ ! -x $BERTH_BIN_DIR/berth-agent ]]; then
    log "ERROR: $BERTH_BIN_DIR/berth-agent not found: build it, or set BERTH_BIN_DIR"
    exit 2
fi

python=${PYTHON:-python3}
tmp=
if [[ -n ${BERTH_PY_VENV:-} ]]; then
    venv=$BERTH_PY_VENV
else
    tmp=$(mktemp -d /tmp/berth-client-venv-XXXX)
    venv=$tmp/venv
fi
cleanup() { [[ -z $tmp ]] || rm -rf "$tmp"; }
trap cleanup EXIT

make_venv() { "$python" -m venv "$venv" >/dev/null 2>&1; }
if [[ ! -x $venv/bin/python ]] && ! make_venv; then
    # Debian's python3 has no ensurepip without python3-venv.
    log "python3 -m venv failed; installing python3-venv"
    sudo=()
    [[ $EUID -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$venv"
    make_venv || { log "ERROR: $python -m venv $venv failed"; "$python" -m venv "$venv"; exit 1; }
fi

log "installing berth-client and pytest into $venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "$here" "pytest>=7"

log "running pytest (agent binaries from $BERTH_BIN_DIR)"
cd "$here"
set +e
"$venv/bin/python" -m pytest -p no:cacheprovider -ra "$@" tests
status=$?
set -e
if ((status != 0)); then
    log "FAILED: pytest exited with $status"
fi
exit "$status"
