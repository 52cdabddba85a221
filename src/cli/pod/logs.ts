// `cocoon pod logs`: a container's CRI log file, stdout lines to stdout and stderr lines to stderr; with
// --follow until the container exits.
import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { StringDecoder } from "node:string_decoder";
import * as grpc from "@grpc/grpc-js";
import { Option, type Command } from "commander";
import { CriError, type CriClient } from "../cri/client.js";
import { CriLogParser, type LogLine, type LogStream } from "../cri/logs.js";
import { delay } from "../lab/pod.js";
import { ContainerState } from "../../gen/cri/runtime/v1/api_pb.js";
import { count, criCommand, withCri } from "./command.js";
import { callMsOf, PodCliError, processIO, type CommonOptions, type PodIO } from "./common.js";
import { shortId } from "./output.js";
import { resolveContainer } from "./resolve.js";

export interface LogsOptions extends CommonOptions {
  stream?: LogStream;
  tail?: number;
  follow?: boolean;
  timestamps?: boolean;
}

/** Reads a growing file from `offset`; returns the new text and the new offset. */
function readFrom(path: string, offset: number, decoder: StringDecoder): { text: string; offset: number } {
  const fd = openSync(path, "r");
  try {
    const size = fstatSync(fd).size;
    // A file that shrank was rotated or truncated: start over.
    if (size < offset) offset = 0;
    const buf = Buffer.alloc(Math.max(0, size - offset));
    let got = 0;
    while (got < buf.length) {
      const n = readSync(fd, buf, got, buf.length - got, offset + got);
      if (n === 0) break;
      got += n;
    }
    return { text: decoder.write(buf.subarray(0, got)), offset: offset + got };
  } finally {
    closeSync(fd);
  }
}

export async function podLogs(cri: CriClient, ref: string, o: LogsOptions, io: PodIO = processIO): Promise<number> {
  const callMs = callMsOf(o);
  const { container } = await resolveContainer(cri, ref, callMs);
  const { status } = await cri.containerStatus({ containerId: container.id }, { timeoutMs: callMs });
  const logPath = status?.logPath ?? "";
  const name = container.metadata?.name ?? shortId(container.id);
  if (!logPath) throw new PodCliError(`container ${name} has no log file (it was created without a log path)`);
  const emit = (lines: LogLine[]) => {
    let out = "";
    let err = "";
    for (const l of lines) {
      if (o.stream && l.stream !== o.stream) continue;
      const line = `${o.timestamps ? `${l.timestamp} ` : ""}${l.text}\n`;
      if (l.stream === "stderr") err += line;
      else out += line;
    }
    if (out) io.out(out);
    if (err) io.err(err);
  };
  const parser = new CriLogParser();
  const decoder = new StringDecoder("utf8");
  let pos: { text: string; offset: number };
  try {
    pos = readFrom(logPath, 0, decoder);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") {
      if (!o.follow) throw new PodCliError(`the log file of container ${name} does not exist (yet): ${logPath}`);
      pos = { text: "", offset: 0 };
    } else if (code === "EACCES") {
      throw new PodCliError(`cannot read ${logPath}: permission denied (container logs are root's; run as root)`);
    } else {
      throw err;
    }
  }
  let first = parser.push(pos.text);
  if (!o.follow) first = [...first, ...parser.end()];
  if (o.tail !== undefined) {
    const wanted = first.filter((l) => !o.stream || l.stream === o.stream);
    first = o.tail === 0 ? [] : wanted.slice(-o.tail);
  }
  emit(first);
  if (!o.follow) return 0;
  // Following: poll the file until the container has exited and everything it wrote is printed.
  let offset = pos.offset;
  for (let lastCheck = 0; ; ) {
    await delay(250);
    let exited = false;
    if (Date.now() - lastCheck > 1000) {
      lastCheck = Date.now();
      const st = await cri.containerStatus({ containerId: container.id }, { timeoutMs: callMs }).catch((err) => {
        if (err instanceof CriError && err.code === grpc.status.NOT_FOUND) return undefined;
        throw err;
      });
      exited = !st?.status || st.status.state === ContainerState.CONTAINER_EXITED;
    }
    try {
      const next = readFrom(logPath, offset, decoder);
      offset = next.offset;
      emit(parser.push(next.text));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
    if (exited) {
      emit(parser.end());
      return 0;
    }
  }
}

export function logsCommand(): Command {
  return criCommand("logs", "print a container's log (from its CRI log file); stderr lines go to stderr")
    .argument("<container>", "container id (prefix), name, or <pod>/<container>")
    .addOption(new Option("--stream <stream>", "only this stream").choices(["stdout", "stderr"]))
    .option("--tail <lines>", "only the last lines", count)
    .option("-f, --follow", "keep printing new lines until the container exits")
    .option("-t, --timestamps", "prefix each line with its time")
    .action(withCri((cri, ref: string, _o: unknown, cmd: Command) => podLogs(cri, ref, cmd.opts<LogsOptions>())));
}
