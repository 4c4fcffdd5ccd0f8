#!/usr/bin/env bash
# Installs what Berth needs on a Debian 12 host: QEMU (system emulator and qemu-img),
# e2fsprogs (mkfs.ext4 -d builds root filesystems), busybox-static (the tests' image),
# skopeo (the tests make archives with it as another tool would), python3-docker (docker-py,
# a second real Docker API client for the tests), iproute2 and nftables (container networks:
# bridges, taps and filtering in Berth's own network namespace), docker-registry (the
# tests pull from and push to a real registry on 127.0.0.1), docker-compose (v1: the tests
# bring a project up with it), mmdebstrap and postgresql-client (the workload test makes a
# PostgreSQL image from Debian's packages and drives it with the host's psql and pgbench),
# and docker-py from PyPI, pinned, in a virtual environment under the cache (the build
# tests drive it as its users install it).
# The guest kernel is not installed: Berth fetches Debian's package into its cache.
set -euo pipefail
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v skopeo >/dev/null || need+=(skopeo)
/usr/bin/python3 -c 'import docker' 2>/dev/null || need+=(python3-docker)
command -v ip >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v pgbench >/dev/null || need+=(postgresql-client)
# Berth resolves and downloads the guest kernel with apt on first use: the package lists
# must be current then (an old list can name a kernel the archive no longer has).
cache=${BERTH_CACHE:-/var/cache/berth}
if [ ${#need[@]} -gt 0 ] || [ ! -e "$cache/kernel/current" ] \
    || [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock)" ]; then
    echo "berth setup: apt-get update" >&2
    apt-get update -qq
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "berth setup: installing ${need[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Installing Debian 12's qemu-system-x86 removes a newer qemu-utils from backports (their
# versions conflict): bring qemu-img back in the matching version.
if ! command -v qemu-img >/dev/null; then
    echo "berth setup: installing qemu-utils" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-utils >/dev/null
fi
pyenv="$cache/docker-py-7.1.0"
if ! "$pyenv/bin/python" -c 'import docker' 2>/dev/null; then
    echo "berth setup: installing docker-py 7.1.0 from PyPI into $pyenv" >&2
    rm -rf "$pyenv"
    if ! python3 -m venv "$pyenv" 2>/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
        python3 -m venv "$pyenv"
    fi
    "$pyenv/bin/pip" install -q --disable-pip-version-check docker==7.1.0
fi
command -v docker >/dev/null || echo "berth setup: note: the docker CLI is not installed; Berth serves any Docker API client" >&2
