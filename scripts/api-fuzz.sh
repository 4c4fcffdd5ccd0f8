#!/usr/bin/env bash
# The Docker Engine API fuzzed from its OpenAPI description: schemathesis (from PyPI,
# pinned, in a virtual environment under Berth's cache) generates requests from Moby's
# swagger.yaml and sends them to a daemon of this script's own (own root, exec root,
# socket and network namespace, under /var/tmp), through a relay from 127.0.0.1 to its
# unix socket. The check: no 5xx answer (Docker answers a request it cannot serve with a
# 4xx and {"message": ...}), no dropped connection, no hang; and afterwards the daemon
# still answers, and runs a container.
#
# Left out, for network safety and because they stream forever: operations that make
# the daemon reach a registry or a URL (pull and import, push, search, login,
# distribution, build with a remote context, plugins), swarm, the hijacked session, and
# the event stream.
#
# Usage: scripts/api-fuzz.sh [--spec SWAGGER] [--max-time SECONDS]
#        (default: ../shared/docker-api/swagger.yaml beside the repository, 600 s)
#
# Prints a summary for docs/reliability.md and exits 1 if a check failed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
spec=$here/../../shared/docker-api/swagger.yaml
max_time=600
while [ $# -gt 0 ]; do
    case $1 in
    --spec) spec=$2; shift 2 ;;
    --max-time) max_time=$2; shift 2 ;;
    *) echo "usage: $0 [--spec SWAGGER] [--max-time SECONDS]" >&2; exit 2 ;;
    esac
done
[ -f "$spec" ] || { echo "no OpenAPI description at $spec: give its path with --spec (Moby's api/swagger.yaml)" >&2; exit 1; }
berth=${BERTH:-$here/../target/release/berth}
[ -x "$berth" ] || { echo "build berth first: cargo build --release" >&2; exit 1; }
cache=${BERTH_CACHE:-/var/cache/berth}
version=4.32.5
venv="$cache/schemathesis-$version"
if ! "$venv/bin/schemathesis" --version >/dev/null 2>&1; then
    echo "api-fuzz: installing schemathesis $version from PyPI into $venv" >&2
    rm -rf "$venv"
    mkdir -p "$cache"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$version"
fi

work=$(mktemp -d /var/tmp/berth-api-fuzz.XXXXXX)
netns=berth-fuzz-$$
daemon_pid=
relay_pid=
cleanup() {
    [ -n "$relay_pid" ] && kill "$relay_pid" 2>/dev/null
    if [ -n "$daemon_pid" ]; then
        # Whatever the fuzzer left running goes with the daemon's containers.
        docker ps -aq 2>/dev/null | xargs -r docker rm -f >/dev/null 2>&1 || true
        kill "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    ip netns delete "$netns" 2>/dev/null || true
    [ -n "${KEEP:-}" ] && echo "kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT
export DOCKER_HOST=unix://$work/d.sock DOCKER_CONFIG=$work/docker-config
"$berth" daemon --root "$work/root" --exec-root "$work/run" --socket "$work/d.sock" \
    --netns "$netns" >> "$work/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 300); do docker version >/dev/null 2>&1 && break; sleep 0.2; done
"$here/make-busybox-image.sh" "$work/busybox.tar" >/dev/null
docker load -q -i "$work/busybox.tar" >/dev/null
docker create --name target busybox sleep 600 >/dev/null

# The relay: one connection to the daemon's socket per client connection.
"$venv/bin/python" - "$work/d.sock" "$work/relay.port" <<'EOF' &
import asyncio, sys
socket_path, port_file = sys.argv[1], sys.argv[2]
async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
async def serve(client_reader, client_writer):
    try:
        daemon_reader, daemon_writer = await asyncio.open_unix_connection(socket_path)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(pipe(client_reader, daemon_writer), pipe(daemon_reader, client_writer))
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.sockets[0].getsockname()[1]))
    import os
    os.rename(port_file + ".tmp", port_file)
    async with server:
        await server.serve_forever()
asyncio.run(main())
EOF
relay_pid=$!
for _ in $(seq 100); do [ -s "$work/relay.port" ] && break; sleep 0.1; done
port=$(cat "$work/relay.port")
api=$(docker version --format '{{.Server.APIVersion}}')
echo "api-fuzz: $spec against Berth (API $api) on 127.0.0.1:$port for ${max_time}s" >&2

# schemathesis's own verdict counts 501 as a failure; Berth answers 501 on purpose for
# what it does not do (a --device, a Docker network driver other than bridge, top's
# ps options it lacks), with the reason in {"message": ...}. The verdict here is drawn
# from the report: every request must have been answered, none with another 5xx.
"$venv/bin/schemathesis" run "$spec" \
    --url "http://127.0.0.1:$port/v$api" \
    --checks not_a_server_error \
    --max-time "$max_time" \
    --request-timeout 30 \
    --workers 2 \
    --suppress-health-check all \
    --exclude-path-regex '^/(images/create|images/search|images/[^/]+/push|auth|build|distribution/|plugins|swarm|services|nodes|tasks|secrets|configs|session|events)' \
    --report ndjson --report-dir "$work/report" \
    > "$work/schemathesis.out" 2>&1 || true

problems=()
summary=$("$venv/bin/python" - "$work/report" <<'EOF'
import collections, glob, json, sys, urllib.parse

def operation(request):
    """METHOD /resource[/{id}/verb], the request's path without the API version."""
    parts = urllib.parse.urlparse(request.get("uri", "")).path.split("/")[2:]
    if len(parts) > 2:
        parts = [parts[0], "{id}"] + parts[2:3]
    return request.get("method", "?") + " /" + "/".join(parts)

statuses = collections.Counter()
refused = collections.Counter()
server_errors = collections.Counter()
examples = {}
unanswered = 0
for path in glob.glob(sys.argv[1] + "/*.ndjson"):
    for line in open(path):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        finished = event.get("ScenarioFinished")
        if not finished:
            continue
        for interaction in finished.get("recorder", {}).get("interactions", {}).values():
            request = interaction.get("request", {})
            response = interaction.get("response")
            if not response:
                unanswered += 1
                continue
            status = response["status_code"]
            statuses[status // 100] += 1
            if status == 501:
                refused[operation(request)] += 1
            elif status >= 500:
                key = (operation(request), status)
                server_errors[key] += 1
                examples.setdefault(key, request.get("uri"))
total = sum(statuses.values()) + unanswered
answered = ", ".join(f"{count} {kind}xx" for kind, count in sorted(statuses.items()))
print(f"{total} requests; answered {answered}; unanswered {unanswered}")
print("501, what Berth does not do: " + (", ".join(f"{op} x{n}" for op, n in refused.most_common()) or "none"))
for (op, status), count in server_errors.most_common():
    print(f"SERVER ERROR {status} {op} x{count}, e.g. {examples[op, status]}")
if unanswered:
    print(f"UNANSWERED {unanswered}")
EOF
)
echo "api-fuzz: $summary"
if grep -q '^SERVER ERROR\|^UNANSWERED' <<< "$summary"; then
    problems+=("5xx answers other than 501, or requests left unanswered")
fi
kill -0 "$daemon_pid" 2>/dev/null || problems+=("the daemon is gone")
docker version >/dev/null 2>&1 || problems+=("the daemon no longer answers")
# The fuzzer may have removed the image: load it again (a run must never pull).
docker load -q -i "$work/busybox.tar" >/dev/null
[ "$(docker run --rm --pull never busybox echo still-serving 2>&1)" = still-serving ] \
    || problems+=("the daemon no longer runs a container")
echo "api-fuzz: daemon resident memory $(awk '/^VmRSS/ { print $2 / 1024 " MiB" }' "/proc/$daemon_pid/status" 2>/dev/null)"
if [ ${#problems[@]} -gt 0 ]; then
    printf 'api-fuzz: %s\n' "${problems[@]}" >&2
    KEEP=1
    exit 1
fi
echo "api-fuzz: no 5xx but Berth's deliberate 501s; the daemon serves on"
