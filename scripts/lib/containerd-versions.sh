# shellcheck shell=bash
#
# containerd versions for the test environment; sourced by scripts/lib.sh.
#
#   1.6  the system's containerd (Debian 12 bookworm, from apt; the default)
#   1.7  Debian 13 trixie's containerd package
#   2.1  Debian sid's containerd package
#
# 1.7 and 2.1 are never installed: berth_containerd_fetch downloads the .deb
# with a private apt state (own lists, cache and sources; the system's package
# lists and its containerd stay as they are) and unpacks it (dpkg-deb -x) into
# BERTH_CONTAINERD_CACHE/<Debian version>/, with BERTH_CONTAINERD_CACHE/<series>
# a symlink to it. Later runs reuse that directory without the network; set
# BERTH_CONTAINERD_REFRESH=1 to look for a newer package.
#
# Only containerd, ctr and containerd-shim-runc-v2 come from there: the
# shims run the system's runc (trixie's and sid's runc need glibc 2.38;
# see docs/containerd-matrix.md).
#
# The Debian mirror is the one the machine's apt sources use for its own
# release (deb822 `URIs:` in /etc/apt/sources.list.d/*.sources, or `deb URI
# SUITE` lines in /etc/apt/sources.list{,.d/*.list}); BERTH_DEBIAN_MIRROR
# overrides it. The Release files are checked against debian-archive-keyring
# (bookworm's has the trixie keys, which sign trixie and sid).

# The containerd series berth is tested with; the first is the default.
BERTH_CONTAINERD_SERIES=(1.6 1.7 2.1)
# Debian suite of each series fetched from the mirror.
declare -A BERTH_CONTAINERD_SUITE=([1.7]=trixie [2.1]=sid)
BERTH_CONTAINERD_CACHE=${BERTH_CONTAINERD_CACHE:-/var/cache/berth/containerd}
BERTH_DEBIAN_KEYRING=${BERTH_DEBIAN_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}

# berth_debian_mirror: print the URI of the Debian archive that the apt
# sources use for this machine's release (its VERSION_CODENAME).
berth_debian_mirror() {
    if [[ -n ${BERTH_DEBIAN_MIRROR:-} ]]; then
        echo "$BERTH_DEBIAN_MIRROR"
        return 0
    fi
    local codename f line key value uris suites types word uri
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}") || codename=
    if [[ -z $codename ]]; then
        berth_log "ERROR: no VERSION_CODENAME in /etc/os-release; set BERTH_DEBIAN_MIRROR"
        return 1
    fi
    # deb822 stanzas: a stanza whose Types has deb and Suites has CODENAME.
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -r $f ]] || continue
        uris='' suites='' types=''
        while IFS= read -r line || [[ -n $line ]]; do
            if [[ -z ${line//[[:space:]]/} ]]; then
                [[ " $types " == *" deb "* && " $suites " == *" $codename "* && -n $uris ]] &&
                    { echo "${uris%% *}"; return 0; }
                uris='' suites='' types=''
                continue
            fi
            [[ $line == \#* ]] && continue
            [[ $line =~ ^([A-Za-z-]+):[[:space:]]*(.*)$ ]] || continue
            key=${BASH_REMATCH[1],,} value=${BASH_REMATCH[2]}
            case $key in
            uris) uris=$value ;;
            suites) suites=$value ;;
            types) types=$value ;;
            esac
        done <"$f"
        [[ " $types " == *" deb "* && " $suites " == *" $codename "* && -n $uris ]] &&
            { echo "${uris%% *}"; return 0; }
    done
    # One-line style: deb [options] URI SUITE COMPONENT...
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r $f ]] || continue
        while read -r -a word; do
            [[ ${word[0]:-} == deb ]] || continue
            word=("${word[@]:1}")
            if [[ ${word[0]:-} == \[* ]]; then
                while ((${#word[@]})) && [[ ${word[0]} != *']' ]]; do word=("${word[@]:1}"); done
                word=("${word[@]:1}")
            fi
            uri=${word[0]:-}
            [[ ${word[1]:-} == "$codename" && -n $uri ]] && { echo "$uri"; return 0; }
        done <"$f"
    done
    berth_log "ERROR: no apt source for $codename found; set BERTH_DEBIAN_MIRROR"
    return 1
}

# _berth_containerd_runs DIR: the containerd, ctr and shim unpacked in DIR run
# on this machine (a glibc too old for them shows here).
_berth_containerd_runs() {
    local bin=$1/usr/bin
    [[ -x $bin/containerd && -x $bin/ctr && -x $bin/containerd-shim-runc-v2 ]] || return 1
    "$bin/containerd" --version >/dev/null 2>&1 && "$bin/ctr" --version >/dev/null 2>&1
}

# _berth_private_apt CACHE ARGS...: apt-get with a private state under
# CACHE/apt (lists, cache, sources.list; no sources.list.d, no dpkg status),
# so the system's package lists are left alone. Only the Packages indexes
# are fetched (no translations, no DEP-11 metadata).
_berth_private_apt() {
    local apt=$1/apt tool=apt-get
    shift
    if [[ $1 == apt-cache ]]; then tool=$1; shift; fi
    "$tool" -q \
        -o Dir::State::Lists="$apt/lists" \
        -o Dir::State::status=/dev/null \
        -o Dir::Etc::SourceList="$apt/sources.list" \
        -o Dir::Etc::SourceParts=/dev/null \
        -o Dir::Cache="$apt/cache" \
        -o Acquire::Languages=none \
        -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false \
        -o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false \
        -o Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false \
        "$@"
}

# berth_containerd_fetch SERIES: make sure containerd SERIES (1.7, 2.1) is
# unpacked in the cache; print its directory (binaries in DIR/usr/bin, the
# Debian package version in DIR/debian-version). Run as root (the cache is
# under /var/cache). Concurrent callers are serialised with a lock.
berth_containerd_fetch() {
    local series=${1:?usage: berth_containerd_fetch SERIES} suite cache=$BERTH_CONTAINERD_CACHE
    suite=${BERTH_CONTAINERD_SUITE[$series]:-}
    if [[ -z $suite ]]; then
        berth_log "ERROR: containerd $series is not fetched (known: ${!BERTH_CONTAINERD_SUITE[*]})"
        return 1
    fi
    mkdir -p "$cache" || return 1
    (
        flock 9 || exit 1
        link=$cache/$series
        if [[ ${BERTH_CONTAINERD_REFRESH:-0} != 1 ]] && _berth_containerd_runs "$link"; then
            readlink -f "$link"
            exit 0
        fi
        mirror=$(berth_debian_mirror) || exit 1
        if [[ ! -r $BERTH_DEBIAN_KEYRING ]]; then
            berth_log "ERROR: $BERTH_DEBIAN_KEYRING missing (apt-get install debian-archive-keyring)"
            exit 1
        fi
        mkdir -p "$cache/apt/lists/partial" "$cache/apt/cache/archives/partial" || exit 1
        printf 'deb [signed-by=%s] %s %s main\n' "$BERTH_DEBIAN_KEYRING" "$mirror" "$suite" \
            >"$cache/apt/sources.list.$suite" || exit 1
        # One suite per update: the lists of the others are kept.
        cp "$cache/apt/sources.list.$suite" "$cache/apt/sources.list" || exit 1
        berth_log "containerd $series: apt-get update ($suite, private lists in $cache/apt)"
        _berth_private_apt "$cache" update >"$cache/apt/update-$suite.log" 2>&1 || {
            tail -n 20 "$cache/apt/update-$suite.log" >&2
            berth_log "ERROR: apt-get update for $suite failed"
            exit 1
        }
        version=$(_berth_private_apt "$cache" apt-cache show "containerd/$suite" 2>/dev/null |
            sed -n 's/^Version: //p' | head -n 1)
        if [[ -z $version ]]; then
            berth_log "ERROR: no containerd package in $suite"
            exit 1
        fi
        dir=$cache/$version
        if ! _berth_containerd_runs "$dir"; then
            berth_log "containerd $series: downloading containerd $version ($suite)"
            tmp=$(mktemp -d "$cache/.fetch-XXXXXX") || exit 1
            # apt's download sandbox user (_apt) writes the .deb.
            if id _apt >/dev/null 2>&1; then chown _apt "$tmp" || exit 1; fi
            (cd "$tmp" && _berth_private_apt "$cache" download "containerd=$version") \
                >"$cache/apt/download-$suite.log" 2>&1 || {
                tail -n 20 "$cache/apt/download-$suite.log" >&2
                rm -rf "$tmp"
                berth_log "ERROR: apt-get download containerd=$version failed"
                exit 1
            }
            if ! { mkdir "$tmp/root" && dpkg-deb -x "$tmp"/containerd_*.deb "$tmp/root"; }; then
                rm -rf "$tmp"
                berth_log "ERROR: unpacking containerd $version failed"
                exit 1
            fi
            echo "$version" >"$tmp/root/debian-version" || exit 1
            if ! _berth_containerd_runs "$tmp/root"; then
                "$tmp/root/usr/bin/containerd" --version >&2 || true
                rm -rf "$tmp"
                berth_log "ERROR: containerd $version does not run here (glibc $(ldd --version | sed -n '1s/.* //p'))"
                exit 1
            fi
            rm -rf "$dir"
            mv "$tmp/root" "$dir" || exit 1
            rm -rf "$tmp"
        fi
        ln -sfn "$version" "$link.tmp" && mv -T "$link.tmp" "$link" || exit 1
        echo "$dir"
    ) 9>"$cache/.lock"
}

# berth_containerd_bindir SERIES: print the directory to put first on PATH for
# containerd SERIES (empty for 1.6, the system's); fetches it if need be.
berth_containerd_bindir() {
    local series=${1:?usage: berth_containerd_bindir SERIES} dir
    case $series in
    1.6) echo ;;
    *)
        dir=$(berth_containerd_fetch "$series") || return 1
        echo "$dir/usr/bin"
        ;;
    esac
}

# berth_containerd_version_of BINDIR: print containerd's upstream version
# (like 1.7.24) and its full version string (the Debian package version),
# tab-separated. BINDIR empty: the system's containerd.
berth_containerd_version_of() {
    local bindir=$1 full
    if [[ -z $bindir ]]; then
        full=$(dpkg-query -W -f='${Version}' containerd 2>/dev/null) || full=
        [[ -n $full ]] || full=$(containerd --version | awk '{print $3}')
    else
        full=$(<"${bindir%/usr/bin}/debian-version") || return 1
    fi
    # 1.7.24~ds1-6+deb13u1 -> 1.7.24
    printf '%s\t%s\n' "$(sed -E 's/^[0-9]+://; s/[~+-].*//' <<<"$full")" "$full"
}

# berth_containerd_series_ok SERIES: SERIES is one of BERTH_CONTAINERD_SERIES.
berth_containerd_series_ok() {
    [[ " ${BERTH_CONTAINERD_SERIES[*]} " == *" $1 "* ]] || {
        berth_log "ERROR: unknown containerd version '$1' (known: ${BERTH_CONTAINERD_SERIES[*]})"
        return 1
    }
}
