#!/bin/sh
# /init of the cocoon guest (busybox sh). Runs twice:
#   stage 1 (PID 1 straight from the initramfs): load modules, then move to a root that is a
#            real mount, because pivot_root(2) refuses to run while "/" is the initramfs rootfs
#            and crun pivots into every container root;
#   stage 2 (COCOON_STAGE=2): mount the runtime file systems, publish the virtio ports, mount
#            the 9p shares, and exec the agent, which stays PID 1 for the life of the VM.
# Kernel command line knobs (all optional; their names are in the ABI fragment below):
#   cocoon.root=TAG   use the read-only 9p share TAG as "/" instead of the initramfs
#   cocoon.root=/dev/pmem0
#                     mount that EROFS image (virtio-pmem) as "/", with DAX when the device allows it
#   cocoon.template=1 a template boot: leave the shares to the agent
#   cocoon.debug=1    print each step with the guest uptime
PATH=/usr/bin:/usr/sbin:/bin:/sbin
export PATH

# The names and paths the host and the agent agree on (src/core/guest-abi.ts), installed by build.sh.
. /usr/lib/cocoon-init/guest-abi.sh

uptime_s() { read -r up _ </proc/uptime; echo "$up"; }
say() { echo "cocoon-init: $* (uptime $(uptime_s))"; }
debug() { [ "$DEBUG" = 1 ] && say "$@"; return 0; }
die() { say "FATAL: $*"; echo o >/proc/sysrq-trigger; sleep 5; exit 1; }

cmdline_value() {
  for word in $(cat /proc/cmdline); do
    case "$word" in "$1="*) echo "${word#*=}"; return 0 ;; esac
  done
  return 1
}

load_modules() {
  kver=$(uname -r)
  order=/lib/modules/$kver/load-order
  [ -f "$order" ] || return 0
  while read -r ko; do
    # EEXIST (already loaded) is fine; anything else is reported but not fatal, so one
    # missing optional device does not cost the whole VM.
    insmod "/lib/modules/$kver/$ko" 2>/tmp-insmod.err || grep -q 'File exists' /tmp-insmod.err ||
      say "insmod $ko failed: $(cat /tmp-insmod.err)"
  done <"$order"
  rm -f /tmp-insmod.err
}

stage1() {
  mount -t proc -o nosuid,nodev,noexec proc /proc
  mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
  mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
  DEBUG=$(cmdline_value "$COCOON_PARAM_DEBUG" || echo 0)
  export DEBUG
  say "stage 1"
  load_modules
  debug "modules loaded"

  mkdir -p /newroot
  root_tag=$(cmdline_value "$COCOON_PARAM_ROOT" || true)
  case "$root_tag" in
  /dev/*)
    # libnvdimm registers its devices asynchronously after the modules load.
    tries=0
    while [ ! -b "$root_tag" ] && [ $tries -lt 100 ]; do sleep 0.05; tries=$((tries + 1)); done
    # DAX: file reads and mmaps go straight to the host file's pages; no guest page cache copy.
    mount -t erofs -o ro,dax=always "$root_tag" /newroot 2>/dev/null ||
      { say "no DAX on $root_tag, mounting it without"; mount -t erofs -o ro "$root_tag" /newroot; } ||
      die "cannot mount root image $root_tag"
    ;;
  ?*)
    mount -t 9p -o "ro,cache=loose,$COCOON_9P_OPTIONS" "$root_tag" /newroot ||
      die "cannot mount 9p root '$root_tag'"
    ;;
  *)
    # A bind mount of the initramfs moved over "/" has a parent mount, which is all
    # pivot_root needs; nothing is copied.
    mount -o bind / /newroot || die "bind mount of / failed"
    ;;
  esac
  for fs in dev proc sys; do mount -o move "/$fs" "/newroot/$fs" || die "move /$fs failed"; done
  cd /newroot || die "cd /newroot"
  COCOON_STAGE=2
  COCOON_ROOT_TAG=$root_tag
  export COCOON_STAGE COCOON_ROOT_TAG
  if [ -n "$root_tag" ]; then
    exec switch_root /newroot /init
  fi
  mount -o move . / || die "move of new root failed"
  exec chroot . /init
}

publish_virtio_ports() {
  # udev would create /dev/virtio-ports/NAME; there is no udev here.
  mkdir -p "$COCOON_VIRTIO_PORTS_DIR"
  for port in /sys/class/virtio-ports/*; do
    [ -f "$port/name" ] || continue
    name=$(cat "$port/name")
    [ -n "$name" ] && ln -sf "/dev/${port##*/}" "$COCOON_VIRTIO_PORTS_DIR/$name"
  done
}

mount_shares() {
  # Every 9p device except the root one is mounted at $COCOON_SHARE_MOUNT_ROOT/<mount_tag>.
  for dev in /sys/bus/virtio/drivers/9pnet_virtio/virtio*; do
    [ -f "$dev/mount_tag" ] || continue
    tag=$(tr -d '\000' <"$dev/mount_tag")
    [ -n "$tag" ] && [ "$tag" != "$COCOON_ROOT_TAG" ] || continue
    mkdir -p "$COCOON_SHARE_MOUNT_ROOT/$tag"
    mount -t 9p -o "$COCOON_9P_OPTIONS" "$tag" "$COCOON_SHARE_MOUNT_ROOT/$tag" ||
      say "mount of 9p share '$tag' failed"
  done
}

enable_cgroup_controllers() {
  # cgroup v2 only: crun drives it natively, and one hierarchy is one mount.
  mount -t cgroup2 -o nosuid,nodev,noexec,nsdelegate cgroup2 /sys/fs/cgroup || die "cgroup2 mount failed"
  wanted=""
  for c in $(cat /sys/fs/cgroup/cgroup.controllers); do wanted="$wanted +$c"; done
  [ -n "$wanted" ] && echo "$wanted" >/sys/fs/cgroup/cgroup.subtree_control
}

stage2() {
  say "stage 2"
  mkdir -p /dev/pts /dev/shm /dev/mqueue
  mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts /dev/pts
  ln -sf pts/ptmx /dev/ptmx
  mount -t tmpfs -o nosuid,nodev,mode=1777 shm /dev/shm
  mount -t mqueue -o nosuid,nodev,noexec mqueue /dev/mqueue
  ln -sf /proc/self/fd /dev/fd
  ln -sf /proc/self/fd/0 /dev/stdin
  ln -sf /proc/self/fd/1 /dev/stdout
  ln -sf /proc/self/fd/2 /dev/stderr
  mount -t tmpfs -o nosuid,nodev,mode=0755 run /run
  mount -t tmpfs -o nosuid,nodev,mode=1777 tmp /tmp
  mount -t tmpfs -o nosuid,nodev,mode=0755 mnt "$COCOON_SHARE_MOUNT_ROOT"
  enable_cgroup_controllers
  publish_virtio_ports
  # A template VM is snapshotted for cloning; QEMU cannot migrate a mounted 9p share, and each clone
  # has its own, so the agent mounts them after a restore (Restored).
  if [ "$(cmdline_value "$COCOON_PARAM_TEMPLATE" || echo 0)" = 1 ]; then say "template boot: shares are mounted after restore"; else mount_shares; fi
  hostname "$COCOON_HOSTNAME"
  ip link set lo up
  say "exec agent"
  # The agent keeps one threadpool thread in a blocking read of its port for good.
  UV_THREADPOOL_SIZE=8
  export UV_THREADPOOL_SIZE
  exec node --jitless "$COCOON_AGENT_PATH"
}

if [ "${COCOON_STAGE:-1}" = 2 ]; then stage2; else stage1; fi
