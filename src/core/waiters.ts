// Promises handed to callers who wait for something that may come later (an exit, an event), each
// wait abandonable through an AbortSignal without consuming what it waited for.

export class AbortableWaiters<T> {
  private list: Array<{ resolve: (v: T) => void; reject: (e: unknown) => void; cleanup: () => void }> = [];

  get size(): number {
    return this.list.length;
  }

  wait(signal?: AbortSignal): Promise<T> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    return new Promise<T>((resolve, reject) => {
      const onAbort = () => {
        const i = this.list.indexOf(w);
        if (i >= 0) this.list.splice(i, 1);
        reject(signal!.reason);
      };
      const w = { resolve, reject, cleanup: () => signal?.removeEventListener("abort", onAbort) };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.list.push(w);
    });
  }

  /** Answers the longest waiting caller; false if nobody waits. */
  resolveOne(v: T): boolean {
    const w = this.list.shift();
    if (!w) return false;
    w.cleanup();
    w.resolve(v);
    return true;
  }

  resolveAll(v: T): void {
    for (const w of this.list.splice(0)) {
      w.cleanup();
      w.resolve(v);
    }
  }

  rejectAll(err: unknown): void {
    for (const w of this.list.splice(0)) {
      w.cleanup();
      w.reject(err);
    }
  }
}
