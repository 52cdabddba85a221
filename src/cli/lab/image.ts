// Builds a tiny busybox OCI image as an OCI-layout tarball from the host's static busybox: no registry, no
// network. `ctr images import` takes the tarball as it is; the demo and the integration tests both use it.
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { createTar, type TarEntry } from "./tar.js";

export const BUSYBOX_BIN = "/bin/busybox";
/** The general-purpose image: busybox with its applets on PATH, users root/app/nobody, /var/www/index.html. */
export const BUSYBOX_IMAGE = "cocoon.local/busybox:latest";
/** The CRI sandbox image (containerd's `sandbox_image`): the same busybox, sleeping forever. */
export const PAUSE_IMAGE = "cocoon.local/pause:latest";
export const INDEX_HTML = "<html><body>hello from cocoon</body></html>\n";
export const DEFAULT_PATH_ENV = "PATH=/bin:/usr/bin";

export const APPLETS = [
  "sh", "ls", "echo", "cat", "sleep", "ps", "id", "hostname", "true", "false", "env", "uname", "mount", "umount",
  "grep", "head", "tail", "wc", "yes", "dd", "httpd", "wget", "nc", "kill", "top", "mkdir", "rm", "touch", "stat",
  "date", "seq", "stty", "printf", "tr", "sed", "awk", "free", "cp", "mv", "ln", "chmod", "chown", "pwd", "test",
  "basename", "dirname", "find", "xargs", "cut", "sort", "uniq", "md5sum", "sha256sum", "ping", "ip", "ifconfig",
  "netstat", "nslookup", "whoami", "nproc", "timeout", "hexdump", "od", "sync", "brctl", "tunctl", "mknod",
];

export interface ImageOptions {
  /** Image Cmd; default `["/bin/sh"]`. */
  cmd?: string[];
  entrypoint?: string[];
  /** Image User, e.g. `app`, `1000` or `1000:1000`. */
  user?: string;
  /** Added after `PATH=/bin:/usr/bin`; a `PATH=` entry here replaces that default. */
  env?: string[];
  workingDir?: string;
}

/** The CRI sandbox image: the busybox image that sleeps forever. */
export const pauseImage: { name: string } & ImageOptions = { name: PAUSE_IMAGE, cmd: ["sleep", "2147483647"] };

const MT = {
  index: "application/vnd.oci.image.index.v1+json",
  manifest: "application/vnd.oci.image.manifest.v1+json",
  config: "application/vnd.oci.image.config.v1+json",
  layer: "application/vnd.oci.image.layer.v1.tar",
};

const ociArch = (): string => ({ x64: "amd64", arm64: "arm64", arm: "arm", ppc64: "ppc64le", s390x: "s390x" })[process.arch as string] ?? process.arch;

const PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP = "root:x:0:\napp:x:1000:\nnobody:x:65534:\n";

function layerEntries(): TarEntry[] {
  const entries: TarEntry[] = [];
  for (const d of ["bin", "etc", "proc", "sys", "dev", "var", "var/www", "usr", "usr/bin"]) entries.push({ type: "dir", path: d });
  entries.push({ type: "dir", path: "tmp", mode: 0o1777 });
  entries.push({ type: "dir", path: "root", mode: 0o700 });
  entries.push({ type: "file", path: "bin/busybox", mode: 0o755, data: readFileSync(BUSYBOX_BIN) });
  for (const a of APPLETS) entries.push({ type: "symlink", path: `bin/${a}`, target: "busybox" });
  entries.push({ type: "file", path: "etc/passwd", data: PASSWD });
  entries.push({ type: "file", path: "etc/group", data: GROUP });
  entries.push({ type: "file", path: "var/www/index.html", data: INDEX_HTML });
  return entries;
}

const sha256 = (b: Buffer): string => "sha256:" + createHash("sha256").update(b).digest("hex");

function imageEnv(extra: string[] = []): string[] {
  const hasPath = extra.some((e) => e.startsWith("PATH="));
  return hasPath ? extra : [DEFAULT_PATH_ENV, ...extra];
}

/** Returns the bytes of an OCI-layout tarball holding one image named `name`. */
export function buildImage(name: string, opts: ImageOptions = {}): Buffer {
  const layer = createTar(layerEntries());
  const layerDigest = sha256(layer);
  const config = Buffer.from(
    JSON.stringify({
      architecture: ociArch(),
      os: "linux",
      config: {
        Cmd: opts.cmd ?? ["/bin/sh"],
        ...(opts.entrypoint ? { Entrypoint: opts.entrypoint } : {}),
        Env: imageEnv(opts.env),
        WorkingDir: opts.workingDir ?? "/",
        ...(opts.user ? { User: opts.user } : {}),
      },
      rootfs: { type: "layers", diff_ids: [layerDigest] },
      history: [{ created_by: "cocoon lab image builder" }],
    }),
  );
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MT.manifest,
      config: { mediaType: MT.config, digest: sha256(config), size: config.length },
      layers: [{ mediaType: MT.layer, digest: layerDigest, size: layer.length }],
    }),
  );
  const tag = name.includes(":") && !name.slice(name.lastIndexOf(":")).includes("/") ? name.slice(name.lastIndexOf(":") + 1) : "latest";
  const index = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MT.index,
      manifests: [
        {
          mediaType: MT.manifest,
          digest: sha256(manifest),
          size: manifest.length,
          platform: { architecture: ociArch(), os: "linux" },
          annotations: { "io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag },
        },
      ],
    }),
  );
  const blob = (b: Buffer): TarEntry => ({ type: "file", path: `blobs/sha256/${sha256(b).slice("sha256:".length)}`, data: b });
  return createTar([
    { type: "file", path: "oci-layout", data: JSON.stringify({ imageLayoutVersion: "1.0.0" }) },
    { type: "file", path: "index.json", data: index },
    { type: "dir", path: "blobs" },
    { type: "dir", path: "blobs/sha256" },
    blob(layer),
    blob(config),
    blob(manifest),
  ]);
}

/** Writes the image tarball for `name` to `outPath`. */
export function buildImageTar(outPath: string, name: string, opts: ImageOptions = {}): void {
  writeFileSync(outPath, buildImage(name, opts));
}
