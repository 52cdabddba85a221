// mount(2) and umount2(2), and the mount table they change.
import { readFileSync } from "node:fs";
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

/** The mount points of this process's mount namespace, in /proc/self/mountinfo order (a path appears
 *  once per mount stacked on it); [] if mountinfo cannot be read. */
export function mountPoints(): string[] {
  let text = "";
  try {
    text = readFileSync("/proc/self/mountinfo", "utf8");
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const line of text.split("\n")) {
    const mp = line.split(" ")[4];
    // mountinfo escapes space, tab, newline and backslash as octal.
    if (mp) out.push(mp.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))));
  }
  return out;
}
