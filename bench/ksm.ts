// Kernel samepage merging, for the VM memory test's "what if the host merges identical pages" figure.
// KSM is a host-wide policy (Kata Containers recommends it for density); the bench turns it on only
// when asked (--vm-ksm) and puts every knob back as it found it, unmerging what it merged.
import { readFileSync, writeFileSync } from "node:fs";
import { sleep } from "../test/helpers/util.js";

const KSM = "/sys/kernel/mm/ksm";
const read = (k: string) => readFileSync(`${KSM}/${k}`, "utf8").trim();
const write = (k: string, v: string | number) => writeFileSync(`${KSM}/${k}`, String(v));

export interface KsmStats {
  /** Pages that point at a merged page, beyond the first (the memory saved, in pages). */
  pagesSharing: number;
  pagesShared: number;
  fullScans: number;
}

export function ksmAvailable(): boolean {
  try {
    read("run");
    return true;
  } catch {
    return false;
  }
}

export function ksmStats(): KsmStats {
  return { pagesSharing: Number(read("pages_sharing")), pagesShared: Number(read("pages_shared")), fullScans: Number(read("full_scans")) };
}

/** Turns KSM on with a fast scan rate; the returned function restores the host's settings. */
export function enableKsm(pagesToScan = 2000): () => void {
  const saved = { run: read("run"), pages_to_scan: read("pages_to_scan"), sleep_millisecs: read("sleep_millisecs") };
  write("pages_to_scan", pagesToScan);
  write("sleep_millisecs", 20);
  write("run", 1);
  return () => {
    // run=2 stops ksmd and unmerges everything it merged, so no merged page outlives the bench.
    if (saved.run !== "1") write("run", 2);
    write("run", saved.run === "2" ? 0 : saved.run);
    write("pages_to_scan", saved.pages_to_scan);
    write("sleep_millisecs", saved.sleep_millisecs);
  };
}

/** Waits (bounded) until ksmd has scanned everything `scans` more times: merging takes two scans. */
export async function awaitKsmScans(scans: number, timeoutMs: number): Promise<number> {
  const from = ksmStats().fullScans;
  const t0 = Date.now();
  while (ksmStats().fullScans < from + scans && Date.now() - t0 < timeoutMs) await sleep(500);
  return (Date.now() - t0) / 1000;
}
