#!/usr/bin/env bash
# Makes a docker-archive (the format of `docker save`) of a busybox image from Debian's
# busybox-static, for `docker load -i`. Usage: make-busybox-image.sh OUT.tar [TAG [CMD]]
# (CMD: the image's command as a JSON array; `["sh"]` by default).
set -euo pipefail
out=$(realpath -m "${1:?usage: $0 OUT.tar [TAG]}")
tag=${2:-busybox:latest}
cmd=${3:-'["sh"]'}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs/bin" "$work/rootfs/etc" "$work/rootfs/root" "$work/rootfs/tmp"
cp /bin/busybox "$work/rootfs/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -s busybox "$work/rootfs/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$work/rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$work/rootfs/etc/group"
tar -C "$work/rootfs" --owner=0 --group=0 --numeric-owner --sort=name --mtime=@0 -cf "$work/layer.tar" .
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
cat > "$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","created":"2026-01-01T00:00:00Z","config":{"Env":["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":$cmd},"rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]},"history":[{"created":"2026-01-01T00:00:00Z","created_by":"make-busybox-image.sh"}]}
JSON
config_id=$(sha256sum "$work/config.json" | cut -d' ' -f1)
mkdir -p "$work/archive/$diff_id"
mv "$work/layer.tar" "$work/archive/$diff_id/layer.tar"
mv "$work/config.json" "$work/archive/$config_id.json"
printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]\n' "$config_id" "$tag" "$diff_id" > "$work/archive/manifest.json"
tar -C "$work/archive" -cf "$out" manifest.json "$config_id.json" "$diff_id/layer.tar"
echo "$out"
