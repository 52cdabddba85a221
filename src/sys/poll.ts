// Readiness of a raw fd on Node's own event loop (a libuv poll handle through koffi.node.poll): waiting
// costs no threadpool thread and no timer, and stopping is immediate.
import { libc } from "./libc.js";

export interface ReadableWatch {
  close(): void;
  unref(): void;
}

/** Calls onReadable (with null) each time `fd` is readable or hung up, or once with an Error if polling
 *  fails. The fd must not be watched by anything else on the loop; close the watch before closing the fd. */
export function watchReadable(fd: number, onReadable: (err: Error | null) => void): ReadableWatch {
  const { koffi } = libc();
  // koffi 3.3 calls back with (status, events) although its typings say (events); accept both.
  const handle = koffi.node.poll(fd, { readable: true, disconnect: true }, ((...args: unknown[]) => {
    const status = typeof args[0] === "number" ? args[0] : 0;
    onReadable(status < 0 ? new Error(`poll fd ${fd}: libuv status ${status}`) : null);
  }) as never);
  let open = true;
  return {
    close() {
      if (open) handle.close();
      open = false;
    },
    unref() {
      if (open) handle.unref();
    },
  };
}
