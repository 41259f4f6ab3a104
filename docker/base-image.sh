#!/bin/sh
# A stand-in for Ray's CPU image where no image registry is reachable: Debian bookworm
# (Python 3.11, the Python of rayproject/ray:<version>-py311-cpu) made with debootstrap from
# this machine's own apt mirror and loaded with `docker import`. Only what the image's
# Python packages need at run time is added; pip and everything else come from the Dockerfile.
#   docker/base-image.sh welip-base:bookworm-py311 [mirror]
set -eu
tag=${1:?usage: base-image.sh TAG [MIRROR]}
# The machine's own mirror (apt's deb822 sources), else Debian's.
mirror=${2:-$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)}
mirror=${mirror:-http://deb.debian.org/debian}
root=$(mktemp -d /tmp/welip-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
# python3-venv: the image's virtualenv; libgomp1 and libnuma1: vLLM's CPU kernels and torch;
# procps: `ray stop` and KubeRay's probes use ps/pgrep; ca-certificates: HTTPS to S3 and OIDC.
debootstrap --variant=minbase \
  --include=python3,python3-venv,ca-certificates,libgomp1,libnuma1,procps,curl \
  bookworm "$root" "$mirror" >/dev/null
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  - "$tag" >/dev/null
echo "$tag"
