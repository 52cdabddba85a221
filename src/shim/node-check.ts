// What `cocoon check` asks of a runtime mode (RuntimeMode.checkNode): one line per prerequisite of the
// mode, OK/WARN/FAIL with a fix. Everything a check looks at goes through NodeView, so the decisions are
// unit-tested against a fake node.
export type CheckLevel = "ok" | "warn" | "fail";

export interface CheckResult {
  name: string;
  /** False only for FAIL: WARN means usable with a caveat. */
  ok: boolean;
  level: CheckLevel;
  detail: string;
  /** What to do about a WARN/FAIL ("" for OK). */
  fix: string;
}

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
  /** Set when the program could not be started at all (e.g. "qemu-system-x86_64: ENOENT"). */
  spawnError?: string;
}

/** The node as the checks see it. */
export interface NodeView {
  run(argv: string[], timeoutMs: number, env?: Record<string, string>): Promise<CommandResult>;
  readFile(path: string): string | undefined;
  exists(path: string): boolean;
  listDir(path: string): string[] | undefined;
  /** Opens a device read-write; returns "" on success or the error code. */
  openRW(path: string): string;
}

export interface NodeCheckOptions {
  /** Skip what takes seconds (test boots of a VM or sandbox); say it was not verified instead. */
  skipSlowProbes: boolean;
  /** Runs the named slow probe: `real(arg)`, unless the caller (a test) substitutes it. */
  probe<A, T>(name: string, arg: A, real: (arg: A) => Promise<T>): Promise<T>;
}

export const ok = (name: string, detail: string): CheckResult => ({ name, ok: true, level: "ok", detail, fix: "" });
export const warn = (name: string, detail: string, fix: string): CheckResult => ({ name, ok: true, level: "warn", detail, fix });
export const fail = (name: string, detail: string, fix: string): CheckResult => ({ name, ok: false, level: "fail", detail, fix });
export const firstLine = (s: string) => s.trim().split("\n")[0] ?? "";

/** `<binary> --version` as a check line: its first line, or a FAIL/WARN when it does not run. */
export async function versionCheck(node: NodeView, name: string, argv: string[], missing: () => CheckResult, describe = (out: string) => firstLine(out)): Promise<CheckResult> {
  const res = await node.run(argv, 10_000);
  if (res.spawnError || res.code !== 0) return missing();
  return ok(name, describe(res.stdout));
}
