// A minimal in-memory ustar writer: regular files, directories and symlinks, which is all an image layer
// and an OCI layout archive need here.

export interface TarEntryBase {
  /** Path inside the archive, without a leading slash. */
  path: string;
  mode?: number;
  uid?: number;
  gid?: number;
}

export type TarEntry =
  | (TarEntryBase & { type: "file"; data: Buffer | string })
  | (TarEntryBase & { type: "dir" })
  | (TarEntryBase & { type: "symlink"; target: string });

/** Fixed so that the same input always gives the same bytes (and digests). */
const MTIME = 1_700_000_000;
const BLOCK = 512;

function writeString(buf: Buffer, offset: number, width: number, value: string): void {
  const bytes = Buffer.from(value, "utf8");
  if (bytes.length > width) throw new Error(`tar field too long (${width}): ${value}`);
  bytes.copy(buf, offset);
}

function writeOctal(buf: Buffer, offset: number, width: number, value: number): void {
  // width-1 zero-padded octal digits and a NUL
  const s = value.toString(8);
  if (s.length > width - 1) throw new Error(`tar numeric field overflow: ${value}`);
  writeString(buf, offset, width, s.padStart(width - 1, "0"));
}

/** Splits a long path into ustar's prefix (155) and name (100) at a slash. */
function splitPath(path: string): [prefix: string, name: string] {
  if (Buffer.byteLength(path) <= 100) return ["", path];
  for (let i = path.lastIndexOf("/", path.length - 2); i > 0; i = path.lastIndexOf("/", i - 1)) {
    const prefix = path.slice(0, i);
    const name = path.slice(i + 1);
    if (Buffer.byteLength(prefix) <= 155 && Buffer.byteLength(name) <= 100) return [prefix, name];
  }
  throw new Error(`path too long for ustar: ${path}`);
}

function header(e: TarEntry, size: number): Buffer {
  const h = Buffer.alloc(BLOCK);
  const path = e.type === "dir" && !e.path.endsWith("/") ? e.path + "/" : e.path;
  const [prefix, name] = splitPath(path);
  const defaultMode = e.type === "dir" ? 0o755 : e.type === "symlink" ? 0o777 : 0o644;
  writeString(h, 0, 100, name);
  writeOctal(h, 100, 8, e.mode ?? defaultMode);
  writeOctal(h, 108, 8, e.uid ?? 0);
  writeOctal(h, 116, 8, e.gid ?? 0);
  writeOctal(h, 124, 12, size);
  writeOctal(h, 136, 12, MTIME);
  h.write("        ", 148, "latin1"); // checksum is computed with its own field as spaces
  h.write(e.type === "file" ? "0" : e.type === "dir" ? "5" : "2", 156, "latin1");
  if (e.type === "symlink") writeString(h, 157, 100, e.target);
  h.write("ustar\0", 257, "latin1");
  h.write("00", 263, "latin1");
  writeString(h, 265, 32, e.uid ? String(e.uid) : "root");
  writeString(h, 297, 32, e.gid ? String(e.gid) : "root");
  writeOctal(h, 329, 8, 0);
  writeOctal(h, 337, 8, 0);
  writeString(h, 345, 155, prefix);
  let sum = 0;
  for (const b of h) sum += b;
  writeString(h, 148, 8, sum.toString(8).padStart(6, "0") + "\0 ");
  return h;
}

/** Serialises entries, in order, into a complete tar archive. */
export function createTar(entries: TarEntry[]): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    const data = e.type === "file" ? (typeof e.data === "string" ? Buffer.from(e.data, "utf8") : e.data) : Buffer.alloc(0);
    parts.push(header(e, data.length));
    if (data.length) {
      parts.push(data);
      const pad = (BLOCK - (data.length % BLOCK)) % BLOCK;
      if (pad) parts.push(Buffer.alloc(pad));
    }
  }
  parts.push(Buffer.alloc(BLOCK * 2));
  return Buffer.concat(parts);
}
