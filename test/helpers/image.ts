// Imports the lab's tiny busybox images (built from the host's busybox, no registry) into a harness
// containerd. The image builder itself lives in src/cli/lab/image.ts, shared with `cocoon demo`.
import { createHash } from "node:crypto";
import { join } from "node:path";
import { buildImageTar, BUSYBOX_IMAGE, pauseImage, type ImageOptions } from "../../src/cli/lab/image.js";
import type { Containerd } from "./containerd.js";
import { CRI_NAMESPACE, DEFAULT_NAMESPACE } from "./containerd.js";

export {
  APPLETS,
  buildImage,
  buildImageTar,
  BUSYBOX_BIN,
  BUSYBOX_IMAGE,
  DEFAULT_PATH_ENV,
  INDEX_HTML,
  PAUSE_IMAGE,
  pauseImage,
  type ImageOptions,
} from "../../src/cli/lab/image.js";

export interface ImportOptions extends ImageOptions {
  /** containerd namespace; default `default` (CRI uses `k8s.io`). */
  namespace?: string;
}

/**
 * Builds the image and imports it with `ctr images import`, which also unpacks it into the default
 * (overlayfs) snapshotter for the host platform, so `ctr run` and CRI can use it right away.
 */
export async function importImage(ctrd: Containerd, name: string = BUSYBOX_IMAGE, opts: ImportOptions = {}): Promise<void> {
  const file = join(ctrd.dir, `image-${createHash("sha256").update(name).digest("hex").slice(0, 12)}.tar`);
  buildImageTar(file, name, opts);
  await ctrd.ctr(["images", "import", file], { namespace: opts.namespace ?? DEFAULT_NAMESPACE, timeoutMs: 60_000 });
}

/** Imports the CRI sandbox image into the CRI namespace (or `namespace`). */
export async function importPauseImage(ctrd: Containerd, namespace: string = CRI_NAMESPACE): Promise<void> {
  const { name, ...opts } = pauseImage;
  await importImage(ctrd, name, { ...opts, namespace });
}
