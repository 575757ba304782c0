# shellcheck shell=bash
# Part of scripts/lib.sh, which sources it.
# The Debian packages berth builds and tests with, and the Rust toolchain
# check.

# Debian packages needed to build and test berth.
BERTH_PACKAGES=(
    containerd runc protobuf-compiler docker-registry skopeo umoci
    busybox-static libibverbs-dev librdmacm-dev libclang-dev clang
    apache2-utils openssl pkg-config jq curl tini gcc libc6-dev python3-venv systemd
    systemd-container debootstrap zstd containernetworking-plugins iptables iproute2
)

# berth_install_packages: install missing Debian packages (quiet if none).
berth_install_packages() {
    local missing=() pkg status sudo=()
    for pkg in "${BERTH_PACKAGES[@]}"; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
        [[ $status == installed ]] || missing+=("$pkg")
    done
    ((${#missing[@]} > 0)) || return 0
    [[ $EUID -eq 0 ]] || sudo=(sudo)
    berth_log "installing missing packages: ${missing[*]}"
    "${sudo[@]}" apt-get update || return 1
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
}

# berth_require_cargo: make sure a Rust toolchain (1.88 or newer) is on PATH.
berth_require_cargo() {
    [[ -d $HOME/.cargo/bin && :$PATH: != *":$HOME/.cargo/bin:"* ]] && export PATH=$HOME/.cargo/bin:$PATH
    if ! command -v cargo >/dev/null 2>&1; then
        berth_log "ERROR: cargo not found: install a Rust toolchain (rustup, 1.88 or newer)"
        return 1
    fi
}
