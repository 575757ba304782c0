# shellcheck shell=bash
# Part of scripts/lib.sh, which sources it.
# The whole test environment up and down (berth_env_up, berth_env_down), with
# its smoke check.

# containerd namespace used by the tests.
BERTH_NAMESPACE=berth
# containerd namespace of berth_env_up's own smoke check (emptied afterwards).
BERTH_SMOKE_NAMESPACE=smoke

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

# berth_env_up DIR [--containerd SERIES]: bring up the test environment under
# DIR and write DIR/env (export lines). DIR: short and fresh, like
# /tmp/berth-XXXX, because unix socket paths are limited to 107 bytes. SERIES:
# 1.6 (the system's containerd, the default; or $BERTH_CONTAINERD), 1.7 or 2.1
# (fetched by berth_containerd_fetch). On failure, logs are in DIR and
# berth_env_down DIR cleans up.
berth_env_up() {
    local dir=${1:?usage: berth_env_up DIR [--containerd SERIES]}
    local series=${BERTH_CONTAINERD:-${BERTH_CONTAINERD_SERIES[0]}} bindir versions release full
    local port tls_port blob_port tag ref repo start=${EPOCHREALTIME//[!0-9]/} ds pids=() lpid digest
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
    # Network namespaces the agents make (bind mounts of nsfs files) must be
    # seen in containerd's mount namespace: they are made under DIR/netns,
    # a shared mount made before containerd's namespace is (a slave of it).
    { mkdir -p "$dir/netns" && mount -n --bind "$dir/netns" "$dir/netns" && mount -n --make-shared "$dir/netns"; } ||
        { _berth_fail "$dir" "making the shared mount for network namespaces failed"; return 1; }
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
    blob_port=$(berth_free_port) || return 1
    while [[ $blob_port == "$port" || $blob_port == "$tls_port" ]]; do blob_port=$(berth_free_port) || return 1; done
    _berth_azurite_start "$dir" "$blob_port" ||
        { _berth_fail "$dir" "starting Azurite failed" azurite.log; return 1; }

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
    _berth_wait 30 "Azurite on port $blob_port" _berth_azurite_ready "$blob_port" ||
        { wait "$lpid" || true; _berth_fail "$dir" "Azurite did not come up" azurite.log; return 1; }

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
        BERTH_TEST_NETNS_DIR "$dir/netns" \
        BERTH_TEST_LIB "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)/lib.sh" \
        BERTH_TEST_CONTAINERD_VERSION "$series" \
        BERTH_TEST_CONTAINERD_RELEASE "$release" \
        BERTH_TEST_CONTAINERD_FULL_VERSION "$full" \
        BERTH_TEST_CONTAINERD_BIN_DIR "$bindir" \
        BERTH_TEST_BLOB_ENDPOINT "http://127.0.0.1:$blob_port/$BERTH_AZURITE_ACCOUNT" \
        BERTH_TEST_BLOB_ACCOUNT "$BERTH_AZURITE_ACCOUNT" \
        BERTH_TEST_BLOB_KEY_FILE "$dir/azurite.key" \
        >"$dir/env" || return 1
    # The tests' own `ctr` calls use the ctr of the same version.
    if [[ -n $bindir ]]; then
        # shellcheck disable=SC2016 # $PATH expands when the env file is sourced.
        printf 'export PATH=%q:"$PATH"\n' "$bindir" >>"$dir/env" || return 1
    fi
    ds=$(((${EPOCHREALTIME//[!0-9]/} - start) / 100000)) # tenths of a second
    berth_log "test environment up in $((ds / 10)).$((ds % 10))s: $dir/env"
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
    pid=$(_berth_owned_pid "$dir/azurite.pid" "$dir/azurite")
    [[ -n $pid ]] && daemons+=("$pid")

    # 2. SIGKILL (nothing in DIR needs a clean shutdown): first the container
    # processes, while their shims are alive to reap them, then the daemons.
    _berth_kill_wait "${procs[@]}"
    _berth_kill_wait "${daemons[@]}"

    # The test agents' bridges (bt<N>, bt<N>s, bt<N>c: tests/src/lib.rs
    # test_network and tests/tests/network.rs;
    # bb<N>: bench/src/agent.rs; bp<N>: proto/python/tests/conftest.py); each
    # agent's tasks removed their own veths, rules and addresses.
    local br
    while read -r br; do
        if [[ $br =~ ^(bt[0-9]+[sc]?|bb[0-9]+|bp[0-9]+)$ ]]; then ip link delete "$br" type bridge 2>/dev/null || true; fi
    done < <(ip -o link show type bridge 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1)
    _berth_test_iptables_clean

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

# _berth_test_iptables_clean: the iptables rules of the test agents' networks:
# each agent's node-wide masquerade chain and forward rules (berth's
# network/node_rules.rs, for the bridges above), and what tasks still running
# when the environment went down kept (the plugins' per-container rules for
# the test subnets, 10.200.0.0/13), whose DEL never ran.
_berth_test_iptables_clean() {
    command -v iptables >/dev/null || return 0
    local rule chain table
    local bridges='(bt[0-9]+[sc]?|bb[0-9]+|bp[0-9]+)'
    while IFS= read -r rule; do
        eval "iptables -w ${rule/-A /-D }" 2>/dev/null || true
    done < <(iptables -w -S FORWARD 2>/dev/null | grep -E -- "--comment \"?berth $bridges\"? " || true)
    # Each jump goes, then the chain it jumped to (only those: another
    # tool's chains are not touched).
    while IFS= read -r rule; do
        chain=${rule##* }
        eval "iptables -w -t nat ${rule/-A /-D }" 2>/dev/null || true
        iptables -w -t nat -F "$chain" 2>/dev/null && iptables -w -t nat -X "$chain" 2>/dev/null || true
    done < <(iptables -w -t nat -S POSTROUTING 2>/dev/null |
        grep -E -- "-j BERTH-MASQ-$bridges\$|^-A POSTROUTING -s 10\.20[0-7]\.[0-9]+\.[0-9]+/32 .*-j CNI-[0-9a-f]{24}\$" || true)
    for table in filter; do
        while IFS= read -r rule; do
            eval "iptables -w -t $table ${rule/-A /-D }" 2>/dev/null || true
        done < <(iptables -w -t $table -S CNI-FORWARD 2>/dev/null | grep -E -- '^-A CNI-FORWARD (-s|-d) 10\.20[0-7]\.' || true)
    done
}
