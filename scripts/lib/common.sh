# shellcheck shell=bash
# Part of scripts/lib.sh, which sources it.
# Logging, ports, and process helpers shared by the other parts (waiting for,
# spawning and killing processes; failure diagnostics).

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

# _berth_wait_all PID...: wait for background jobs; fail if any failed.
_berth_wait_all() {
    local pid rc=0
    for pid in "$@"; do wait "$pid" || rc=1; done
    return "$rc"
}

# _berth_diagnose DIR: information on why containerd could not unpack or run.
_berth_diagnose() {
    local dir=$1
    berth_log "diagnostics: $dir is on $(stat -f -c %T "$dir"); kernel $(uname -r)"
    "$(_berth_ctr_bin "$dir")" --address "$dir/containerd.sock" plugins ls 2>&1 |
        grep -E 'TYPE|overlayfs|runtime|tasks' >&2 || true
    grep -iE 'level=(error|warning)' "$dir/containerd.log" 2>/dev/null | tail -n 20 >&2 || true
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
