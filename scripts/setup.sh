#!/usr/bin/env bash
# Installs what Berth needs on a Debian 12 host: QEMU (system emulator and qemu-img),
# e2fsprogs (mkfs.ext4 -d builds root filesystems), busybox-static (the tests' image),
# skopeo (the tests make archives with it as another tool would), python3-docker (docker-py,
# a second real Docker API client for the tests), iproute2 and nftables (container networks:
# bridges, taps and filtering in Berth's own network namespace), docker-registry (the
# tests pull from and push to a real registry on 127.0.0.1), docker-compose (v1: the tests
# bring a project up with it), mmdebstrap and postgresql-client (the workload test makes a
# PostgreSQL image from Debian's packages and drives it with the host's psql and pgbench),
# chromium (the console's test drives the web console in headless Chromium),
# python3-prometheus-client (Prometheus's own parser reads the console's /metrics in
# the tests), containerd (and ctr: the tests run a containerd of their own with Berth's
# shim as a runtime; containernetworking-plugins give its CRI plugin pods' networks, and
# protobuf-compiler builds the CRI test's client from Kubernetes' CRI protocol), and docker-py from PyPI, pinned, in a virtual environment under the cache
# (the build tests drive it as its users install it).
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
command -v chromium >/dev/null || need+=(chromium)
/usr/bin/python3 -c 'import prometheus_client' 2>/dev/null || need+=(python3-prometheus-client)
command -v containerd >/dev/null || need+=(containerd)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v protoc >/dev/null || need+=(protobuf-compiler)
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
    # Packages' services (containerd's) are not started: the tests run their own.
    no_start=/usr/sbin/policy-rc.d
    [ -e "$no_start" ] || { printf '#!/bin/sh\nexit 101\n' > "$no_start"; chmod +x "$no_start"; made_no_start=1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    [ -z "${made_no_start:-}" ] || rm -f "$no_start"
fi
# Installing Debian 12's qemu-system-x86 removes a newer qemu-utils from backports (their
# versions conflict): bring qemu-img back in the matching version.
if ! command -v qemu-img >/dev/null; then
    echo "berth setup: installing qemu-utils" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-utils >/dev/null
fi
# The KVM lab (`berth lab`) runs on a newer QEMU than Debian 12's 7.2, whose TCG can
# leave interrupts off for good after an STI followed by a RET (fixed in QEMU 9.0.1) and
# then hard-locks the lab's kernel now and then. QEMU from bookworm-backports is unpacked
# under the cache, beside the host's QEMU (which container VMs keep using); its shared
# libraries are those the host's QEMU already brought.
lab_qemu="$cache/lab-qemu"
if [ ! -x "$lab_qemu/usr/bin/qemu-system-x86_64" ]; then
    echo "berth setup: unpacking QEMU from bookworm-backports into $lab_qemu (for berth lab)" >&2
    apt_dir=$(mktemp -d)
    mkdir -p "$cache"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main" \
        > "$apt_dir/sources"
    apt_opts=(-o "Dir::Etc::sourcelist=$apt_dir/sources" -o Dir::Etc::sourceparts=/dev/null
        -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache::archives=$apt_dir"
        -o APT::Sandbox::User=root)
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/partial"
    if apt-get "${apt_opts[@]}" update -qq \
        && (cd "$apt_dir" && apt-get "${apt_opts[@]}" download -qq \
            qemu-system-x86/bookworm-backports qemu-system-common/bookworm-backports \
            qemu-system-data/bookworm-backports); then
        rm -rf "$lab_qemu.new"
        for deb in "$apt_dir"/*.deb; do dpkg -x "$deb" "$lab_qemu.new"; done
        if "$lab_qemu.new/usr/bin/qemu-system-x86_64" --version >/dev/null; then
            rm -rf "$lab_qemu" && mv "$lab_qemu.new" "$lab_qemu"
        else
            echo "berth setup: warning: the unpacked QEMU does not run; berth lab uses the host's" >&2
            rm -rf "$lab_qemu.new"
        fi
    else
        echo "berth setup: warning: bookworm-backports is out of reach; berth lab uses the host's QEMU" >&2
    fi
    rm -rf "$apt_dir"
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
