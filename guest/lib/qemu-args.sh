# shellcheck shell=bash
# The QEMU command line for one cocoon guest, shared by boot-check.sh and kvm-probe.sh so
# both test exactly what README.md documents. Source it, set the variables, call
# guest_qemu_args; the command is left in the array QEMU_ARGS.
#
#   GUEST_OUT      directory with vmlinuz and the initramfs files (guest/out)
#   MACHINE        q35 | pc | microvm                       (default q35)
#   ACCEL          tcg | kvm                                (default tcg)
#   VARIANT        initramfs | 9p | pmem   (9p: small initramfs, rootfs/ shared read-only as "/";
#                  pmem: small initramfs, rootfs.erofs on virtio-pmem mounted with DAX as "/")
#   MEM            guest memory, QEMU syntax                (default 256M)
#   KVM_CPU        -cpu model under KVM                     (default host)
#   KERNEL_IMAGE   vmlinux (PVH entry, default) | vmlinuz (bzImage, through the firmware)
#   CONSOLE_LOG    file the guest's serial console is written to
#   AGENT_SOCK     unix socket QEMU listens on for the agent port "agent.0"
#   SHARE_DIR      host directory shared read-write with mount_tag "cocoon" (/mnt/cocoon)
#   PIDFILE        where QEMU writes its pid (optional)
#   EXTRA_APPEND   more kernel command line words (optional)

guest_qemu_args() {
  local machine=${MACHINE:-q35} accel=${ACCEL:-tcg} variant=${VARIANT:-initramfs} mem=${MEM:-256M}
  local kernel=${KERNEL_IMAGE:-vmlinux} bus cpu initrd append
  case "$machine" in
    q35 | pc) bus=pci ;;
    # microvm has no PCI: its virtio devices sit on virtio-mmio, announced through ACPI.
    microvm) bus=device ;;
    *) echo "unknown MACHINE $machine" >&2; return 1 ;;
  esac
  case "$accel" in
    tcg) cpu=max ;;
    kvm) cpu=${KVM_CPU:-host} ;;
    *) echo "unknown ACCEL $accel" >&2; return 1 ;;
  esac
  # The initramfs root holds ~100 MB; the kernel's default tmpfs rootfs is capped at half of
  # RAM, ramfs is not, so 256M guests can unpack it.
  # The same fast-boot parameters as src/runtime/vm/qemu.ts (FAST_BOOT_PARAMS; why: see there).
  append="console=ttyS0 quiet panic=-1 rootfstype=ramfs cryptomgr.notests i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd no_timer_check tsc=reliable rcupdate.rcu_expedited=1 pci=lastbus=0"
  if [[ $machine == microvm && $accel == tcg ]]; then
    # microvm has neither HPET nor ACPI PM timer, and under TCG the PIT calibration of the TSC
    # often fails, after which the boot hangs for good. TCG's guest TSC runs at the host's TSC
    # rate, so tell the kernel that rate.
    append+=" tsc_early_khz=$(host_tsc_khz)"
  fi
  initrd=$(ls "$GUEST_OUT"/initramfs.cpio.* | head -n1)
  local memarg=$mem img_bytes
  if [[ $variant == pmem ]]; then
    # As src/runtime/vm/qemu.ts does: maxmem covers the pmem window (2 MiB granules).
    img_bytes=$(stat -c %s "$GUEST_OUT/rootfs.erofs")
    memarg="$mem,slots=1,maxmem=$(($(numfmt --from=iec "$mem") / 1048576 + (img_bytes + 2097151) / 2097152 * 2))M"
  fi
  QEMU_ARGS=(qemu-system-x86_64
    -nodefaults -no-user-config -display none -no-reboot
    -M "$machine" -accel "$accel" -cpu "$cpu" -m "$memarg" -smp 1
    -kernel "$GUEST_OUT/$kernel")
  if [[ $variant == 9p ]]; then
    initrd=$(ls "$GUEST_OUT"/initramfs-9p.cpio.* | head -n1)
    append+=" cocoon.root=cocoon-root"
    QEMU_ARGS+=(-fsdev "local,id=fsroot,path=$GUEST_OUT/rootfs,security_model=none,readonly=on"
      -device "virtio-9p-$bus,fsdev=fsroot,mount_tag=cocoon-root")
  elif [[ $variant == pmem ]]; then
    [[ $bus == pci ]] || { echo "the pmem variant needs a PCI machine (q35 or pc)" >&2; return 1; }
    initrd=$(ls "$GUEST_OUT"/initramfs-9p.cpio.* | head -n1)
    append+=" cocoon.root=/dev/pmem0 swiotlb=512"
    QEMU_ARGS+=(-object "memory-backend-file,id=rootmem,mem-path=$GUEST_OUT/rootfs.erofs,size=$img_bytes,share=off,readonly=on"
      -device "virtio-pmem-pci,memdev=rootmem,id=rootpmem")
  fi
  QEMU_ARGS+=(-initrd "$initrd" -append "$append${EXTRA_APPEND:+ $EXTRA_APPEND}"
    -serial "file:$CONSOLE_LOG"
    -device "virtio-serial-$bus,id=vser0"
    -chardev "socket,id=agent,path=$AGENT_SOCK,server=on,wait=off"
    -device "virtserialport,bus=vser0.0,chardev=agent,name=agent.0"
    -fsdev "local,id=fs0,path=$SHARE_DIR,security_model=none"
    -device "virtio-9p-$bus,fsdev=fs0,mount_tag=cocoon"
    -device "virtio-rng-$bus"
    -device "virtio-balloon-$bus,free-page-reporting=on")
  [[ -n ${PIDFILE:-} ]] && QEMU_ARGS+=(-pidfile "$PIDFILE")
  return 0
}

guest_run_dir() { # a temporary run dir for one bounded boot ($1: name prefix), removed on exit with its QEMU
  RUN=$(mktemp -d "/tmp/$1.XXXXXX")
  CONSOLE_LOG=$RUN/console.log AGENT_SOCK=$RUN/agent.sock SHARE_DIR=$RUN/share PIDFILE=$RUN/qemu.pid
  mkdir -p "$SHARE_DIR"
  trap guest_run_cleanup EXIT
}

guest_run_cleanup() {
  # Only the QEMU this script started: its pid file, and still a QEMU.
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null || true)
  if [[ -n $pid ]] && grep -q '^qemu-system' "/proc/$pid/comm" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
  rm -rf "$RUN"
}

host_tsc_khz() { # the host's TSC rate in kHz, as its kernel reports it
  local mhz
  mhz=$(dmesg 2>/dev/null | sed -n 's/.*tsc: Refined TSC clocksource calibration: \([0-9.]*\) MHz.*/\1/p' | tail -n1)
  [[ -n $mhz ]] || mhz=$(dmesg 2>/dev/null | sed -n 's/.*tsc: Detected \([0-9.]*\) MHz processor.*/\1/p' | tail -n1)
  [[ -n $mhz ]] || mhz=$(awk -F': ' '/^cpu MHz/ {print $2; exit}' /proc/cpuinfo)
  awk -v m="$mhz" 'BEGIN {printf "%d", m * 1000}'
}

guest_agent_kind() { # placeholder | cocoon: which agent the build in $GUEST_OUT ships
  node -e '
    let kind = "placeholder";
    try { kind = JSON.parse(require("node:fs").readFileSync(process.argv[1], "utf8")).agent?.kind ?? kind; } catch {}
    console.log(kind);
  ' "$GUEST_OUT/manifest.json"
}
