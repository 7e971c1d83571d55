/**
 * Issue 13: the browser path, in a real headless Chromium. The page (test/fixtures/
 * portal-uploader.html) does what oVirt's Administration Portal does to upload a disk: Test
 * Connection, then one sliced PUT at a time with CORS, to a daemon ticket directly and through
 * the proxy. The page comes from another loopback origin, and the test CA is trusted the way a
 * user does it, in the NSS database of the browser's HOME.
 */
import { execFile } from "node:child_process";
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { mkdir, readFile, truncate, writeFile } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { promisify } from "node:util";
import puppeteer, { type Browser, type Page } from "puppeteer-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testCerts } from "./helpers/certs.js";
import { addTicket, type DaemonProcess, startDaemon, ticketStatus } from "./helpers/daemon.js";
import { makeTempDir, type TempDir } from "./helpers/tmp.js";

const run = promisify(execFile);
const CHROMIUM = "/usr/bin/chromium";
const PAGE = readFileSync(new URL("./fixtures/portal-uploader.html", import.meta.url), "utf8");
const KiB = 1024;
const CHUNK = 256 * KiB;
/** Four full chunks and a short one: the last PUT is not a multiple of anything. */
const FILE_SIZE = 4 * CHUNK + 12_345;

const missing = [
  existsSync(CHROMIUM) ? undefined : `${CHROMIUM} (Debian: apt-get install chromium)`,
  existsSync("/usr/bin/certutil") ? undefined : "certutil (Debian: apt-get install libnss3-tools)",
].filter((tool) => tool !== undefined);
if (missing.length > 0) console.log(`skipped: the browser test needs ${missing.join(" and ")}`);

interface Attempt {
  start: number;
  end: number;
  status: number;
  lost: boolean;
}
interface UploadResult {
  paused: boolean;
  attempts: Attempt[];
}

/** What the test page defines on its window. */
interface PortalWindow {
  testConnection(base: string): Promise<number>;
  upload(
    base: string,
    ticket: string,
    options: { chunkSize: number; retryDelayMs: number; lostResponse: number },
  ): Promise<UploadResult>;
}

/** Clicks "Test Connection" against `base`; the status the page saw (0 for a TLS or CORS failure). */
function testConnection(page: Page, base: string): Promise<number> {
  return page.evaluate((base) => (globalThis as unknown as PortalWindow).testConnection(base), base);
}

/** Runs the page's upload of the chosen file to `ticket` at `base`. */
function pageUpload(page: Page, base: string, ticket: string, lostResponse = -1): Promise<UploadResult> {
  return page.evaluate(
    (base, ticket, options) => (globalThis as unknown as PortalWindow).upload(base, ticket, options),
    base,
    ticket,
    { chunkSize: CHUNK, retryDelayMs: 50, lostResponse },
  );
}

let tmp: TempDir;
let daemon: DaemonProcess;
let proxy: DaemonProcess;
let pageServer: http.Server;
let pageOrigin: string;
let trusting: Browser;
let upload: string;
let uploadHash: string;

/** A fresh browser profile whose HOME has an NSS database, with the test CA in it or not. */
async function launchBrowser(name: string, trustCa: boolean): Promise<Browser> {
  const home = tmp.file(`home-${name}`);
  const nssdb = `${home}/.pki/nssdb`;
  await mkdir(nssdb, { recursive: true });
  await run("certutil", ["-N", "-d", `sql:${nssdb}`, "--empty-password"]);
  if (trustCa) {
    const { caFile } = await testCerts();
    await run("certutil", ["-A", "-d", `sql:${nssdb}`, "-n", "imageio test CA", "-t", "C,,", "-i", caFile]);
  }
  return puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    env: { ...process.env, HOME: home },
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      `--user-data-dir=${tmp.file(`profile-${name}`)}`,
    ],
  });
}

/** A tab on the test page with the upload file chosen, reporting each finished chunk to `onChunk`. */
async function portalPage(browser: Browser, onChunk: (end: number) => Promise<void>): Promise<Page> {
  const page = await browser.newPage();
  await page.exposeFunction("chunkDone", onChunk);
  await page.goto(`${pageOrigin}/`);
  const input = await page.$("#file");
  if (input === null) throw new Error("the test page has no file input");
  await input.uploadFile(upload);
  return page;
}

async function emptyImage(): Promise<string> {
  const image = tmp.file(`${randomUUID()}.raw`);
  await writeFile(image, "");
  await truncate(image, FILE_SIZE);
  return image;
}

const sha256 = (data: Buffer) => createHash("sha256").update(data).digest("hex");

async function daemonTicket(image: string): Promise<string> {
  const id = randomUUID();
  await addTicket(daemon, { uuid: id, size: FILE_SIZE, ops: ["write"], timeout: 300, url: `file://${image}` });
  return id;
}

/** Runs the portal's upload in the page; checks progress along the way through `ticket`. */
async function portalUpload(
  base: string,
  ticketId: string,
  progressOf: () => Promise<number>,
  lostResponse?: number,
): Promise<{ result: UploadResult; progress: number[] }> {
  const progress: number[] = [];
  const page = await portalPage(trusting, async (end) => {
    const transferred = await progressOf();
    // The chunk that ended at `end` reached the image before the browser saw its answer.
    expect(transferred).toBeGreaterThanOrEqual(end);
    progress.push(transferred);
  });
  try {
    const result = await pageUpload(page, base, ticketId, lostResponse);
    return { result, progress };
  } finally {
    await page.close();
  }
}

function expectConsecutiveChunks(result: UploadResult): void {
  expect(result.paused).toBe(false);
  const succeeded = result.attempts.filter((attempt) => !attempt.lost);
  let next = 0;
  for (const attempt of succeeded) {
    expect(attempt.status).toBe(200);
    expect(attempt.start).toBe(next);
    next = attempt.end + 1;
  }
  expect(next).toBe(FILE_SIZE);
}

describe.skipIf(missing.length > 0)("13: the portal's upload in headless Chromium", () => {
  beforeAll(async () => {
    tmp = await makeTempDir("imageio-browser-");
    const certs = await testCerts();
    [daemon, proxy] = await Promise.all([
      startDaemon({ config: { logging: { level: "INFO" } } }),
      startDaemon({
        command: "proxy",
        config: { backend_http: { ca_file: certs.caFile }, logging: { level: "INFO" } },
      }),
    ]);
    pageServer = http.createServer((_req, res) => {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(PAGE);
    });
    await new Promise<void>((resolve) => pageServer.listen(0, "127.0.0.1", resolve));
    pageOrigin = `http://127.0.0.1:${(pageServer.address() as AddressInfo).port}`;
    upload = tmp.file("disk.iso");
    const data = randomBytes(FILE_SIZE);
    await writeFile(upload, data);
    uploadHash = sha256(data);
    trusting = await launchBrowser("trusting", true);
  }, 120_000);

  afterAll(async () => {
    await trusting?.close();
    pageServer?.close();
    await Promise.all([daemon?.stop(), proxy?.stop()]);
    await tmp?.remove();
  });

  it("13: Test Connection (GET /info/) passes from another origin, directly and through the proxy", async () => {
    const page = await portalPage(trusting, async () => undefined);
    try {
      for (const port of [daemon.remotePort, proxy.remotePort]) {
        const status = await testConnection(page, `https://localhost:${port}`);
        expect(status, `port ${port}`).toBe(200);
      }
    } finally {
      await page.close();
    }
  });

  it("13: sliced upload to a daemon ticket: the bytes, transferred == size, progress never decreasing", async () => {
    const image = await emptyImage();
    const id = await daemonTicket(image);
    const { result, progress } = await portalUpload(
      `https://localhost:${daemon.remotePort}`,
      id,
      async () => (await ticketStatus(daemon, id)).transferred as number,
    );
    expectConsecutiveChunks(result);
    expect(sha256(await readFile(image))).toBe(uploadHash);
    expect(progress).toEqual([...progress].sort((a, b) => a - b));
    expect(progress.at(-1)).toBe(FILE_SIZE);
    expect(await ticketStatus(daemon, id)).toMatchObject({ transferred: FILE_SIZE, active: false });
  }, 60_000);

  it("13: sliced upload through the proxy to a daemon ticket", async () => {
    const image = await emptyImage();
    const daemonId = await daemonTicket(image);
    const proxyId = randomUUID();
    await addTicket(proxy, {
      uuid: proxyId,
      size: FILE_SIZE,
      ops: ["write"],
      timeout: 300,
      url: `https://localhost:${daemon.remotePort}/images/${daemonId}`,
    });
    // The engine shows the host daemon's transferred, which the proxy's writes feed.
    const { result, progress } = await portalUpload(
      `https://localhost:${proxy.remotePort}`,
      proxyId,
      async () => (await ticketStatus(daemon, daemonId)).transferred as number,
    );
    expectConsecutiveChunks(result);
    expect(sha256(await readFile(image))).toBe(uploadHash);
    expect(progress.at(-1)).toBe(FILE_SIZE);
    expect(await ticketStatus(daemon, daemonId)).toMatchObject({ transferred: FILE_SIZE, active: false });
    expect(await ticketStatus(proxy, proxyId)).toMatchObject({ active: false });
  }, 60_000);

  it("13: a chunk the browser sends again after a lost answer is written once more without harm", async () => {
    const image = await emptyImage();
    const id = await daemonTicket(image);
    const { result } = await portalUpload(
      `https://localhost:${daemon.remotePort}`,
      id,
      async () => (await ticketStatus(daemon, id)).transferred as number,
      1,
    );
    expectConsecutiveChunks(result);
    // Chunk 1 went out twice, both answered 200.
    const second = result.attempts.filter((attempt) => attempt.start === CHUNK);
    expect(second.map((attempt) => attempt.status)).toEqual([200, 200]);
    expect(sha256(await readFile(image))).toBe(uploadHash);
    // Rewritten bytes are not counted twice: a resumed upload starts at transferred.
    expect(await ticketStatus(daemon, id)).toMatchObject({ transferred: FILE_SIZE, active: false });
  }, 60_000);

  it("13: a wrong ticket fails the preflight: status 0, retried, paused, nothing written", async () => {
    const image = await emptyImage();
    const id = await daemonTicket(image);
    const { result } = await portalUpload(`https://localhost:${daemon.remotePort}`, randomUUID(), async () => 0);
    expect(result.paused).toBe(true);
    expect(result.attempts.map((attempt) => attempt.status)).toEqual([0, 0, 0, 0]);
    expect(sha256(await readFile(image))).toBe(sha256(Buffer.alloc(FILE_SIZE)));
    expect(await ticketStatus(daemon, id)).toMatchObject({ transferred: 0 });
  }, 60_000);

  it("13: without the CA in the browser's NSS database nothing reaches the daemon", async () => {
    const untrusting = await launchBrowser("untrusting", false);
    try {
      const image = await emptyImage();
      const id = await daemonTicket(image);
      const before = daemon.logs().length;
      const page = await portalPage(untrusting, async () => undefined);
      try {
        const base = `https://localhost:${daemon.remotePort}`;
        const connection = await testConnection(page, base);
        expect(connection).toBe(0);
        const result = await pageUpload(page, base, id);
        expect(result.paused).toBe(true);
        expect(result.attempts.map((attempt) => attempt.status)).toEqual([0, 0, 0, 0]);
      } finally {
        await page.close();
      }
      expect(sha256(await readFile(image))).toBe(sha256(Buffer.alloc(FILE_SIZE)));
      expect(await ticketStatus(daemon, id)).toMatchObject({ transferred: 0 });
      // Not one request got through the handshake.
      expect(daemon.logs().slice(before)).not.toMatch(/ (WRITE|OPTIONS) /);
    } finally {
      await untrusting.close();
    }
  }, 60_000);
});
