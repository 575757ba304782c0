#!/usr/bin/env bash
# shellcheck shell=bash
#
# Shared helpers for berth's scripts (scripts/testenv, scripts/test, ...).
# Source it:  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# It sources its parts, split by concern, from scripts/lib/: common,
# packages, containerd, registries, images and env (the environment as a whole).
#
# The test environment (berth_env_up / berth_env_down) lives entirely under one
# directory DIR: a private containerd, a plain-HTTP registry, a TLS registry
# with basic auth, and busybox-based OCI test images (pushed to the
# registries; containerd starts without images, the agent pulls them).
#
# containerd 1.6 hard-codes two paths under /run/containerd that no setting
# moves: the shim sockets (/run/containerd/s/<sha256>) and the default runc
# state root (/run/containerd/runc). To leave the host's /run/containerd
# alone, the private containerd runs in its own mount namespace where DIR/run
# is bind-mounted over /run; shims, runc and containers inherit that
# namespace. Consequences: container rootfs mounts are not visible from the
# host, and clients must not put task IO FIFOs under /run (use DIR/fifo).
#
# The functions check every step themselves, so they also work where set -e
# is ignored (e.g. `berth_env_up DIR || ...`).

set -euo pipefail

# containerd versions (1.6 system, 1.7 trixie, 2.1 sid): berth_containerd_fetch.
# shellcheck source-path=SCRIPTDIR source=lib/containerd-versions.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/containerd-versions.sh"

# shellcheck source-path=SCRIPTDIR source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source-path=SCRIPTDIR source=lib/packages.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/packages.sh"
# shellcheck source-path=SCRIPTDIR source=lib/containerd.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/containerd.sh"
# shellcheck source-path=SCRIPTDIR source=lib/registries.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/registries.sh"
# shellcheck source-path=SCRIPTDIR source=lib/images.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/images.sh"
# shellcheck source-path=SCRIPTDIR source=lib/azurite.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/azurite.sh"
# shellcheck source-path=SCRIPTDIR source=lib/env.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/env.sh"
