#!/usr/bin/env bash
# berth's integration tests: pushes a one-layer image to a plain-HTTP test
# registry with curl (no image tool checks what it is asked to push).
#
#   push-image.sh REGISTRY REPO:TAG SIZE_MIB [MANIFEST_PAD_BYTES] [LAYER_SIZE_DELTA] [gzip|zstd]
#
# The layer is a gzipped (or zstd) tar of SIZE_MIB MiB of zeros (a small blob
# that decompresses to much more). MANIFEST_PAD_BYTES adds an annotation of that
# many bytes to the manifest; LAYER_SIZE_DELTA is added to the layer size the
# manifest declares. Prints the layer's digest.
set -euo pipefail
reg=$1 ref=$2 mib=$3 pad=${4:-0} delta=${5:-0} comp=${6:-gzip}
repo=${ref%%:*} tag=${ref#*:}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/root"
head -c $((mib << 20)) /dev/zero >"$tmp/root/zeros"
tar -C "$tmp/root" --owner=0 --group=0 --numeric-owner -cf "$tmp/layer.tar" zeros
diffid=sha256:$(sha256sum <"$tmp/layer.tar" | cut -d' ' -f1)
case $comp in
gzip) gzip -1 "$tmp/layer.tar" && mv "$tmp/layer.tar.gz" "$tmp/layer.blob" ;;
zstd) zstd -q -1 --rm "$tmp/layer.tar" -o "$tmp/layer.blob" ;;
*) echo "push-image.sh: unknown compression $comp" >&2; exit 2 ;;
esac

put_blob() {
    local f=$1 d loc sep='?'
    d=sha256:$(sha256sum <"$f" | cut -d' ' -f1)
    loc=$(curl -fsS --max-time 30 -D - -o /dev/null -X POST "http://$reg/v2/$repo/blobs/uploads/" |
        tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
    case $loc in http*) ;; *) loc="http://$reg$loc" ;; esac
    [[ $loc == *\?* ]] && sep='&'
    curl -fsS --max-time 60 -X PUT -H 'Content-Type: application/octet-stream' \
        --data-binary "@$f" "$loc${sep}digest=$d" >/dev/null
    echo "$d"
}

ldigest=$(put_blob "$tmp/layer.blob")
lsize=$(stat -c %s "$tmp/layer.blob")
jq -cn --arg d "$diffid" \
    '{architecture: "amd64", os: "linux", config: {Cmd: ["/zeros"]}, rootfs: {type: "layers", diff_ids: [$d]}}' \
    >"$tmp/config.json"
cdigest=$(put_blob "$tmp/config.json")
csize=$(stat -c %s "$tmp/config.json")
padding=$(head -c "$pad" /dev/zero | tr '\0' x)
jq -cn --arg cd "$cdigest" --argjson cs "$csize" --arg ld "$ldigest" --argjson ls $((lsize + delta)) \
    --arg pad "$padding" --arg lmt "application/vnd.oci.image.layer.v1.tar+$comp" '
    {schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
     config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $cd, size: $cs},
     layers: [{mediaType: $lmt, digest: $ld, size: $ls}]}
    + if $pad == "" then {} else {annotations: {"berth.test/pad": $pad}} end' >"$tmp/manifest.json"
curl -fsS --max-time 30 -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary "@$tmp/manifest.json" "http://$reg/v2/$repo/manifests/$tag" >/dev/null
echo "$ldigest"
