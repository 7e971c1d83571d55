/** `imageio ticket add|show|extend|remove` against a running daemon's control socket. */
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { addTicket, type DaemonProcess, request, startDaemon, ticketStatus } from "./helpers/daemon.js";

const run = promisify(execFile);
const root = new URL("..", import.meta.url).pathname;
let daemon: DaemonProcess;

beforeAll(async () => {
  daemon = await startDaemon();
});
afterAll(async () => {
  await daemon?.stop();
});

async function ticketCli(...args: string[]) {
  try {
    const { stdout, stderr } = await run(process.execPath, [
      `${root}/bin/imageio`,
      "ticket",
      "--config",
      daemon.tmp.path,
      ...args,
    ]);
    return { code: 0, stdout, stderr };
  } catch (error) {
    const failed = error as { code: number; stdout: string; stderr: string };
    return { code: failed.code, stdout: failed.stdout, stderr: failed.stderr };
  }
}

describe("imageio ticket", () => {
  it("adds, shows, extends and removes a ticket", async () => {
    const id = randomUUID();
    const file = daemon.tmp.file("t.json");
    await writeFile(file, JSON.stringify({ uuid: id, size: 1, url: "file:///tmp/x", timeout: 30, ops: ["read"] }));
    expect((await ticketCli("add", file)).code).toBe(0);
    const shown = await ticketCli("show", id);
    expect(shown.code).toBe(0);
    expect(JSON.parse(shown.stdout)).toMatchObject({ uuid: id, timeout: 30 });
    expect((await ticketCli("extend", id, "600")).code).toBe(0);
    expect((await ticketStatus(daemon, id)).timeout).toBe(600);
    expect((await ticketCli("remove", id)).code).toBe(0);
    const gone = await ticketCli("show", id);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toContain("404 No such ticket");
  });

  it("10.15: remove refuses an empty or missing id; only --all removes every ticket", async () => {
    const ids = [randomUUID(), randomUUID()];
    for (const id of ids) {
      await addTicket(daemon, { uuid: id, size: 1, url: "file:///tmp/x", timeout: 30, ops: ["read"] });
    }
    for (const args of [["remove", ""], ["remove", "  "], ["remove"], ["remove", ids[0] as string, "--all"]]) {
      const refused = await ticketCli(...args);
      expect(refused.code, args.join(" ")).toBe(2);
      expect(refused.stderr).toMatch(/imageio ticket remove: .*(--all|not both)/);
    }
    for (const id of ids) expect((await ticketStatus(daemon, id)).uuid).toBe(id);
    expect((await ticketCli("remove", "--all")).code).toBe(0);
    for (const id of ids) {
      const gone = await request(daemon, { service: "control", path: `/tickets/${id}` });
      expect(gone.status).toBe(404);
    }
  });

  it("10.14: the ticket help says inactivity_timeout 0 is refused", async () => {
    const help = await ticketCli("--help");
    expect(help.stdout).toContain("'inactivity_timeout'");
    expect(help.stdout).toContain("0 is refused");
  });

  it("review 16: `imageio ticket add --help` says inactivity_timeout 0 is refused", async () => {
    const help = await ticketCli("add", "--help");
    expect(help.stdout).toMatch(/inactivity_timeout +integer +seconds an idle connection stays open, at least 1\n/);
    expect(help.stdout).toContain("(0 is refused: it would mean never;");
  });

  it("reports invalid tickets and bad arguments", async () => {
    const file = daemon.tmp.file("bad.json");
    await writeFile(file, JSON.stringify({ uuid: "x", size: "1" }));
    const bad = await ticketCli("add", file);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain("400 Invalid ticket");
    expect((await ticketCli("extend", "x", "soon")).code).toBe(2);
    expect((await ticketCli("add", daemon.tmp.file("missing.json"))).stderr).toContain("cannot read");
  });
});
