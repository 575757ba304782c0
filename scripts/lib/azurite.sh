# shellcheck shell=bash
# Part of scripts/lib.sh, which sources it.
# Azurite, Microsoft's Azure Storage emulator (from the npm registry): the
# blob store of the resource and output file tests. Installed once per
# machine under BERTH_AZURITE_CACHE; each test environment runs its own
# blob service on 127.0.0.1 with its own account and a fresh random key,
# telemetry off.

BERTH_AZURITE_VERSION=${BERTH_AZURITE_VERSION:-3.35.0}
BERTH_AZURITE_CACHE=${BERTH_AZURITE_CACHE:-/var/cache/berth/azurite}
BERTH_AZURITE_ACCOUNT=berthtest

# berth_azurite_bin: the azurite-blob program of BERTH_AZURITE_VERSION.
berth_azurite_bin() {
    echo "$BERTH_AZURITE_CACHE/$BERTH_AZURITE_VERSION/node_modules/.bin/azurite-blob"
}

# berth_azurite_install: install Azurite (and Node.js with npm, if missing).
berth_azurite_install() {
    local bin sudo=()
    bin=$(berth_azurite_bin)
    [[ -x $bin ]] && return 0
    [[ $EUID -eq 0 ]] || sudo=(sudo)
    if ! command -v npm >/dev/null 2>&1; then
        berth_log "installing Node.js and npm (for Azurite)"
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs npm || return 1
    fi
    berth_log "installing azurite@$BERTH_AZURITE_VERSION from the npm registry into $BERTH_AZURITE_CACHE"
    "${sudo[@]}" mkdir -p "$BERTH_AZURITE_CACHE/$BERTH_AZURITE_VERSION" || return 1
    (
        flock 9
        [[ -x $bin ]] && exit 0
        "${sudo[@]}" npm install --prefix "$BERTH_AZURITE_CACHE/$BERTH_AZURITE_VERSION" \
            --no-audit --no-fund --no-save --loglevel=error "azurite@$BERTH_AZURITE_VERSION"
    ) 9>"$BERTH_AZURITE_CACHE/.lock" || return 1
    [[ -x $bin ]] || { berth_log "ERROR: azurite-blob missing after npm install"; return 1; }
}

# _berth_azurite_start DIR PORT: start the blob service of DIR's environment
# (account BERTH_AZURITE_ACCOUNT, key in DIR/azurite.key).
_berth_azurite_start() {
    local dir=$1 port=$2 key
    mkdir -p "$dir/azurite" || return 1
    key=$(openssl rand -base64 32) || return 1
    (umask 077 && printf '%s' "$key" >"$dir/azurite.key") || return 1
    AZURITE_ACCOUNTS="$BERTH_AZURITE_ACCOUNT:$key" _berth_spawn "$dir/azurite.pid" "$dir/azurite.log" \
        "$(berth_azurite_bin)" --blobHost 127.0.0.1 --blobPort "$port" --location "$dir/azurite" \
        --skipApiVersionCheck --loose --disableTelemetry --silent
}

# _berth_azurite_ready PORT: the blob service answers (403 to an unsigned listing).
_berth_azurite_ready() {
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 \
        "http://127.0.0.1:$1/$BERTH_AZURITE_ACCOUNT?comp=list") || return 1
    [[ $code == 403 ]]
}
