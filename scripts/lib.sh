#!/usr/bin/env bash
# shellcheck shell=bash
#
# Shared helpers for berth's scripts (scripts/testenv, scripts/test, ...).
# Source it:  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
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

# Debian packages needed to build and test berth.
BERTH_PACKAGES=(
    containerd runc protobuf-compiler docker-registry skopeo umoci
    busybox-static libibverbs-dev librdmacm-dev libclang-dev clang
    apache2-utils openssl pkg-config jq curl tini gcc libc6-dev python3-venv systemd
    systemd-container debootstrap zstd
)

# Fixed test credentials for the TLS registry.
BERTH_REGISTRY_USER=berthuser
BERTH_REGISTRY_PASSWORD=s3cret-Registry-pw
# containerd namespace used by the tests.
BERTH_NAMESPACE=berth
# containerd namespace of berth_env_up's own smoke check (emptied afterwards).
BERTH_SMOKE_NAMESPACE=smoke
# Test image tags, built into the OCI layout and pushed as berth-test/<tag>.
BERTH_IMAGE_TAGS=(busybox entrypoint workdir user nameduser ghostuser)
# Repositories that all get the 3-layer image (OCI layout tag "layers").
BERTH_LAYERS_REPOS=(layers layers-a layers-b layers-c)
# Media types used in the generated manifests.
BERTH_MT_MANIFEST=application/vnd.oci.image.manifest.v1+json
BERTH_MT_INDEX=application/vnd.oci.image.index.v1+json

# berth_log MSG...: timestamped message on stderr.
berth_log() {
    printf '[berth %(%H:%M:%S)T] %s\n' -1 "$*" >&2
}

# berth_free_port: print a currently free TCP port on 127.0.0.1.
berth_free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
        return
    fi
    # Fallback: probe random high ports until one refuses connections.
    local port i
    for ((i = 0; i < 100; i++)); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    berth_log "ERROR: no free port found"
    return 1
}

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

# berth_containerd_stop DIR: stop the test environment's containerd (SIGTERM).
# Shims and the tasks in them keep running, as with a real containerd restart.
berth_containerd_stop() {
    local dir=${1:?usage: berth_containerd_stop DIR} pid
    pid=$(<"$dir/containerd.pid") || return 1
    kill -TERM "$pid" 2>/dev/null || true
    _berth_wait 20 "containerd to stop" _berth_gone "$pid"
}

# berth_containerd_start DIR: start it again with the same config and state.
berth_containerd_start() {
    local dir=${1:?usage: berth_containerd_start DIR}
    rm -f "$dir/containerd.pid"
    _berth_containerd_start "$dir" &&
        _berth_wait 20 containerd _berth_containerd_ready "$dir"
}

# berth_registry_stop DIR: stop the test environment's plain registry
# (SIGTERM) and wait until it is gone. Does nothing if it is not running.
berth_registry_stop() {
    local dir=${1:?usage: berth_registry_stop DIR} pid
    pid=$(_berth_owned_pid "$dir/reg-plain.pid" "$dir/reg-plain.yml")
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    _berth_wait 20 "the plain registry to stop" _berth_gone "$pid"
}

# berth_registry_start DIR: start it again with the same config, port and
# storage (log appended to the same file); wait until it answers.
berth_registry_start() {
    local dir=${1:?usage: berth_registry_start DIR} addr
    addr=$(_berth_registry_addr "$dir" reg-plain) || return 1
    if [[ -z $(_berth_owned_pid "$dir/reg-plain.pid" "$dir/reg-plain.yml") ]]; then
        rm -f "$dir/reg-plain.pid"
        _berth_registry_spawn "$dir" reg-plain || return 1
    fi
    _berth_wait 20 "plain registry on $addr" _berth_registry_ready \
        "$dir/reg-plain.pid" "http://$addr/v2/" 200
}

# ---------------------------------------------------------------------------
# Small internal helpers
# ---------------------------------------------------------------------------

# _berth_fail DIR MSG [LOG...]: show the tails of LOGs (relative to DIR),
# log MSG, return 1.
_berth_fail() {
    local dir=$1 msg=$2 log
    shift 2
    for log in "$@"; do
        if [[ -s $dir/$log ]]; then
            berth_log "---- last lines of $dir/$log ----"
            tail -n 30 "$dir/$log" >&2
        fi
    done
    berth_log "ERROR: $msg"
    return 1
}

# _berth_wait SECONDS DESCRIPTION COMMAND...: poll COMMAND (every 0.02 s for
# the first 20 tries, then every 0.1 s) until it succeeds; give up early if it
# returns 2 (the daemon died).
_berth_wait() {
    local timeout=$1 desc=$2 deadline rc tries=0
    shift 2
    deadline=$((SECONDS + timeout))
    while :; do
        rc=0
        "$@" >/dev/null 2>&1 || rc=$?
        ((rc == 0)) && return 0
        if ((rc == 2)); then
            berth_log "$desc: process exited"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            berth_log "timed out after ${timeout}s waiting for $desc"
            return 1
        fi
        if ((++tries <= 20)); then sleep 0.02; else sleep 0.1; fi
    done
}

# _berth_proc_state PID: print the state letter of PID (fails if gone).
_berth_proc_state() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    printf '%s\n' "${stat%% *}"
}

# _berth_pid_alive PIDFILE: the process in PIDFILE is alive (not a zombie).
# _berth_gone PID: succeeds once PID has exited (or is a zombie). Never returns
# 2, which _berth_wait reads as "the watched process died".
_berth_gone() {
    local state
    state=$(_berth_proc_state "$1") || return 0
    [[ $state == Z ]] && return 0
    return 1
}

_berth_pid_alive() {
    local pid state
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    state=$(_berth_proc_state "$pid") || return 1
    [[ $state != Z ]]
}

# _berth_cmdline_has PID STRING: some argument of PID contains STRING.
_berth_cmdline_has() {
    local arg
    [[ -r /proc/$1/cmdline ]] || return 1
    while IFS= read -r -d '' arg; do
        [[ $arg == *"$2"* ]] && return 0
    done 2>/dev/null <"/proc/$1/cmdline"
    return 1
}

# _berth_spawn PIDFILE LOGFILE COMMAND...: start a daemon in its own session,
# detached from the caller's terminal and pipes. The command is exec'd by the
# shell that writes PIDFILE, so PIDFILE holds the daemon's own pid.
_berth_spawn() {
    local pidfile=$1 log=$2
    shift 2
    # shellcheck disable=SC2016 # $$ and $@ expand in the child shell.
    setsid sh -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' "$pidfile" "$@" \
        </dev/null >>"$log" 2>&1 &
    disown "$!" # no "Killed" job reports from the caller's shell later
    _berth_wait 5 "pid file $pidfile" test -s "$pidfile"
}

# _berth_ctr_bin DIR: print the ctr matching DIR's containerd (its bin dir's,
# or the system's).
_berth_ctr_bin() {
    local bindir=
    [[ -s $1/containerd-bindir ]] && bindir=$(<"$1/containerd-bindir")
    echo "${bindir:+$bindir/}ctr"
}

# _berth_ctr DIR NAMESPACE ARGS...: ctr against DIR's containerd.
_berth_ctr() {
    local dir=$1 ns=$2
    shift 2
    "$(_berth_ctr_bin "$dir")" --address "$dir/containerd.sock" --namespace "$ns" "$@"
}

# _berth_wait_all PID...: wait for background jobs; fail if any failed.
_berth_wait_all() {
    local pid rc=0
    for pid in "$@"; do wait "$pid" || rc=1; done
    return "$rc"
}

# ---------------------------------------------------------------------------
# Environment pieces
# ---------------------------------------------------------------------------

# _berth_containerd_config DIR SERIES: print the containerd config for SERIES.
# Not needed by berth: CRI, the managed-plugin dir (/opt/containerd), the
# restart monitor and snapshotters other than overlayfs and native. 2.x reads
# config version 3 and names some of these plugins differently; an unknown id
# in disabled_plugins is ignored without a word, so each series gets its own.
_berth_containerd_config() {
    local dir=$1 series=$2 version=2 ids
    case $series in
    1.6 | 1.7)
        ids=(
            io.containerd.grpc.v1.cri
            io.containerd.internal.v1.opt
            io.containerd.internal.v1.restart
            io.containerd.snapshotter.v1.aufs
            io.containerd.snapshotter.v1.btrfs
            io.containerd.snapshotter.v1.devmapper
            io.containerd.snapshotter.v1.zfs
        )
        [[ $series == 1.7 ]] && ids+=(io.containerd.snapshotter.v1.blockfile)
        ;;
    2.*)
        version=3
        ids=(
            io.containerd.grpc.v1.cri
            io.containerd.cri.v1.images
            io.containerd.cri.v1.runtime
            # CRI's pod sandbox controller (needs cri.v1.images loaded first),
            # and with it the sandbox-controllers service, which fails to load
            # without it. berth uses no sandbox API.
            io.containerd.podsandbox.controller.v1.podsandbox
            io.containerd.grpc.v1.sandbox-controllers
            io.containerd.internal.v1.opt
            io.containerd.monitor.container.v1.restart
            io.containerd.snapshotter.v1.blockfile
            io.containerd.snapshotter.v1.btrfs
            io.containerd.snapshotter.v1.devmapper
            io.containerd.snapshotter.v1.erofs
            io.containerd.differ.v1.erofs
        )
        ;;
    *)
        berth_log "ERROR: no containerd config for version $series"
        return 1
        ;;
    esac
    printf '%s\n' \
        "# Private containerd $series for berth tests (generated by scripts/lib.sh)." \
        "version = $version" \
        "root = \"$dir/containerd/root\"" \
        "state = \"$dir/containerd/state\"" \
        "disabled_plugins = ["
    printf '  "%s",\n' "${ids[@]}"
    cat <<EOF
]

[grpc]
  address = "$dir/containerd.sock"

[ttrpc]
  address = "$dir/containerd.sock.ttrpc"

[debug]
  level = "info"
EOF
}

# _berth_containerd_start DIR: write DIR/containerd.toml and start containerd,
# the version recorded in DIR/containerd-series (default 1.6) with the
# binaries in DIR/containerd-bindir (empty: the system's).
_berth_containerd_start() {
    local dir=$1 series=1.6 bindir=
    [[ -s $dir/containerd-series ]] && series=$(<"$dir/containerd-series")
    [[ -s $dir/containerd-bindir ]] && bindir=$(<"$dir/containerd-bindir")
    mkdir -p "$dir/containerd/root" "$dir/containerd/state" "$dir/run" "$dir/fifo" ||
        return 1
    _berth_containerd_config "$dir" "$series" >"$dir/containerd.toml" || return 1
    # Own mount namespace (slave: host mounts still propagate in, ours do not
    # leak out) with DIR/run over /run. `mount -n` keeps libmount from
    # creating /run/mount on the host. A private containerd's bin dir goes
    # first on PATH: containerd finds its shim (containerd-shim-runc-v2) there;
    # the shim finds the system's runc further on.
    # shellcheck disable=SC2016 # expanded by the inner shell.
    _berth_spawn "$dir/containerd.pid" "$dir/containerd.log" \
        unshare --mount --propagation slave \
        sh -c 'mount -n --bind "$0" /run && { [ -z "$2" ] || PATH="$2:$PATH"; } &&
            exec containerd --config "$1"' \
        "$dir/run" "$dir/containerd.toml" "$bindir"
}

# _berth_containerd_ready DIR: containerd answers (2 if it died).
_berth_containerd_ready() {
    _berth_pid_alive "$1/containerd.pid" || return 2
    "$(_berth_ctr_bin "$1")" --address "$1/containerd.sock" version
}

# _berth_registry_start DIR NAME PORT [EXTRA-YAML]: start a registry with
# config DIR/NAME.yml, storage DIR/NAME, log DIR/NAME.log, pid DIR/NAME.pid.
# EXTRA-YAML is appended after the `http:` section's keys.
_berth_registry_start() {
    local dir=$1 name=$2 port=$3 extra=${4:-} secret
    mkdir -p "$dir/$name" || return 1
    secret=$(openssl rand -hex 16) || return 1
    cat >"$dir/$name.yml" <<EOF || return 1
# Test registry for berth (generated by scripts/lib.sh).
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $dir/$name
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  secret: $secret
$extra
EOF
    _berth_registry_spawn "$dir" "$name"
}

# _berth_registry_spawn DIR NAME: start the registry configured in DIR/NAME.yml.
# Its log (the access log included) is appended to DIR/NAME.log.
_berth_registry_spawn() {
    _berth_spawn "$1/$2.pid" "$1/$2.log" docker-registry serve "$1/$2.yml"
}

# _berth_registry_addr DIR NAME: print the HOST:PORT from DIR/NAME.yml.
_berth_registry_addr() {
    local line
    while IFS= read -r line; do
        if [[ $line =~ ^[[:space:]]+addr:[[:space:]]*([^[:space:]]+) ]]; then
            echo "${BASH_REMATCH[1]}"
            return 0
        fi
    done <"$1/$2.yml"
    berth_log "ERROR: no addr in $1/$2.yml"
    return 1
}

# _berth_registry_ready PIDFILE URL OKCODES [CURL-ARGS...]: the registry
# answers URL with one of the space-separated HTTP codes (2 if it died).
_berth_registry_ready() {
    local pidfile=$1 url=$2 ok=$3 code
    shift 3
    _berth_pid_alive "$pidfile" || return 2
    code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 2 "$@" "$url") || return 1
    [[ " $ok " == *" $code "* ]]
}

# _berth_tls_material DIR: in DIR/tls a CA (ca.pem), a server cert for
# 127.0.0.1/localhost (server.pem, server-key.pem), htpasswd, the password
# file (0600) and certs.d/ca.crt (a cert dir in the skopeo/containers style).
_berth_tls_material() {
    local tls=$1/tls serial
    mkdir -p "$tls/certs.d" || return 1
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$tls/ca-key.pem" -out "$tls/ca.pem" -days 3650 \
        -subj "/CN=berth test CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" || return 1
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$tls/server-key.pem" -out "$tls/server.csr" \
        -subj "/CN=localhost" || return 1
    printf '%s\n' \
        'basicConstraints = critical,CA:FALSE' \
        'keyUsage = critical,digitalSignature' \
        'extendedKeyUsage = serverAuth' \
        'subjectAltName = IP:127.0.0.1,DNS:localhost' \
        'subjectKeyIdentifier = hash' \
        'authorityKeyIdentifier = keyid' >"$tls/server.ext" || return 1
    serial=$(openssl rand -hex 8) || return 1
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca-key.pem" \
        -set_serial "0x$serial" -days 825 \
        -extfile "$tls/server.ext" -out "$tls/server.pem" || return 1
    cp "$tls/ca.pem" "$tls/certs.d/ca.crt" || return 1
    htpasswd -Bbc "$tls/htpasswd" "$BERTH_REGISTRY_USER" "$BERTH_REGISTRY_PASSWORD" ||
        return 1
    # The password, without a trailing newline, readable by root only.
    (umask 077 && printf '%s' "$BERTH_REGISTRY_PASSWORD" >"$tls/password")
}

# _berth_build_images DIR: busybox-based test images in the OCI layout DIR/oci.
# Only the busybox tag has a layer; the other tags are config-only variants
# of it, so the layer is built (and later pulled) once.
_berth_build_images() {
    local dir=$1 oci=$1/oci bundle=$1/build/bundle
    local rootfs=$bundle/rootfs applet
    umoci init --layout "$oci" || return 1
    umoci new --image "$oci:busybox" || return 1
    umoci unpack --image "$oci:busybox" "$bundle" || return 1

    mkdir -p "$rootfs"/{bin,etc,tmp,app,root,proc,sys,dev,home/batchuser} || return 1
    cp /bin/busybox "$rootfs/bin/busybox" || return 1
    while IFS= read -r applet; do
        [[ -n $applet && $applet != */* ]] || continue
        [[ -e $rootfs/bin/$applet || -L $rootfs/bin/$applet ]] && continue
        ln -s busybox "$rootfs/bin/$applet" || return 1
    done < <("$rootfs/bin/busybox" --list)
    [[ -L $rootfs/bin/sh ]] || return 1
    printf '%s\n' \
        'root:x:0:0:root:/root:/bin/sh' \
        'batchuser:x:1000:1000:batchuser:/home/batchuser:/bin/sh' \
        'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' \
        >"$rootfs/etc/passwd" || return 1
    printf '%s\n' \
        'root:x:0:' \
        'batchgroup:x:1000:' \
        'hpc:x:2000:batchuser' \
        'nogroup:x:65534:' \
        >"$rootfs/etc/group" || return 1
    chmod 1777 "$rootfs/tmp" || return 1
    chmod 0700 "$rootfs/root" || return 1
    chown 1000:1000 "$rootfs/home/batchuser" || return 1

    umoci repack --image "$oci:busybox" "$bundle" || return 1
    umoci config --image "$oci:busybox" --no-history \
        --architecture amd64 --os linux \
        --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --config.cmd sh || return 1
    umoci config --image "$oci:busybox" --tag entrypoint --no-history \
        --config.entrypoint /bin/echo --config.entrypoint from-entrypoint \
        --config.cmd default-cmd || return 1
    umoci config --image "$oci:busybox" --tag workdir --no-history \
        --config.workingdir /app --config.env IMAGE_VAR=from-image \
        --config.cmd /bin/sh --config.cmd=-c --config.cmd pwd || return 1
    umoci config --image "$oci:busybox" --tag user --no-history \
        --config.user 1000:1000 --config.cmd id || return 1
    umoci config --image "$oci:busybox" --tag nameduser --no-history \
        --config.user batchuser --config.cmd id || return 1
    umoci config --image "$oci:busybox" --tag ghostuser --no-history \
        --config.user ghost --config.cmd id || return 1
    rm -rf "$dir/build"
}

# _berth_tar_layer STAGE NAME SRC PATH...: the PATHs under SRC as a gzipped
# layer blob STAGE/blobs/<hex>, described in STAGE/NAME.json (descriptor
# plus diff_id and created_by). Owner root, mtime 0.
_berth_tar_layer() {
    local stage=$1 name=$2 src=$3 diffid hex size
    shift 3
    mkdir -p "$stage/blobs" || return 1
    tar -C "$src" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
        -cf "$stage/$name.tar" "$@" || return 1
    diffid=$(sha256sum <"$stage/$name.tar") || return 1
    gzip -n "$stage/$name.tar" || return 1
    hex=$(sha256sum <"$stage/$name.tar.gz") || return 1
    hex=${hex%% *}
    size=$(stat -c %s "$stage/$name.tar.gz") || return 1
    mv "$stage/$name.tar.gz" "$stage/blobs/$hex" || return 1
    jq -n --arg d "sha256:$hex" --argjson s "$size" --arg id "sha256:${diffid%% *}" \
        --arg by "berth test layer $name: $*" \
        '{mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $d,
          size: $s, diff_id: $id, created_by: $by}' >"$stage/$name.json"
}

# _berth_build_layers DIR: the layers that the extra test images add on top
# of busybox, staged in DIR/build-layers (independent of the OCI layout, so
# this runs while umoci builds busybox): arch-<arch> (/etc/berth-arch holding
# <arch>, no newline) and data-one, data-two (/data/one, /data/two: 2 MiB of
# random bytes each).
_berth_build_layers() {
    local stage=$1/build-layers arch n
    for arch in amd64 arm64 s390x; do
        mkdir -p "$stage/arch-$arch/etc" || return 1
        chmod 0755 "$stage/arch-$arch/etc" || return 1
        printf '%s' "$arch" >"$stage/arch-$arch/etc/berth-arch" || return 1
        chmod 0644 "$stage/arch-$arch/etc/berth-arch" || return 1
        _berth_tar_layer "$stage" "arch-$arch" "$stage/arch-$arch" etc || return 1
    done
    for n in one two; do
        mkdir -p "$stage/data-$n/data" || return 1
        chmod 0755 "$stage/data-$n/data" || return 1
        head -c 2097152 /dev/urandom >"$stage/data-$n/data/$n" || return 1
        chmod 0644 "$stage/data-$n/data/$n" || return 1
        _berth_tar_layer "$stage" "data-$n" "$stage/data-$n" data || return 1
    done
}

# _berth_put_blob OCI FILE: move FILE into the blob store of the OCI layout
# OCI; print its digest and size.
_berth_put_blob() {
    local hex size
    hex=$(sha256sum <"$2") || return 1
    hex=${hex%% *}
    size=$(stat -c %s "$2") || return 1
    mv "$2" "$1/blobs/sha256/$hex" || return 1
    echo "sha256:$hex $size"
}

# _berth_derive_image DIR OUT ARCH VARIANT LAYER...: add an image to DIR/oci:
# the busybox image plus the staged layers LAYER... (names in
# DIR/build-layers), with config architecture ARCH and variant VARIANT (may
# be empty). Writes its manifest descriptor, with a linux/ARCH[/VARIANT]
# platform, as JSON to DIR/build-layers/OUT.desc.
_berth_derive_image() {
    local dir=$1 out=$2 arch=$3 variant=$4 oci=$1/oci stage=$1/build-layers
    local base config layers files=() l cdesc mdesc
    shift 4
    for l in "$@"; do files+=("$stage/$l.json"); done
    layers=$(jq -cs . "${files[@]}") || return 1
    base=$(<"$stage/busybox.manifest") || return 1
    config=$(<"$stage/busybox.config") || return 1
    jq -c --arg arch "$arch" --arg variant "$variant" --argjson layers "$layers" '
        .architecture = $arch
        | if $variant == "" then del(.variant) else .variant = $variant end
        | .created as $c
        | .rootfs.diff_ids += [$layers[].diff_id]
        | .history += [$layers[] | {created: $c, created_by}]' \
        "$oci/blobs/sha256/$config" >"$stage/$out.config" || return 1
    cdesc=$(_berth_put_blob "$oci" "$stage/$out.config") || return 1
    jq -c --arg mt "$BERTH_MT_MANIFEST" --arg cd "${cdesc% *}" --argjson cs "${cdesc#* }" \
        --argjson layers "$layers" '
        {schemaVersion, mediaType: $mt, config: (.config + {digest: $cd, size: $cs}),
         layers: (.layers + [$layers[] | {mediaType, digest, size}])}' \
        "$oci/blobs/sha256/$base" >"$stage/$out.manifest" || return 1
    mdesc=$(_berth_put_blob "$oci" "$stage/$out.manifest") || return 1
    jq -cn --arg mt "$BERTH_MT_MANIFEST" --arg d "${mdesc% *}" --argjson s "${mdesc#* }" \
        --arg arch "$arch" --arg variant "$variant" '
        {mediaType: $mt, digest: $d, size: $s,
         platform: ({architecture: $arch, os: "linux"}
                    + if $variant == "" then {} else {variant: $variant} end)}' \
        >"$stage/$out.desc"
}

# _berth_build_extra_images DIR: after _berth_build_images and
# _berth_build_layers, add to DIR/oci the tags multiarch (index: linux/amd64,
# linux/arm64/v8), armonly (index: linux/arm64/v8, linux/s390x) and layers
# (busybox + data-one + data-two).
_berth_build_extra_images() {
    local dir=$1 oci=$1/oci stage=$1/build-layers base multiarch armonly pids=()
    mv "$stage/blobs/"* "$oci/blobs/sha256/" || return 1
    base=$(jq -r '.manifests[] | select(.annotations."org.opencontainers.image.ref.name" == "busybox")
        | .digest | ltrimstr("sha256:")' "$oci/index.json") || return 1
    echo "$base" >"$stage/busybox.manifest" || return 1
    jq -r '.config.digest | ltrimstr("sha256:")' "$oci/blobs/sha256/$base" \
        >"$stage/busybox.config" || return 1
    _berth_derive_image "$dir" amd64 amd64 "" arch-amd64 &
    pids+=("$!")
    _berth_derive_image "$dir" arm64 arm64 v8 arch-arm64 &
    pids+=("$!")
    _berth_derive_image "$dir" s390x s390x "" arch-s390x &
    pids+=("$!")
    _berth_derive_image "$dir" layers amd64 "" data-one data-two &
    pids+=("$!")
    _berth_wait_all "${pids[@]}" || return 1
    jq -cn --arg mt "$BERTH_MT_INDEX" --slurpfile a "$stage/amd64.desc" \
        --slurpfile b "$stage/arm64.desc" \
        '{schemaVersion: 2, mediaType: $mt, manifests: ($a + $b)}' >"$stage/multiarch" || return 1
    multiarch=$(_berth_put_blob "$oci" "$stage/multiarch") || return 1
    jq -cn --arg mt "$BERTH_MT_INDEX" --slurpfile a "$stage/arm64.desc" \
        --slurpfile b "$stage/s390x.desc" \
        '{schemaVersion: 2, mediaType: $mt, manifests: ($a + $b)}' >"$stage/armonly" || return 1
    armonly=$(_berth_put_blob "$oci" "$stage/armonly") || return 1
    # index.json is replaced atomically: skopeo may be reading it already.
    jq --arg mt "$BERTH_MT_INDEX" --arg md "${multiarch% *}" --argjson msz "${multiarch#* }" \
        --arg ad "${armonly% *}" --argjson asz "${armonly#* }" \
        --slurpfile l "$stage/layers.desc" '
        def tag($name): . + {annotations: {"org.opencontainers.image.ref.name": $name}};
        .manifests += [
            ({mediaType: $mt, digest: $md, size: $msz} | tag("multiarch")),
            ({mediaType: $mt, digest: $ad, size: $asz} | tag("armonly")),
            ($l[0] | del(.platform) | tag("layers"))
        ]' "$oci/index.json" >"$stage/index.json" || return 1
    mv "$stage/index.json" "$oci/index.json" || return 1
    rm -rf "$stage"
}

# _berth_manifest_digest URL [CURL-ARGS...]: print the Docker-Content-Digest
# the registry sends for the manifest URL (HEAD, OCI Accept headers).
_berth_manifest_digest() {
    local url=$1 line digest=
    shift
    while IFS= read -r line; do
        line=${line%$'\r'}
        if [[ ${line,,} == docker-content-digest:* ]]; then
            digest=${line#*:}
            digest=${digest//[[:space:]]/}
        fi
    done < <(curl -sSfI --max-time 5 -H "Accept: $BERTH_MT_MANIFEST" \
        -H "Accept: $BERTH_MT_INDEX" "$@" "$url")
    [[ $digest =~ ^sha256:[0-9a-f]{64}$ ]] || {
        berth_log "ERROR: no manifest digest for $url (got '$digest')"
        return 1
    }
    echo "$digest"
}

# _berth_push DIR TAG DEST-REF [SKOPEO-ARGS...]: copy TAG of DIR/oci to a
# registry, keeping the OCI manifest format.
_berth_push() {
    local dir=$1 tag=$2 ref=$3
    shift 3
    skopeo --policy "$dir/policy.json" copy --quiet --format oci "$@" \
        "oci:$dir/oci:$tag" "docker://$ref"
}

# _berth_diagnose DIR: information on why containerd could not unpack or run.
_berth_diagnose() {
    local dir=$1
    berth_log "diagnostics: $dir is on $(stat -f -c %T "$dir"); kernel $(uname -r)"
    "$(_berth_ctr_bin "$dir")" --address "$dir/containerd.sock" plugins ls 2>&1 |
        grep -E 'TYPE|overlayfs|runtime|tasks' >&2 || true
    grep -iE 'level=(error|warning)' "$dir/containerd.log" 2>/dev/null | tail -n 20 >&2 || true
}

# _berth_smoke DIR REF: pull REF into the smoke namespace, run /bin/echo ok
# in it, then empty and remove the namespace (the images rm --sync makes the
# garbage collector remove the content and snapshots right away).
_berth_smoke() {
    local dir=$1 ref=$2 ns=$BERTH_SMOKE_NAMESPACE id out
    _berth_ctr "$dir" "$ns" images pull --plain-http "$ref" >>"$dir/pull.log" 2>&1 || {
        _berth_diagnose "$dir"
        _berth_fail "$dir" "ctr images pull failed" pull.log
        return 1
    }
    id="berth-smoke-$$-$RANDOM"
    out=$(timeout 60 "$(_berth_ctr_bin "$dir")" --address "$dir/containerd.sock" --namespace "$ns" \
        run --rm --fifo-dir "$dir/fifo" "$ref" "$id" /bin/echo ok 2>&1) || true
    if [[ $out != ok ]]; then
        berth_log "ctr run printed: $out"
        _berth_diagnose "$dir"
        _berth_fail "$dir" "smoke container did not print ok"
        return 1
    fi
    {
        _berth_ctr "$dir" "$ns" images rm --sync "$ref" &&
            _berth_ctr "$dir" "$ns" namespaces rm "$ns"
    } >>"$dir/pull.log" 2>&1 ||
        { _berth_fail "$dir" "emptying the smoke check's namespace failed" pull.log; return 1; }
}

# ---------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------

# berth_env_up DIR [--containerd SERIES]: bring up the test environment under
# DIR and write DIR/env (export lines). DIR: short and fresh, like
# /tmp/berth-XXXX, because unix socket paths are limited to 107 bytes. SERIES:
# 1.6 (the system's containerd, the default; or $BERTH_CONTAINERD), 1.7 or 2.1
# (fetched by berth_containerd_fetch). On failure, logs are in DIR and
# berth_env_down DIR cleans up.
berth_env_up() {
    local dir=${1:?usage: berth_env_up DIR [--containerd SERIES]}
    local series=${BERTH_CONTAINERD:-${BERTH_CONTAINERD_SERIES[0]}} bindir versions release full
    local port tls_port tag ref repo start=${EPOCHREALTIME//[!0-9]/} ds pids=() lpid digest
    shift
    while (($#)); do
        case $1 in
        --containerd) series=${2:?--containerd needs a version}; shift 2 ;;
        --containerd=*) series=${1#*=}; shift ;;
        *) berth_log "ERROR: berth_env_up: unknown argument $1"; return 1 ;;
        esac
    done
    berth_containerd_series_ok "$series" || return 1
    bindir=$(berth_containerd_bindir "$series") || return 1
    versions=$(berth_containerd_version_of "$bindir") || return 1
    IFS=$'\t' read -r release full <<<"$versions"
    mkdir -p "$dir" || return 1
    dir=$(cd "$dir" && pwd -P) || return 1
    if ((${#dir} > 60)); then
        berth_log "ERROR: $dir is too long for unix socket paths; use e.g. /tmp/berth-XXXX"
        return 1
    fi
    # Searchable by every uid, as /run/containerd is: a task in a user namespace
    # (mapped to a non-root uid) must reach its bundle's rootfs below DIR.
    chmod 0711 "$dir" || return 1
    : >"$dir/.berth-testenv" || return 1 # marker: berth_env_down may delete DIR
    # Read by _berth_containerd_start (also when a test restarts containerd).
    echo "$series" >"$dir/containerd-series" || return 1
    echo "$bindir" >"$dir/containerd-bindir" || return 1
    echo '{"default": [{"type": "insecureAcceptAnything"}]}' >"$dir/policy.json" || return 1

    # Start the daemons, then build the images while they come up.
    berth_log "starting containerd $full and registries in $dir"
    _berth_tls_material "$dir" >"$dir/tls.log" 2>&1 ||
        { _berth_fail "$dir" "creating TLS material failed" tls.log; return 1; }
    # A small file system for disk-full tests, mounted before containerd starts
    # so that its mount namespace has it too.
    { mkdir -p "$dir/smallfs" && mount -n -t tmpfs -o size=16m,mode=755 berth-smallfs "$dir/smallfs"; } ||
        { _berth_fail "$dir" "mounting the small test file system failed"; return 1; }
    _berth_containerd_start "$dir" ||
        { _berth_fail "$dir" "starting containerd failed" containerd.log; return 1; }
    port=$(berth_free_port) || return 1
    _berth_registry_start "$dir" reg-plain "$port" ||
        { _berth_fail "$dir" "starting the plain registry failed" reg-plain.log; return 1; }
    tls_port=$(berth_free_port) || return 1
    while [[ $tls_port == "$port" ]]; do tls_port=$(berth_free_port) || return 1; done
    _berth_registry_start "$dir" reg-tls "$tls_port" "  tls:
    certificate: $dir/tls/server.pem
    key: $dir/tls/server-key.pem
auth:
  htpasswd:
    realm: berth-test
    path: $dir/tls/htpasswd" ||
        { _berth_fail "$dir" "starting the TLS registry failed" reg-tls.log; return 1; }

    # Pipeline: the extra layers build while umoci builds busybox; the
    # images derived from busybox are assembled while busybox and its
    # variants are pushed; the smoke check runs while the derived images push.
    berth_log "building test images in $dir/oci"
    _berth_build_layers "$dir" >"$dir/build-layers.log" 2>&1 &
    lpid=$!
    _berth_build_images "$dir" >"$dir/build.log" 2>&1 || {
        wait "$lpid" || true
        _berth_fail "$dir" "building the test images failed" build.log
        return 1
    }

    _berth_wait 20 containerd _berth_containerd_ready "$dir" ||
        { wait "$lpid" || true; _berth_fail "$dir" "containerd did not come up" containerd.log; return 1; }
    _berth_wait 20 "plain registry on port $port" _berth_registry_ready \
        "$dir/reg-plain.pid" "http://127.0.0.1:$port/v2/" 200 ||
        { wait "$lpid" || true; _berth_fail "$dir" "plain registry did not come up" reg-plain.log; return 1; }
    _berth_wait 20 "TLS registry on port $tls_port" _berth_registry_ready \
        "$dir/reg-tls.pid" "https://127.0.0.1:$tls_port/v2/" "200 401" \
        --cacert "$dir/tls/ca.pem" ||
        { wait "$lpid" || true; _berth_fail "$dir" "TLS registry did not come up" reg-tls.log; return 1; }

    berth_log "pushing test images to 127.0.0.1:$port and 127.0.0.1:$tls_port"
    for tag in "${BERTH_IMAGE_TAGS[@]}"; do
        _berth_push "$dir" "$tag" "127.0.0.1:$port/berth-test/$tag:latest" \
            --dest-tls-verify=false >>"$dir/push.log" 2>&1 &
        pids+=("$!")
    done
    _berth_push "$dir" busybox "127.0.0.1:$tls_port/berth-test/busybox:latest" \
        --dest-cert-dir "$dir/tls/certs.d" \
        --dest-creds "$BERTH_REGISTRY_USER:$BERTH_REGISTRY_PASSWORD" \
        >>"$dir/push.log" 2>&1 &
    pids+=("$!")

    wait "$lpid" || {
        _berth_wait_all "${pids[@]}" || true
        _berth_fail "$dir" "building the test image layers failed" build-layers.log
        return 1
    }
    _berth_build_extra_images "$dir" >>"$dir/build.log" 2>&1 || {
        _berth_wait_all "${pids[@]}" || true
        _berth_fail "$dir" "building the extra test images failed" build.log
        return 1
    }
    _berth_wait_all "${pids[@]}" ||
        { _berth_fail "$dir" "pushing the test images failed" push.log; return 1; }
    pids=()
    # Image indexes: --all pushes every platform's image, then the index.
    for tag in multiarch armonly; do
        _berth_push "$dir" "$tag" "127.0.0.1:$port/berth-test/$tag:latest" \
            --dest-tls-verify=false --all >>"$dir/push.log" 2>&1 &
        pids+=("$!")
    done
    for repo in "${BERTH_LAYERS_REPOS[@]}"; do
        _berth_push "$dir" layers "127.0.0.1:$port/berth-test/$repo:latest" \
            --dest-tls-verify=false >>"$dir/push.log" 2>&1 &
        pids+=("$!")
    done

    ref="127.0.0.1:$port/berth-test"
    digest=$(_berth_manifest_digest "http://127.0.0.1:$port/v2/berth-test/busybox/manifests/latest") || {
        _berth_wait_all "${pids[@]}" || true
        _berth_fail "$dir" "reading the busybox manifest digest failed" reg-plain.log
        return 1
    }

    # Smoke check: containerd + shim + runc + overlayfs can run a container.
    # In its own namespace, emptied afterwards (the garbage collector then
    # removes the content and snapshots), so that the tests start with an
    # empty containerd: containerd shares blobs across namespaces, so content
    # left here would spare the agent pulling busybox's layer.
    berth_log "smoke check: ctr run (namespace $BERTH_SMOKE_NAMESPACE)"
    _berth_smoke "$dir" "$ref/busybox:latest" || {
        _berth_wait_all "${pids[@]}" || true
        return 1
    }
    _berth_wait_all "${pids[@]}" ||
        { _berth_fail "$dir" "pushing the test images failed" push.log; return 1; }

    printf 'export %s=%q\n' \
        BERTH_TEST_DIR "$dir" \
        BERTH_TEST_CONTAINERD_SOCKET "$dir/containerd.sock" \
        BERTH_TEST_CONTAINERD_PID "$(<"$dir/containerd.pid")" \
        BERTH_TEST_NAMESPACE "$BERTH_NAMESPACE" \
        BERTH_TEST_FIFO_DIR "$dir/fifo" \
        BERTH_TEST_REGISTRY "127.0.0.1:$port" \
        BERTH_TEST_TLS_REGISTRY "127.0.0.1:$tls_port" \
        BERTH_TEST_TLS_CA "$dir/tls/ca.pem" \
        BERTH_TEST_REGISTRY_USER "$BERTH_REGISTRY_USER" \
        BERTH_TEST_REGISTRY_PASSWORD_FILE "$dir/tls/password" \
        BERTH_TEST_IMAGE_BUSYBOX "$ref/busybox:latest" \
        BERTH_TEST_IMAGE_ENTRYPOINT "$ref/entrypoint:latest" \
        BERTH_TEST_IMAGE_WORKDIR "$ref/workdir:latest" \
        BERTH_TEST_IMAGE_USER "$ref/user:latest" \
        BERTH_TEST_IMAGE_NAMEDUSER "$ref/nameduser:latest" \
        BERTH_TEST_IMAGE_GHOSTUSER "$ref/ghostuser:latest" \
        BERTH_TEST_IMAGE_BUSYBOX_DIGEST "$ref/busybox@$digest" \
        BERTH_TEST_IMAGE_MULTIARCH "$ref/multiarch:latest" \
        BERTH_TEST_IMAGE_ARMONLY "$ref/armonly:latest" \
        BERTH_TEST_IMAGE_LAYERS "$ref/layers:latest" \
        BERTH_TEST_IMAGE_LAYERS_A "$ref/layers-a:latest" \
        BERTH_TEST_IMAGE_LAYERS_B "$ref/layers-b:latest" \
        BERTH_TEST_IMAGE_LAYERS_C "$ref/layers-c:latest" \
        BERTH_TEST_TLS_IMAGE_BUSYBOX "127.0.0.1:$tls_port/berth-test/busybox:latest" \
        BERTH_TEST_REGISTRY_STORAGE "$dir/reg-plain" \
        BERTH_TEST_REGISTRY_LOG "$dir/reg-plain.log" \
        BERTH_TEST_TLS_REGISTRY_LOG "$dir/reg-tls.log" \
        BERTH_TEST_OCI_LAYOUT "$dir/oci" \
        BERTH_TEST_SMALL_FS "$dir/smallfs" \
        BERTH_TEST_LIB "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/lib.sh" \
        BERTH_TEST_CONTAINERD_VERSION "$series" \
        BERTH_TEST_CONTAINERD_RELEASE "$release" \
        BERTH_TEST_CONTAINERD_FULL_VERSION "$full" \
        BERTH_TEST_CONTAINERD_BIN_DIR "$bindir" \
        >"$dir/env" || return 1
    # The tests' own `ctr` calls use the ctr of the same version.
    if [[ -n $bindir ]]; then
        # shellcheck disable=SC2016 # $PATH expands when the env file is sourced.
        printf 'export PATH=%q:"$PATH"\n' "$bindir" >>"$dir/env" || return 1
    fi
    ds=$(((${EPOCHREALTIME//[!0-9]/} - start) / 100000)) # tenths of a second
    berth_log "test environment up in $((ds / 10)).$((ds % 10))s: $dir/env"
}

# _berth_descendants PID...: print all descendants of the given pids.
_berth_descendants() {
    local -A children=()
    local pid ppid cur queue=("$@")
    while read -r pid ppid; do
        children[$ppid]+=" $pid"
    done < <(ps -e -o pid=,ppid=)
    while ((${#queue[@]})); do
        cur=${queue[0]}
        queue=("${queue[@]:1}")
        for pid in ${children[$cur]:-}; do
            echo "$pid"
            queue+=("$pid")
        done
    done
}

# _berth_shims DIR: pids of containerd shims of DIR's containerd: their
# -address is DIR/containerd.sock, or their cwd (the bundle) is inside DIR.
_berth_shims() {
    local dir=$1 p pid arg0 cwd
    for p in /proc/[0-9]*; do
        pid=${p#/proc/}
        arg0=
        { IFS= read -r -d '' arg0 || true; } 2>/dev/null <"$p/cmdline" || continue
        [[ ${arg0##*/} == containerd-shim* ]] || continue
        cwd=$(readlink "$p/cwd" 2>/dev/null) || cwd=
        if _berth_cmdline_has "$pid" "$dir/containerd.sock" || [[ $cwd == "$dir"/* ]]; then
            echo "$pid"
        fi
    done
}

# _berth_owned_pid PIDFILE NEEDLE: print the pid in PIDFILE if that process
# still runs and its command line mentions NEEDLE (guards against pid reuse).
_berth_owned_pid() {
    local pid
    [[ -s $1 ]] || return 0
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    if _berth_cmdline_has "$pid" "$2"; then echo "$pid"; fi
    return 0
}

# _berth_kill_wait PID...: SIGKILL the pids, wait up to 10 s until they are
# gone or zombies.
_berth_kill_wait() {
    local pid state left deadline=$((SECONDS + 10))
    (($#)) || return 0
    kill -KILL "$@" 2>/dev/null || true
    while :; do
        left=0
        for pid in "$@"; do
            state=$(_berth_proc_state "$pid") || continue
            [[ $state == Z ]] || left=1
        done
        ((left == 0)) && return 0
        if ((SECONDS >= deadline)); then
            berth_log "warning: some processes did not exit: $*"
            return 0
        fi
        sleep 0.05
    done
}

# berth_env_down DIR: stop and remove everything berth_env_up made in DIR.
# Idempotent; safe in a trap whatever state DIR is in. Only touches
# processes that belong to DIR.
berth_env_down() {
    local dir=${1:?usage: berth_env_down DIR}
    [[ $dir == /* ]] || dir=$PWD/$dir
    while [[ $dir == */ && $dir != / ]]; do dir=${dir%/}; done
    if [[ -z $dir || $dir == / ]]; then
        berth_log "ERROR: refusing to tear down '/'"
        return 1
    fi
    if [[ -d $dir ]]; then dir=$(cd "$dir" && pwd -P) || return 1; fi

    # 1. Find containerd, its shims, everything below the shims (containers
    # and exec'd processes) and the registries.
    local daemons=() procs=() pid cg name
    local -A cgroups=()
    mapfile -t daemons < <(
        _berth_owned_pid "$dir/containerd.pid" "$dir/containerd.toml"
        _berth_shims "$dir"
    )
    if ((${#daemons[@]})); then
        mapfile -t procs < <(_berth_descendants "${daemons[@]}")
        # Remember the containers' cgroups to remove them afterwards...
        for pid in "${procs[@]}"; do
            while IFS=: read -r _ _ cg; do
                [[ -n $cg && $cg != / ]] && cgroups[$cg]=1
            done 2>/dev/null <"/proc/$pid/cgroup" || true
        done
        # ...but not those of containerd and the shims (the caller's).
        for pid in "${daemons[@]}"; do
            while IFS=: read -r _ _ cg; do
                [[ -n $cg ]] && unset "cgroups[$cg]"
            done 2>/dev/null <"/proc/$pid/cgroup" || true
        done
    fi
    for name in reg-plain reg-tls; do
        pid=$(_berth_owned_pid "$dir/$name.pid" "$dir/$name.yml")
        [[ -n $pid ]] && daemons+=("$pid")
    done

    # 2. SIGKILL (nothing in DIR needs a clean shutdown): first the container
    # processes, while their shims are alive to reap them, then the daemons.
    _berth_kill_wait "${procs[@]}"
    _berth_kill_wait "${daemons[@]}"

    # 3. Remove the containers' cgroups and their empty parents, in every
    # hierarchy (rmdir only succeeds on empty cgroups).
    local mnt fstype rel
    for cg in "${!cgroups[@]}"; do
        while read -r _ mnt fstype _; do
            [[ $fstype == cgroup || $fstype == cgroup2 ]] || continue
            rel=$cg
            while [[ -n $rel && $rel != / && -d $mnt$rel ]] && rmdir "$mnt$rel" 2>/dev/null; do
                rel=${rel%/*}
            done
        done </proc/self/mounts
    done

    # 4. Unmount anything at or under DIR in our namespace, deepest first.
    local mounts=() m
    while read -r _ mnt _; do
        # Undo the kernel's \ooo escapes (space is \040, backslash \134).
        mnt=$(printf '%b' "${mnt//\\/\\0}")
        [[ $mnt == "$dir" || $mnt == "$dir"/* ]] && mounts+=("$mnt")
    done </proc/self/mounts
    if ((${#mounts[@]})); then
        while IFS= read -r m; do
            umount -n "$m" 2>/dev/null || umount -n -l "$m" 2>/dev/null ||
                berth_log "warning: could not unmount $m"
        done < <(for m in "${mounts[@]}"; do printf '%s\t%s\n' "${#m}" "$m"; done |
            sort -rn | cut -f2-)
    fi

    # 5. Remove DIR, only if berth_env_up made it (marker) or it is empty.
    # The marker goes last, so that a failed attempt can be retried.
    [[ -d $dir ]] || return 0
    if [[ -e $dir/.berth-testenv ]]; then
        find "$dir" -mindepth 1 -maxdepth 1 ! -name .berth-testenv \
            -exec rm -rf --one-file-system {} + || return 1
        rm -f "$dir/.berth-testenv"
    fi
    rmdir "$dir" 2>/dev/null || {
        berth_log "ERROR: $dir is not an (empty) berth test environment; not removing it"
        return 1
    }
}
