/**
 * The development setup `npm start` runs: a state directory in the working tree with a
 * self-signed certificate (made once with openssl), a configuration listening on
 * 127.0.0.1:54322, a 1 GiB sparse demo image and a demo ticket.
 */
import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { closeSync, existsSync, ftruncateSync, mkdirSync, openSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { ConfigError } from "../errors.js";
import { describeAddress } from "../http/server.js";
import type { RunningServices } from "../http/services.js";
import { GiB } from "../units.js";

export interface DevSetup {
  stateDir: string;
  configFile: string;
  ticketFile: string;
  ticketId: string;
  image: string;
  controlSocket: string;
}

export const DEV_STATE_DIR = ".imageio-dev";

/**
 * Makes a self-signed certificate for localhost and 127.0.0.1 with openssl (Node can make
 * keys but not X.509 certificates). It verifies itself, so it also serves as its own CA.
 * @throws ConfigError when openssl is missing or fails.
 */
export function createSelfSignedCertificate(keyFile: string, certFile: string, days: number): void {
  try {
    execFileSync(
      "openssl",
      [
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        keyFile,
        "-out",
        certFile,
        "-days",
        String(days),
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
      ],
      { stdio: "ignore" },
    );
  } catch (error) {
    throw new ConfigError(`Cannot create a self-signed certificate with openssl: ${(error as Error).message}`);
  }
}

export function prepareDevEnvironment(cwd: string): DevSetup {
  const stateDir = resolve(cwd, DEV_STATE_DIR);
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const key = join(stateDir, "key.pem");
  const cert = join(stateDir, "cert.pem");
  if (!existsSync(key) || !existsSync(cert)) createSelfSignedCertificate(key, cert, 365);
  const image = join(stateDir, "demo.raw");
  if (!existsSync(image)) {
    const fd = openSync(image, "w");
    ftruncateSync(fd, GiB);
    closeSync(fd);
  }
  const controlSocket = join(stateDir, "control.sock");
  const configFile = join(stateDir, "daemon.conf");
  writeFileSync(
    configFile,
    [
      "# Development configuration written by `npm start`; edits are overwritten.",
      "[daemon]",
      `run_dir = ${stateDir}`,
      "drop_privileges = false",
      "systemd_enable = false",
      "[tls]",
      `key_file = ${key}`,
      `cert_file = ${cert}`,
      "[remote]",
      "host = 127.0.0.1",
      "port = 54322",
      "[local]",
      `socket = ${join(stateDir, "local.sock")}`,
      "[control]",
      `socket = ${controlSocket}`,
      "",
    ].join("\n"),
  );
  const ticketId = randomUUID();
  const ticketFile = join(stateDir, "demo-ticket.json");
  writeFileSync(
    ticketFile,
    JSON.stringify({
      uuid: ticketId,
      size: GiB,
      url: `file://${image}`,
      timeout: 86400,
      ops: ["read", "write"],
      sparse: true,
      transfer_id: "demo",
      filename: "demo.raw",
    }),
  );
  return { stateDir, configFile, ticketFile, ticketId, image, controlSocket };
}

export function printDevInstructions(dev: DevSetup, services: RunningServices): void {
  const remote = services.remote ? describeAddress(services.remote.address) : "127.0.0.1:54322";
  const url = `https://${remote}/images/${dev.ticketId}`;
  const lines = [
    "",
    "imageio development daemon is ready. Try:",
    `  curl -k -X OPTIONS ${url}`,
    "  head -c 64M /dev/urandom > disk.raw                # something to upload",
    `  curl -k -T disk.raw ${url}                          # upload`,
    `  curl -k -o copy.raw ${url}                          # download`,
    `  curl -k -r 0-1023 ${url} | xxd | head               # ranged download`,
    `  curl -k -X PATCH --data '{"op": "zero", "offset": 0, "size": 1048576}' ${url}`,
    `  curl -k ${url}/extents`,
    `  curl -k ${url}/checksum`,
    `  curl --unix-socket ${dev.controlSocket} http://localhost/tickets/${dev.ticketId}   # ticket status`,
    "Press Ctrl-C to stop.",
    "",
  ];
  process.stdout.write(`${lines.join("\n")}\n`);
}
