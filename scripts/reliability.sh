#!/usr/bin/env bash
# Berth's reliability suite, against a daemon of its own (own root, exec root, socket and
# network namespace, under /var/tmp):
#
# Load: CLIENTS docker CLIs at once, each running `docker run --rm` RUNS times. Every run
# must succeed, or fail with an error message (an exit status without one fails the
# suite). Afterwards, within 60 s: no container, no VM process (found by the run
# directory in its environment), no tap in the daemon's network namespace, no container
# or VM directory, no address held on the default network; the daemon's open descriptors
# at most 8 above where they started. Its resident memory is reported, not held to a
# bound: the allocator keeps freed memory for reuse.
#
# Faults (--faults K): K times, a verb (create, start, stop, rm, commit, volume create,
# network connect, run, load of an image with a 32 MiB layer, pull of it from a
# docker-registry the suite starts on 127.0.0.1) is started and the daemon is killed with SIGKILL at a random
# moment of it (0-1.5 s in); a new daemon must then answer within 60 s, every container,
# image and volume it lists must inspect, every container must be removable, no VM
# process, tap or address may be left once they are removed, no upload or download may
# be left in the root's staging directories, an interrupted load or pull must load or
# pull again and run, and a new container must run.
#
# Usage: scripts/reliability.sh [--clients N] [--runs M] [--faults K] [--verbs 'V ...']
#        (default 8 clients x 5 runs, no faults; --verbs: only these verbs are faulted)
#
# Prints Markdown table rows for docs/reliability.md and exits 1 if any check failed.
set -euo pipefail
clients=8
runs=5
faults=0
only_verbs=
while [ $# -gt 0 ]; do
    case $1 in
    --clients) clients=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --faults) faults=$2; shift 2 ;;
    --verbs) only_verbs=$2; shift 2 ;;
    *) echo "usage: $0 [--clients N] [--runs M] [--faults K] [--verbs 'load pull ...']" >&2; exit 2 ;;
    esac
done
here=$(cd "$(dirname "$0")" && pwd)
berth=${BERTH:-$here/../target/release/berth}
[ -x "$berth" ] || { echo "build berth first: cargo build --release" >&2; exit 1; }
work=$(mktemp -d /var/tmp/berth-reliability.XXXXXX)
netns=berth-rel-$$
daemon_pid=
vm_pids() {
    local pid
    for pid in /proc/[0-9]*; do
        if { tr '\0' '\n' < "$pid/environ"; } 2>/dev/null | grep -q "^BERTH_VM_DIR=$work/run/"; then
            echo "${pid#/proc/}"
        fi
    done
}
cleanup() {
    if [ -n "$daemon_pid" ]; then
        kill "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    for pid in $(vm_pids); do kill -9 "$pid" 2>/dev/null || true; done
    [ -n "${registry_pid:-}" ] && kill "$registry_pid" 2>/dev/null
    ip netns delete "$netns" 2>/dev/null || true
    [ -n "${KEEP:-}" ] && echo "kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT
export DOCKER_HOST=unix://$work/d.sock DOCKER_CONFIG=$work/docker-config

start_daemon() {
    "$berth" daemon --root "$work/root" --exec-root "$work/run" --socket "$work/d.sock" \
        --netns "$netns" >> "$work/daemon.log" 2>&1 &
    daemon_pid=$!
    local _
    for _ in $(seq 300); do docker version >/dev/null 2>&1 && return 0; sleep 0.2; done
    return 1
}
start_daemon
"$here/make-busybox-image.sh" "$work/busybox.tar" >/dev/null
docker load -q -i "$work/busybox.tar" >/dev/null
docker run --rm busybox true

vm_processes() { vm_pids | wc -l; }
taps() { ip -n "$netns" -o link show 2>/dev/null | grep -c ': bt' || true; }
descriptors() { ls "/proc/$daemon_pid/fd" | wc -l; }
resident_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$daemon_pid/status"; }
dirs_in() { find "$1" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
leases() { docker network inspect bridge -f '{{len .Containers}}'; }

fds_before=$(descriptors)
rss_before=$(resident_kib)
echo "reliability: $clients clients x $runs runs of docker run --rm" >&2
started=$(date +%s%N)
client_pids=()
for client in $(seq "$clients"); do
    (
        for run in $(seq "$runs"); do
            if out=$(docker run --rm busybox echo "ok $client.$run" 2> "$work/err.$client.$run"); then
                [ "$out" = "ok $client.$run" ] && echo ok || echo "wrong-output $out"
            elif [ -s "$work/err.$client.$run" ]; then
                echo "failed-clearly $(head -c 300 "$work/err.$client.$run" | tr '\n' ' ')"
            else
                echo "failed-silently"
            fi
        done > "$work/client.$client"
    ) &
    client_pids+=($!)
done
wait "${client_pids[@]}"
elapsed=$(( ($(date +%s%N) - started) / 1000000 ))
cat "$work"/client.* > "$work/results"
total=$(wc -l < "$work/results")
ok=$(grep -c '^ok$' "$work/results" || true)
clear=$(grep -c '^failed-clearly' "$work/results" || true)
bad=$((total - ok - clear))

problems=()
[ "$total" -eq $((clients * runs)) ] || problems+=("$total results for $((clients * runs)) runs")
[ "$bad" -eq 0 ] || problems+=("$bad runs failed without an error message or gave wrong output")
# Nothing of any container left (all were removed): true once so within 60 s.
nothing_left() {
    local _
    for _ in $(seq 120); do
        if [ "$(vm_processes)" -eq 0 ] && [ "$(taps)" -eq 0 ] && [ -z "$(docker ps -aq)" ] \
            && [ "$(dirs_in "$work/run/vms")" -eq 0 ] && [ "$(dirs_in "$work/root/containers")" -eq 0 ] \
            && [ "$(leases)" -eq 0 ]; then
            return 0
        fi
        sleep 0.5
    done
    return 1
}
left_over() {
    echo "$(vm_processes) VM processes, $(taps) taps, $(docker ps -aq | wc -l) containers, $(dirs_in "$work/run/vms") VM directories, $(dirs_in "$work/root/containers") container directories, $(leases) addresses"
}
settled=
if nothing_left; then
    settled=yes
else
    problems+=("left over after 60 s: $(left_over)")
fi
fds_after=$(descriptors)
rss_after=$(resident_kib)
[ "$fds_after" -le $((fds_before + 8)) ] || problems+=("open descriptors $fds_before -> $fds_after")

printf '| %s x %s | %s | %s | %s | %d.%d s | %s -> %s | %s -> %s MiB | %s |\n' \
    "$clients" "$runs" "$ok" "$clear" "$bad" $((elapsed / 1000)) $((elapsed % 1000 / 100)) "$fds_before" "$fds_after" \
    "$((rss_before / 1024))" "$((rss_after / 1024))" "$([ -n "$settled" ] && echo nothing || echo 'see below')"
grep '^failed' "$work/results" | sort | uniq -c | head -5 >&2 || true

# Faults: the daemon killed in the middle of a verb.
verbs=(create start stop rm commit volume connect run load pull)
[ -n "$only_verbs" ] && read -r -a verbs <<< "$only_verbs"
survived=0
registry_pid=
if [ "$faults" -gt 0 ]; then
    echo "reliability: $faults times, SIGKILL to the daemon during a verb" >&2
    docker network create faultnet >/dev/null || true
    # Busybox with a 32 MiB layer of random bytes, as an archive (for load) and in a
    # registry of the suite's own on 127.0.0.1 (for pull).
    docker run --name fault-big-source busybox sh -c 'head -c 33554432 /dev/urandom > /blob'
    docker commit fault-big-source fault-big:1 >/dev/null
    docker rm fault-big-source >/dev/null
    docker save -o "$work/big.tar" fault-big:1
    docker rmi fault-big:1 >/dev/null
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' \
        "$work/registry" "$port" > "$work/registry.yml"
    docker-registry serve "$work/registry.yml" > "$work/registry.log" 2>&1 &
    registry_pid=$!
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    skopeo copy -q --dest-tls-verify=false "docker-archive:$work/big.tar" "docker://127.0.0.1:$port/fault/big:1"
fi
for i in $(seq "$faults"); do
    verb=${verbs[RANDOM % ${#verbs[@]}]}
    # What the verb works on.
    target=
    case $verb in
    start) target=$(docker create busybox sleep 600) || true ;;
    stop | rm | commit | connect) target=$(docker run -d busybox sleep 600) || true ;;
    load | pull) docker rmi -f fault-big:1 "127.0.0.1:$port/fault/big:1" >/dev/null 2>&1 || true ;;
    esac
    case $verb in
    create) docker create busybox true ;;
    start) docker start "$target" ;;
    stop) docker stop -t 1 "$target" ;;
    rm) docker rm -f "$target" ;;
    commit) docker commit "$target" "fault-image:$i" ;;
    volume) docker volume create "fault-volume-$i" ;;
    connect) docker network connect faultnet "$target" ;;
    run) docker run -d busybox sleep 600 ;;
    load) docker load -i "$work/big.tar" ;;
    pull) docker pull "127.0.0.1:$port/fault/big:1" ;;
    esac > "$work/fault.$i.out" 2>&1 &
    verb_pid=$!
    delay_ms=$((RANDOM % 1500))
    sleep "$((delay_ms / 1000)).$(printf %03d $((delay_ms % 1000)))"
    kill -9 "$daemon_pid"
    wait "$daemon_pid" 2>/dev/null || true
    wait "$verb_pid" 2>/dev/null || true
    found=()
    if ! start_daemon; then
        found+=("the daemon did not answer after the kill")
    else
        for id in $(docker ps -aq); do
            docker inspect "$id" >/dev/null 2>&1 || found+=("container $id does not inspect")
        done
        for id in $(docker images -q); do
            docker image inspect "$id" >/dev/null 2>&1 || found+=("image $id does not inspect")
        done
        for name in $(docker volume ls -q); do
            docker volume inspect "$name" >/dev/null 2>&1 || found+=("volume $name does not inspect")
        done
        ids=$(docker ps -aq)
        if [ -n "$ids" ] && ! docker rm -f $ids >/dev/null 2>"$work/fault.$i.rm"; then
            found+=("docker rm -f failed: $(head -c 300 "$work/fault.$i.rm")")
        fi
        nothing_left || found+=("left over after removing every container: $(left_over)")
        # No upload or download the killed daemon was receiving is kept.
        [ "$(dirs_in "$work/root/tmp")" -eq 0 ] || found+=("$(dirs_in "$work/root/tmp") uploads left in root/tmp")
        [ "$(dirs_in "$work/root/images/tmp")" -eq 0 ] || found+=("$(dirs_in "$work/root/images/tmp") files left in images/tmp")
        # An image the kill interrupted is all there or not there: it loads or pulls
        # again and runs.
        case $verb in
        load) docker load -q -i "$work/big.tar" >/dev/null 2>&1 && docker run --rm fault-big:1 true 2>/dev/null \
            || found+=("fault-big:1 did not load again and run") ;;
        pull) docker pull -q "127.0.0.1:$port/fault/big:1" >/dev/null 2>&1 && docker run --rm "127.0.0.1:$port/fault/big:1" true 2>/dev/null \
            || found+=("the image did not pull again and run") ;;
        esac
        [ "$(docker run --rm busybox echo fine 2>&1)" = fine ] || found+=("a new container did not run")
    fi
    echo "reliability: fault $i: SIGKILL $delay_ms ms into $verb: ${#found[@]} problems" >&2
    if [ ${#found[@]} -eq 0 ]; then
        survived=$((survived + 1))
    else
        problems+=("fault $i (SIGKILL during $verb): ${found[*]}")
    fi
done
if [ "$faults" -gt 0 ]; then
    printf '| SIGKILL during a verb | %s | %s survived |\n' "$faults" "$survived"
fi
if [ ${#problems[@]} -gt 0 ]; then
    printf 'reliability: %s\n' "${problems[@]}" >&2
    exit 1
fi
