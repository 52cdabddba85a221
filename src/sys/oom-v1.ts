// cgroup v1 memory OOM notifications: the kernel signals an eventfd registered through
// cgroup.event_control. Each watcher is one non-blocking eventfd watched by libuv (no threadpool thread,
// no timer), and the watch is unref'd so that watching alone never keeps the process alive.
import { closeSync, existsSync, openSync, readSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { check, libc } from "./libc.js";
import { watchReadable, type ReadableWatch } from "./poll.js";

const EFD_NONBLOCK = 0x800;
const EFD_CLOEXEC = 0x80000;

export function watchOomV1(memCgroupDir: string, onOom: () => void): () => void {
  const efd = check(libc().eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), "eventfd", memCgroupDir);
  try {
    register(memCgroupDir, efd);
  } catch (err) {
    closeSync(efd);
    throw err;
  }

  let watch: ReadableWatch | null = null;
  const stop = () => {
    if (!watch) return;
    // Closing the eventfd is what unregisters the event in the kernel.
    watch.close();
    watch = null;
    closeSync(efd);
  };
  watch = watchReadable(efd, (err) => {
    if (err) return stop();
    if (!drain(efd)) return;
    // The kernel also signals every registered eventfd when the cgroup is removed; that is not an OOM,
    // and nothing more can come from a removed cgroup.
    if (!existsSync(join(memCgroupDir, "memory.oom_control"))) return stop();
    onOom();
  });
  watch.unref();
  return stop;
}

function register(dir: string, efd: number): void {
  // The kernel keeps its own reference to the cgroup, so the control file can be closed right away.
  const controlFd = openSync(join(dir, "memory.oom_control"), "r");
  try {
    writeFileSync(join(dir, "cgroup.event_control"), `${efd} ${controlFd}`);
  } finally {
    closeSync(controlFd);
  }
}

/** Reads (and so resets) the eventfd counter; false if there was nothing to read. */
function drain(efd: number): boolean {
  try {
    return readSync(efd, Buffer.alloc(8), 0, 8, null) === 8;
  } catch {
    return false; // EAGAIN: a spurious wake-up.
  }
}
