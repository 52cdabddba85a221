#!/usr/bin/env bash
# One command on a fresh Debian 12 machine (as root): installs every dependency (Debian packages,
# npm packages, guest kernel and image), builds Cocoon, then runs the main job (a demo pod) unless
# --deps-only is given. Idempotent: re-running only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  containerd runc crun runsc busybox-static
  qemu-system-x86 containernetworking-plugins iproute2 iptables
  kmod cpio zstd xz-utils binutils erofs-utils procps util-linux bsdutils coreutils python3
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Installing containerd's package may start a system instance; Cocoon's tests never use it.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v node >/dev/null || [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
  echo "setup: Node.js >= 20 is required (apt-get install nodejs npm)" >&2
  exit 1
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing npm packages"
  npm ci --no-audit --no-fund --loglevel=error
fi

echo "setup: building"
npm run --silent build

if [ -x guest/build.sh ]; then
  echo "setup: guest kernel and image"
  # The guest kernel comes from Debian's archive (downloaded, never installed): apt needs its lists.
  if ! apt-cache show --no-all-versions linux-image-amd64 >/dev/null 2>&1; then
    apt-get update -qq
  fi
  bash guest/build.sh
fi

if [ "${1:-}" != "--deps-only" ]; then
  exec bin/cocoon demo
fi
