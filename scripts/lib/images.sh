# shellcheck shell=bash
# Part of scripts/lib.sh, which sources it.
# The busybox-based OCI test images: built into an OCI layout, derived
# variants, pushed to the registries.

# Test image tags, built into the OCI layout and pushed as berth-test/<tag>.
BERTH_IMAGE_TAGS=(busybox entrypoint workdir user nameduser ghostuser)
# Repositories that all get the 3-layer image (OCI layout tag "layers").
BERTH_LAYERS_REPOS=(layers layers-a layers-b layers-c)
# Media types used in the generated manifests.
BERTH_MT_MANIFEST=application/vnd.oci.image.manifest.v1+json
BERTH_MT_INDEX=application/vnd.oci.image.index.v1+json

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
