// mount(2) and umount2(2).
import { check, libc } from "./libc.js";

export function mount(source: string, target: string, fstype: string, flags: number, data: string): void {
  // Empty strings mean "not given": the kernel ignores source/fstype for remounts and binds, and some
  // filesystems reject an empty option string where they accept none.
  const ret = libc().mount(source || null, target, fstype || null, flags, data || null);
  check(ret, "mount", describeMount(source, target, fstype));
}

export function umount(target: string, flags: number): void {
  check(libc().umount2(target, flags), "umount2", target);
}

function describeMount(source: string, target: string, fstype: string): string {
  const what = [fstype && `type ${fstype}`, source && `from ${source}`].filter(Boolean).join(" ");
  return what ? `${target} (${what})` : target;
}
