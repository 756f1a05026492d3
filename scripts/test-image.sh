#!/usr/bin/env bash
# Builds the local test image `orion/busybox:latest` without any registry:
# a root filesystem holding the static busybox binary, its applet symlinks and
# /www/index.html, imported with `docker import`. Idempotent: if the image
# exists, it prints so and does nothing. Needs root (apt-get) only when the
# busybox-static package is missing.
set -euo pipefail

IMAGE="${ORION_TEST_IMAGE:-orion/busybox:latest}"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "test-image: $IMAGE already exists, nothing to do"
    exit 0
fi

# The static build is required: the image has no libc.
BUSYBOX=""
for candidate in /bin/busybox /usr/bin/busybox; do
    if [ -x "$candidate" ] && ! ldd "$candidate" >/dev/null 2>&1; then
        BUSYBOX="$candidate"
        break
    fi
done
if [ -z "$BUSYBOX" ]; then
    echo "test-image: installing busybox-static"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y busybox-static; then
        apt-get update
        apt-get install -y busybox-static
    fi
    BUSYBOX=/bin/busybox
fi
if ldd "$BUSYBOX" >/dev/null 2>&1; then
    echo "test-image: $BUSYBOX is not statically linked" >&2
    exit 1
fi

ROOTFS="$(mktemp -d)"
trap 'rm -rf "$ROOTFS"' EXIT

mkdir -p "$ROOTFS"/{bin,www,tmp,etc,proc,sys,dev}
chmod 1777 "$ROOTFS/tmp"
cp "$BUSYBOX" "$ROOTFS/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] && continue
    ln -sf busybox "$ROOTFS/bin/$applet"
done
echo "hello from orion" >"$ROOTFS/www/index.html"
echo "root:x:0:0:root:/:/bin/sh" >"$ROOTFS/etc/passwd"
echo "root:x:0:" >"$ROOTFS/etc/group"

tar -C "$ROOTFS" -c . | docker import \
    --change 'CMD ["/bin/sh"]' \
    --change 'WORKDIR /' \
    --change 'ENV PATH=/bin' \
    - "$IMAGE"
echo "test-image: built $IMAGE"
