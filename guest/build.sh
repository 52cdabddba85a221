#!/usr/bin/env bash
# Builds the vm-mode guest into guest/out/:
#   vmlinuz              Debian's linux-image-*-amd64 kernel, unchanged (bzImage)
#   vmlinux              the same kernel decompressed: an ELF with a PVH entry note, which QEMU
#                        boots directly (no firmware, no in-guest xz decompression: ~3 s less on TCG)
#   initramfs.cpio.zst   busybox-static + crun + node (+ libraries) + virtio/9p modules + /init + agent
#   initramfs-9p.cpio.zst the same minus node/crun/libraries: it mounts the rootfs/ share as "/"
#   rootfs/              the full tree, for the 9p-root variant (share it read-only, tag cocoon-root)
#   rootfs.erofs         the same tree as an uncompressed EROFS image (4 KiB blocks, padded to 2 MiB):
#                        attached as virtio-pmem and mounted with DAX, so the guest runs node and crun
#                        straight from the host's page cache, shared by every VM, instead of copying
#                        them into its own RAM as it does over 9p (see README.md, "memory")
#   modules-list.txt     the kernel modules /init loads at boot, in load order
#   modules-on-demand.txt the other modules shipped, loaded by the kernel when needed (modprobe)
#   kernel-config        the kernel's own config, to look up what is built in
#   manifest.json        package versions, module list, sizes and sha256 of every output
# Re-running with unchanged inputs does nothing. Inputs: the kernel package apt resolves
# linux-image-amd64 to, the host's busybox/crun/node binaries and the libraries they load, the
# files in guest/, the agent, and the settings below.
#
# Two layers, cached apart: the base (kernel, modules, busybox, crun, node, /init) and the agent
# (agent.cjs + koffi in /usr/lib/cocoon). The all-in-one initramfs is the base archive with the
# agent archive appended (the kernel unpacks concatenated cpio archives one after the other), so
# a new agent costs a few seconds (pack ~4 MB, update rootfs/) instead of recompressing 100 MB.
#
# Settings (environment):
#   COCOON_GUEST_AGENT     agent script run by node as PID 1 (default: dist/cocoon-agent.cjs,
#                          made by `npm run build`, which also writes dist/guest-abi.sh: the names
#                          and paths host and guest agree on, from src/core/guest-abi.ts)
#   COCOON_GUEST_KOFFI     a node_modules directory holding koffi (and its prebuilt native part,
#                          @koromix/koffi-linux-x64) to ship beside the agent (default: the
#                          repository's node_modules when koffi is installed there; set it empty
#                          to ship none). The real agent needs koffi.
#   COCOON_GUEST_COMPRESS  zstd (default; the kernel has CONFIG_RD_ZSTD and unpacks it faster) or gzip
#   COCOON_GUEST_OUT       output directory (default guest/out)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
OUT=${COCOON_GUEST_OUT:-$HERE/out}
AGENT=${COCOON_GUEST_AGENT:-$REPO/dist/cocoon-agent.cjs}
GUEST_ABI=$REPO/dist/guest-abi.sh
[[ -f $GUEST_ABI ]] || { echo "guest/build: error: $GUEST_ABI is missing (run npm run build)" >&2; exit 1; }
# shellcheck source=/dev/null
source "$GUEST_ABI"
AGENT_DIR=${COCOON_AGENT_PATH%/*}
if [[ -f $REPO/node_modules/koffi/package.json ]]; then DEFAULT_KOFFI=$REPO/node_modules; else DEFAULT_KOFFI=""; fi
# Unset means the default; set but empty means "ship no koffi".
KOFFI=${COCOON_GUEST_KOFFI-$DEFAULT_KOFFI}
COMPRESS=${COCOON_GUEST_COMPRESS:-zstd}
KERNEL_META=linux-image-amd64
# Loaded in this order's dependency closure; everything else the guest needs is built in
# (see README.md for the CONFIG_ facts behind this list).
# crc32c_generic comes before erofs: libcrc32c (erofs needs it) asks the crypto API for crc32c when
# it loads, and without modprobe in the guest nothing would load the algorithm on demand.
# ip_tables and ip6_tables are loaded ahead of need: nothing asks the kernel for them (iptables-legacy
# runs modprobe itself, which a container does not have), and once they are in, the tables
# (iptable_filter, iptable_nat, ...) load on demand. About 130 KB of guest memory.
MODULES=(virtio_pci virtio_mmio virtio_console virtio_net virtio_blk virtio_rng
  9pnet_virtio 9p overlay vmw_vsock_virtio_transport
  virtio_pmem nd_pmem crc32c_generic erofs virtio_balloon ip_tables ip6_tables)
# Shipped in the root image but not loaded at boot: what a privileged container does on a host
# (bridges, veths, tun, VLANs, tunnels, nftables/iptables, ipsets, IPVS, tc, fuse, loop). The kernel
# asks for them itself (request_module: "rtnl-link-bridge", "nft-chain-2-nat", "fs-fuse",
# "char-major-10-200", ...) and runs /sbin/modprobe (busybox), which resolves the name through the
# modules.alias and modules.dep that depmod writes for the shipped tree. A boot pays nothing for them.
ON_DEMAND_MODULES=(
  bridge br_netfilter veth tun vxlan geneve macvlan macvtap ipvlan ipvtap dummy 8021q ifb vrf bonding
  wireguard ipip ip_gre sit ip6_tunnel
  sch_ingress sch_htb sch_tbf sch_netem sch_prio cls_u32 cls_bpf cls_flower cls_matchall
  act_mirred act_gact act_bpf
  nf_tables nft_compat nft_ct nft_nat nft_masq nft_chain_nat nft_redir nft_reject_inet nft_reject_ipv4
  nft_reject_ipv6 nft_fib_inet nft_fib_ipv4 nft_fib_ipv6 nft_limit nft_log nft_quota nft_numgen nft_hash
  nft_objref nft_socket nft_tproxy nft_connlimit nft_meta_bridge nft_reject_bridge nf_conntrack_bridge
  nft_dup_ipv4 nft_fwd_netdev nfnetlink_queue nfnetlink_log nf_conntrack_netlink nf_log_syslog
  nf_conntrack_ftp nf_nat_ftp nf_conntrack_tftp nf_nat_tftp
  ip_tables iptable_filter iptable_nat iptable_mangle iptable_raw iptable_security ip6_tables
  ip6table_filter ip6table_nat ip6table_mangle ip6table_raw ipt_REJECT ip6t_REJECT ipt_rpfilter
  ip6t_rpfilter arp_tables arptable_filter arpt_mangle ebtables ebtable_filter ebtable_nat ebtable_broute
  xt_MASQUERADE xt_conntrack xt_addrtype xt_mark xt_comment xt_multiport xt_tcpudp xt_nat xt_REDIRECT
  xt_statistic xt_set xt_physdev xt_CHECKSUM xt_owner xt_limit xt_state xt_recent xt_LOG xt_NFLOG
  xt_NFQUEUE xt_pkttype xt_length xt_iprange xt_hashlimit xt_connmark xt_CT xt_bpf xt_TCPMSS xt_tcpmss
  xt_socket xt_connlimit xt_ipvs xt_u32 xt_devgroup xt_cgroup xt_TPROXY xt_nfacct xt_dscp xt_DSCP
  xt_CLASSIFY xt_helper xt_policy xt_time xt_string xt_esp xt_ecn xt_HL xt_hl xt_mac xt_realm xt_sctp
  xt_quota xt_connbytes xt_connlabel xt_ipcomp xt_TEE xt_IDLETIMER
  ip_set ip_set_hash_ip ip_set_hash_net ip_set_hash_ipport ip_set_hash_ipportip ip_set_hash_ipportnet
  ip_set_hash_netport ip_set_hash_netnet ip_set_bitmap_port ip_set_list_set ip_set_hash_ipmark
  ip_set_hash_netiface ip_vs ip_vs_rr ip_vs_wrr ip_vs_sh ip_vs_lc ip_vs_wlc
  xfrm_user xfrm_interface esp4 esp6 xfrm4_tunnel sctp
  loop fuse binfmt_misc squashfs autofs4 configfs)
EPOCH=${SOURCE_DATE_EPOCH:-1704067200}

log() { echo "guest/build: $*" >&2; }
die() { log "error: $*"; exit 1; }

case "$COMPRESS" in
  gzip) INITRD_EXT=gz; compress() { gzip -n -6; } ;;
  zstd) INITRD_EXT=zst; compress() { zstd -q -19 -T0; } ;;
  *) die "COCOON_GUEST_COMPRESS must be gzip or zstd" ;;
esac
INITRD=initramfs.cpio.$INITRD_EXT
INITRD_9P=initramfs-9p.cpio.$INITRD_EXT

BUSYBOX=/bin/busybox
CRUN=/usr/bin/crun
NODE=/usr/bin/node
for tool in apt-get apt-cache dpkg-deb dpkg-query depmod cpio ldd sha256sum xz mkfs.erofs "$COMPRESS"; do
  command -v "$tool" >/dev/null || die "missing tool: $tool"
done
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' ||
  die "install busybox-static (apt-get install busybox-static): the guest needs its static /bin/busybox"
[[ -x $CRUN ]] || die "install crun (apt-get install crun)"
[[ -x $NODE ]] || die "node is expected at $NODE"
[[ -f $AGENT ]] || die "agent script not found: $AGENT (run npm run build)"
[[ -z $KOFFI || -f $KOFFI/koffi/package.json ]] || die "COCOON_GUEST_KOFFI has no koffi package: $KOFFI"
# koffi loads its native part from the platform package next to it.
KOFFI_PKGS=(koffi @koromix/koffi-linux-x64)

# --- inputs and the cache check ----------------------------------------------------------

# The metapackage depends on exactly one versioned image package, pinned with "(= VERSION)";
# one apt-cache call (about 0.7 s here) tells both.
read -r KPKG KPKG_VERSION < <(apt-cache show --no-all-versions "$KERNEL_META" 2>/dev/null |
  sed -n 's/^Depends:.*\(linux-image-[0-9][^ ,]*\) (= \([^)]*\)).*/\1 \2/p' | head -n1) || true
[[ -n ${KPKG:-} && -n ${KPKG_VERSION:-} ]] || die "apt cannot resolve $KERNEL_META (run apt-get update once)"

host_libs() { # the shared libraries a host binary loads, as ldd names them
  { ldd "$1" 2>/dev/null || true; } | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'
}
pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo unknown; }

base_fingerprint() {
  echo "kernel $KPKG $KPKG_VERSION"
  echo "compress $COMPRESS modules ${MODULES[*]} on-demand ${ON_DEMAND_MODULES[*]} epoch $EPOCH"
  sha256sum "$HERE/build.sh" "$HERE/init.sh" "$GUEST_ABI"
  # Host binaries and their libraries: size and mtime change with every package upgrade.
  { for bin in "$BUSYBOX" "$CRUN" "$NODE"; do echo "$bin"; host_libs "$bin"; done; } |
    LC_ALL=C sort -u | xargs -d '\n' stat -L -c '%n %s %Y'
  command -v strip >/dev/null && echo "strip yes" || echo "strip no"
}
agent_fingerprint() {
  echo "agent $COCOON_AGENT_PATH koffi ${KOFFI:-none}"
  sha256sum "$AGENT"
  if [[ -n $KOFFI ]]; then
    (cd "$KOFFI" && find "${KOFFI_PKGS[@]}" -type f 2>/dev/null | LC_ALL=C sort | xargs -d '\n' sha256sum)
  fi
}
# One build at a time per output directory; a second caller waits, then finds it up to date.
mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9
BASE_INPUTS=$(base_fingerprint)
AGENT_INPUTS=$(agent_fingerprint)
BASE_STAMP=$OUT/.inputs-base
AGENT_STAMP=$OUT/.inputs-agent
# The base layer's own outputs: the initramfs without the agent, and facts for the manifest.
BASE_INITRD=$OUT/.base-$INITRD
BASE_ENV=$OUT/.base.env
stamp_is() { [[ -f $1 ]] && [[ "$(cat "$1")" == "$2" ]]; }
base_present() {
  for f in vmlinuz vmlinux "$INITRD_9P" rootfs/init modules-list.txt modules-on-demand.txt kernel-config; do
    [[ -e $OUT/$f ]] || return 1
  done
  [[ -f $BASE_INITRD && -f $BASE_ENV ]]
}
REBUILD_BASE=1
if stamp_is "$BASE_STAMP" "$BASE_INPUTS" && base_present; then
  REBUILD_BASE=0
  if stamp_is "$AGENT_STAMP" "$AGENT_INPUTS" && [[ -e $OUT/$INITRD && -e $OUT/rootfs.erofs && -e $OUT/manifest.json ]]; then
    log "up to date ($OUT)"
    exit 0
  fi
fi

mkdir -p "$OUT/cache"
WORK=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
pack() { # pack DIR into a compressed newc cpio at FILE
  find "$1" -exec touch -h -d "@$EPOCH" {} +
  (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) |
    nice -n 10 bash -c "$(declare -f compress); compress" >"$2"
}

if [[ $REBUILD_BASE == 1 ]]; then
# --- kernel ------------------------------------------------------------------------------

DEB=$OUT/cache/${KPKG}_${KPKG_VERSION//:/%3a}_amd64.deb
if [[ ! -f $DEB ]]; then
  log "downloading $KPKG=$KPKG_VERSION"
  rm -f "$OUT"/cache/"${KPKG}"_*.deb
  # apt-get verifies the download against the signed package lists.
  (cd "$OUT/cache" && apt-get download -q -o APT::Sandbox::User=root "$KPKG=$KPKG_VERSION" >/dev/null)
  [[ -f $DEB ]] || die "apt-get download did not produce $DEB"
fi
KPKG_SHA256=$(sha256sum "$DEB" | cut -d' ' -f1)

log "extracting $KPKG"
KROOT=$WORK/kernel
nice -n 10 dpkg-deb -x "$DEB" "$KROOT"
KVER=$(cd "$KROOT/lib/modules" && ls | head -n1)
[[ -f $KROOT/boot/vmlinuz-$KVER ]] || die "no boot/vmlinuz-$KVER in $KPKG"
# The package ships no modules.dep (its postinst runs depmod); depmod builds it from the
# dependencies recorded in each module of the package.
depmod -b "$KROOT" "$KVER"
MODDIR=$KROOT/lib/modules/$KVER

declare -A MOD_PATH MOD_DEPS SEEN
while IFS=: read -r mod deps; do
  name=${mod##*/}
  name=${name%%.ko*}
  MOD_PATH[${name//-/_}]=$mod
  MOD_DEPS[$mod]=$deps
done <"$MODDIR/modules.dep"
ORDER=()
visit() { # depth first: a module is listed after everything it needs
  local mod=$1 dep
  [[ -n ${SEEN[$mod]:-} ]] && return
  SEEN[$mod]=1
  for dep in ${MOD_DEPS[$mod]}; do visit "$dep"; done
  ORDER+=("$mod")
}
closure() { # the modules named, with everything they need, appended to ORDER
  local name mod
  for name in "$@"; do
    mod=${MOD_PATH[${name//-/_}]:-}
    if [[ -z $mod ]]; then
      grep -q "/${name//_/[-_]}\.ko" "$MODDIR/modules.builtin" && { log "$name is built in"; continue; }
      die "module $name is neither in $KPKG nor built in"
    fi
    visit "$mod"
  done
}
closure "${MODULES[@]}"
LOAD_ORDER=("${ORDER[@]}")
closure "${ON_DEMAND_MODULES[@]}"
SHIPPED=("${ORDER[@]}")

# --- the initramfs tree ------------------------------------------------------------------

STAGE=$WORK/root
mkdir -p "$STAGE"/{usr/bin,usr/sbin,usr/lib/x86_64-linux-gnu,usr/lib64,etc,dev,proc,sys,run,tmp,mnt,newroot,root}
ln -s usr/bin "$STAGE/bin"
ln -s usr/sbin "$STAGE/sbin"
ln -s usr/lib "$STAGE/lib"
ln -s usr/lib64 "$STAGE/lib64"
chmod 1777 "$STAGE/tmp"
chmod 0700 "$STAGE/root"
mknod -m 0600 "$STAGE/dev/console" c 5 1
mknod -m 0666 "$STAGE/dev/null" c 1 3

copy_libs() { # the libraries of a host binary, at the paths ldd names, contents dereferenced
  local lib
  for lib in $(host_libs "$1"); do
    [[ -e $STAGE$lib ]] || install -D -m 0755 "$(readlink -f "$lib")" "$STAGE$lib"
  done
}

install -m 0755 "$BUSYBOX" "$STAGE/usr/bin/busybox"
install -m 0755 "$CRUN" "$STAGE/usr/bin/crun"
copy_libs "$CRUN"
if command -v strip >/dev/null; then
  # Only debug info and the static symbol table go; .dynsym stays for native addons (koffi).
  strip --strip-unneeded -o "$STAGE/usr/bin/node" "$NODE"
  chmod 0755 "$STAGE/usr/bin/node"
else
  install -m 0755 "$NODE" "$STAGE/usr/bin/node"
fi
copy_libs "$NODE"
for applet in $("$BUSYBOX" --list-full); do
  case "$applet" in bin/* | sbin/* | usr/bin/* | usr/sbin/*) ;; *) continue ;; esac
  [[ -e $STAGE/$applet || -L $STAGE/$applet ]] || ln -s /usr/bin/busybox "$STAGE/$applet"
done

install -m 0755 "$HERE/init.sh" "$STAGE/init"
install -D -m 0644 "$GUEST_ABI" "$STAGE/usr/lib/cocoon-init/guest-abi.sh"

cat >"$STAGE/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
cat >"$STAGE/etc/group" <<'EOF'
root:x:0:
tty:x:5:
nogroup:x:65534:
EOF
printf '127.0.0.1\tlocalhost %s\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' "$COCOON_HOSTNAME" >"$STAGE/etc/hosts"
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$STAGE/etc/nsswitch.conf"
echo "$COCOON_HOSTNAME" >"$STAGE/etc/hostname"
: >"$STAGE/etc/resolv.conf"

GMOD=$STAGE/usr/lib/modules/$KVER
mkdir -p "$GMOD"
for mod in "${SHIPPED[@]}"; do
  # Busybox insmod wants plain ELF; decompress if this kernel ever ships compressed modules.
  dest=$GMOD/${mod%.ko*}.ko
  mkdir -p "${dest%/*}"
  case "$mod" in
    *.ko) cp "$MODDIR/$mod" "$dest" ;;
    *.ko.xz) xz -dc "$MODDIR/$mod" >"$dest" ;;
    *.ko.zst) zstd -qdc "$MODDIR/$mod" >"$dest" ;;
    *.ko.gz) gzip -dc "$MODDIR/$mod" >"$dest" ;;
    *) die "unknown module format: $mod" ;;
  esac
done
printf '%s\n' "${LOAD_ORDER[@]}" | sed 's/\.ko.*$/.ko/' >"$GMOD/load-order"
cp "$MODDIR/modules.builtin" "$MODDIR/modules.builtin.modinfo" "$GMOD/"
printf '%s\n' "${SHIPPED[@]}" | grep -xF -f - "$MODDIR/modules.order" >"$GMOD/modules.order"
# The index of the shipped tree (modules.dep, modules.alias, ...) for modprobe in the guest.
depmod -b "$STAGE/usr" "$KVER"

extract_vmlinux() { # the ELF kernel inside a bzImage (CONFIG_KERNEL_XZ here), checked for PVH
  grep -q '^CONFIG_KERNEL_XZ=y' "$KROOT/boot/config-$KVER" || die "kernel is not xz-compressed; teach extract_vmlinux"
  grep -q '^CONFIG_PVH=y' "$KROOT/boot/config-$KVER" || die "kernel has no PVH entry (CONFIG_PVH)"
  local offset
  for offset in $(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$1" | cut -d: -f1); do
    tail -c +$((offset + 1)) "$1" | xz -dc 2>/dev/null >"$2" || true
    [[ "$(head -c 4 "$2" | od -An -tx1 | tr -d ' ')" == 7f454c46 ]] && return 0
  done
  die "no xz-compressed ELF found in $1"
}

# --- base outputs ------------------------------------------------------------------------

NEW=$WORK/out
mkdir -p "$NEW"
cp "$KROOT/boot/vmlinuz-$KVER" "$NEW/vmlinuz"
extract_vmlinux "$NEW/vmlinuz" "$NEW/vmlinux"
cp "$KROOT/boot/config-$KVER" "$NEW/kernel-config"
cp "$GMOD/load-order" "$NEW/modules-list.txt"
printf '%s\n' "${SHIPPED[@]:${#LOAD_ORDER[@]}}" | sed 's/\.ko.*$/.ko/' >"$NEW/modules-on-demand.txt"
log "packing the base of $INITRD"
pack "$STAGE" "$NEW/.base-$INITRD"

# 9p-root variant: the same tree serves as the shared root; its initramfs only needs what
# stage 1 of /init uses (busybox, modules, /init itself).
cp -a "$STAGE" "$NEW/rootfs"
SMALL=$WORK/small
mkdir -p "$SMALL/usr/bin" "$SMALL/usr/lib"
cp -a "$STAGE/usr/lib/cocoon-init" "$SMALL/usr/lib/"
cp -a "$STAGE"/{bin,sbin,lib,lib64,dev,proc,sys,newroot,init} "$SMALL/"
mkdir -p "$SMALL/usr/sbin" "$SMALL/usr/lib64" "$SMALL/usr/lib/modules/$KVER"
# Only what stage 1 loads: the on-demand modules are in the root it switches to.
(cd "$STAGE/usr/lib/modules/$KVER" && xargs -a load-order cp --parents -t "$SMALL/usr/lib/modules/$KVER" -- load-order)
cp -a "$STAGE/usr/bin/busybox" "$SMALL/usr/bin/"
for applet in $(cd "$STAGE" && find usr/bin usr/sbin -type l); do cp -a "$STAGE/$applet" "$SMALL/$applet"; done
log "packing $INITRD_9P"
pack "$SMALL" "$NEW/$INITRD_9P"

# What the manifest says about the base, kept for agent-only rebuilds.
env_line() { printf '%s=%q\n' "$1" "$2"; }
{
  env_line KVER "$KVER"
  env_line KPKG "$KPKG"
  env_line KPKG_VERSION "$KPKG_VERSION"
  env_line KPKG_SHA256 "$KPKG_SHA256"
  env_line BUSYBOX_VERSION "$(pkg_version busybox-static)"
  env_line CRUN_VERSION "$(pkg_version crun)"
  env_line NODE_PKG_VERSION "$(pkg_version nodejs)"
  env_line NODE_VERSION "$("$NODE" --version)"
  env_line VMLINUZ_SHA "$(sha "$NEW/vmlinuz")"
  env_line VMLINUZ_SIZE "$(size "$NEW/vmlinuz")"
  env_line VMLINUX_SHA "$(sha "$NEW/vmlinux")"
  env_line VMLINUX_SIZE "$(size "$NEW/vmlinux")"
  env_line INITRD_9P_SHA "$(sha "$NEW/$INITRD_9P")"
  env_line INITRD_9P_SIZE "$(size "$NEW/$INITRD_9P")"
  env_line BASE_TREE_SIZE "$(du -sb "$STAGE" | cut -f1)"
} >"$NEW/.base.env"

# Swap the new base in; rootfs/ is a directory, so replace it whole. The agent layer follows.
rm -rf "$OUT/rootfs" "$OUT"/initramfs*.cpio.* "$OUT"/.base-initramfs* "$OUT/.base.env" "$AGENT_STAMP"
mv "$NEW"/* "$NEW"/.base* "$OUT/"
echo "$BASE_INPUTS" >"$BASE_STAMP"
rm -f "$OUT/.inputs" # the single stamp of earlier versions of this script
fi # REBUILD_BASE

# --- agent layer -------------------------------------------------------------------------

# shellcheck disable=SC1090
source "$BASE_ENV"
ASTAGE=$WORK/agent
mkdir -p "$ASTAGE$AGENT_DIR"
install -m 0644 "$AGENT" "$ASTAGE$COCOON_AGENT_PATH"
if [[ -n $KOFFI ]]; then
  for pkg in "${KOFFI_PKGS[@]}"; do
    [[ -d $KOFFI/$pkg ]] || { log "warning: $KOFFI/$pkg missing"; continue; }
    mkdir -p "$ASTAGE$AGENT_DIR/node_modules/$pkg"
    cp -a "$KOFFI/$pkg/." "$ASTAGE$AGENT_DIR/node_modules/$pkg/"
  done
  # The musl build is dead weight on this glibc guest.
  rm -rf "$ASTAGE$AGENT_DIR/node_modules/@koromix/koffi-linux-x64/musl_x64"
fi
log "packing the agent layer ($AGENT)"
pack "$ASTAGE" "$WORK/agent.cpio"
cat "$BASE_INITRD" "$WORK/agent.cpio" >"$WORK/$INITRD"
mv -f "$WORK/$INITRD" "$OUT/$INITRD"
rm -rf "$OUT/rootfs$AGENT_DIR"
cp -a "$ASTAGE$AGENT_DIR" "$OUT/rootfs$AGENT_DIR"

# The DAX root image. Uncompressed (DAX maps file data directly, so it cannot be compressed), data
# not inlined into inodes (DAX needs block-aligned data), fixed timestamps; virtio-pmem wants a size
# that is a multiple of 2 MiB. Built into $WORK and moved, so a running VM never sees it half written.
log "making rootfs.erofs"
mkfs.erofs --quiet -Enoinline_data -T"$EPOCH" "$WORK/rootfs.erofs" "$OUT/rootfs" >/dev/null
img_size=$(size "$WORK/rootfs.erofs")
truncate -s $(((img_size + 2097151) / 2097152 * 2097152)) "$WORK/rootfs.erofs"
mv -f "$WORK/rootfs.erofs" "$OUT/rootfs.erofs"

KVER=$KVER KPKG=$KPKG KPKG_VERSION=$KPKG_VERSION KPKG_SHA256=$KPKG_SHA256 \
  BUSYBOX_VERSION=$BUSYBOX_VERSION CRUN_VERSION=$CRUN_VERSION \
  NODE_PKG_VERSION=$NODE_PKG_VERSION NODE_VERSION=$NODE_VERSION \
  VMLINUZ_SHA=$VMLINUZ_SHA VMLINUZ_SIZE=$VMLINUZ_SIZE \
  VMLINUX_SHA=$VMLINUX_SHA VMLINUX_SIZE=$VMLINUX_SIZE \
  INITRD=$INITRD INITRD_SHA=$(sha "$OUT/$INITRD") INITRD_SIZE=$(size "$OUT/$INITRD") \
  INITRD_9P=$INITRD_9P INITRD_9P_SHA=$INITRD_9P_SHA INITRD_9P_SIZE=$INITRD_9P_SIZE \
  EROFS_SHA=$(sha "$OUT/rootfs.erofs") EROFS_SIZE=$(size "$OUT/rootfs.erofs") \
  TREE_SIZE=$((BASE_TREE_SIZE + $(du -sb "$ASTAGE" | cut -f1))) \
  AGENT_SHA=$(sha "$AGENT") AGENT_PATH=$AGENT AGENT_GUEST_PATH=$COCOON_AGENT_PATH KOFFI=$KOFFI \
  COMPRESS=$COMPRESS MODULES_FILE="$OUT/modules-list.txt" ON_DEMAND_FILE="$OUT/modules-on-demand.txt" \
  "$NODE" -e '
    const fs = require("node:fs");
    const e = process.env;
    const manifest = {
      kernel: { package: e.KPKG, version: e.KPKG_VERSION, debSha256: e.KPKG_SHA256, release: e.KVER,
        vmlinuz: { sha256: e.VMLINUZ_SHA, bytes: Number(e.VMLINUZ_SIZE) },
        vmlinux: { sha256: e.VMLINUX_SHA, bytes: Number(e.VMLINUX_SIZE), boot: "PVH" } },
      initramfs: { file: e.INITRD, compression: e.COMPRESS, sha256: e.INITRD_SHA, bytes: Number(e.INITRD_SIZE),
        unpackedBytes: Number(e.TREE_SIZE) },
      initramfs9p: { file: e.INITRD_9P, sha256: e.INITRD_9P_SHA, bytes: Number(e.INITRD_9P_SIZE), rootfsDir: "rootfs" },
      rootfsImage: { file: "rootfs.erofs", format: "erofs", sha256: e.EROFS_SHA, bytes: Number(e.EROFS_SIZE) },
      packages: { "busybox-static": e.BUSYBOX_VERSION, crun: e.CRUN_VERSION, nodejs: e.NODE_PKG_VERSION },
      node: e.NODE_VERSION,
      agent: { source: e.AGENT_PATH, sha256: e.AGENT_SHA, guestPath: e.AGENT_GUEST_PATH, koffi: e.KOFFI || null },
      modules: fs.readFileSync(e.MODULES_FILE, "utf8").trim().split("\n"),
      modulesOnDemand: fs.readFileSync(e.ON_DEMAND_FILE, "utf8").trim().split("\n"),
    };
    process.stdout.write(JSON.stringify(manifest, null, 2) + "\n");
  ' >"$WORK/manifest.json"
mv -f "$WORK/manifest.json" "$OUT/manifest.json"
echo "$AGENT_INPUTS" >"$AGENT_STAMP"
log "built $OUT: vmlinuz $(size "$OUT/vmlinuz") B, $INITRD $(size "$OUT/$INITRD") B, $INITRD_9P $(size "$OUT/$INITRD_9P") B, rootfs.erofs $(size "$OUT/rootfs.erofs") B ($KPKG $KPKG_VERSION)"
