/**
 * Starts the services a configuration asks for — remote (TLS), local (unix socket) and
 * control — over one ticket store, and stops them together.
 */

import { randomBytes } from "node:crypto";
import type { AddressInfo } from "node:net";
import type { Config } from "../config.js";
import { ConfigError } from "../errors.js";
import { BufferPool } from "../io/buffers.js";
import type { FileBackendOptions } from "../io/file.js";
import { openFileLimit } from "../io/native.js";
import type { Logger } from "../log.js";
import { Authorizer } from "../tickets/authorizer.js";
import type { Clock } from "../tickets/clock.js";
import type { TicketFields } from "../tickets/ticket.js";
import type { App } from "./app.js";
import { ticketBackendOpener } from "./backends.js";
import type { BackendOpener } from "./connection.js";
import { DataPlane } from "./data-plane.js";
import type { DataService } from "./data-plane-messages.js";
import { ConnectionSlots, imageConnectionLimit } from "./limits.js";
import {
  type ListenAddress,
  type Listener,
  type ListenLimits,
  listen,
  listenForHandOff,
  type TlsFiles,
  tlsFromConfig,
} from "./server.js";

/** Control socket mode: owner and group only ([D11]). */
export const CONTROL_SOCKET_MODE = 0o660;

/** A local socket file's mode: the service user and its group (Vdsm, qemu) may connect. */
export const LOCAL_SOCKET_MODE = 0o660;

export interface ServicesOptions {
  log: Logger;
  clock?: Clock;
  openBackend?: BackendOpener;
  /** Extra file backend options (tests: an O_DIRECT probe that fails). */
  fileOptions?: Pick<FileBackendOptions, "probeDirect">;
  /** Tickets added before any service accepts connections (`--ticket FILE`). */
  tickets?: TicketFields[];
  /** Handshake and request-head deadline (default 60 s; tests shorten it). */
  deadlineMs?: number;
}

export interface RunningServices {
  readonly app: App;
  readonly remote: Listener | undefined;
  readonly local: Listener | undefined;
  readonly control: Listener | undefined;
  /** The threads serving the images services ([daemon] workers > 1), else undefined. */
  readonly dataPlane: DataPlane | undefined;
  /** Stops accepting and waits up to `graceMs` for running requests. */
  close(graceMs?: number): Promise<void>;
}

export async function startServices(config: Readonly<Config>, options: ServicesOptions): Promise<RunningServices> {
  // Each thread lends buffers from its own share of max_buffers, and a thread needs one: more
  // threads than buffers would take more memory than the daemon-wide budget allows.
  const workers = Math.min(config.daemon.workers, config.daemon.max_buffers);
  if (workers < config.daemon.workers) {
    options.log.warning("CONFIG [daemon] workers reduced to max_buffers", {
      workers: config.daemon.workers,
      max_buffers: config.daemon.max_buffers,
      threads: workers,
    });
  }
  if (workers > 1 && (options.clock ?? options.openBackend ?? options.fileOptions) !== undefined) {
    // A fake clock or an injected opener cannot cross into other threads.
    throw new Error("startServices: a clock, backend opener or file options need [daemon] workers = 1");
  }
  // The images services share what the descriptor limit leaves after the control service's
  // reserve, so clients that exhaust them never lock Vdsm out of the control socket.
  const slots = new ConnectionSlots(imageConnectionLimit(openFileLimit()), options.log);
  // An empty socket means "pick one": a random abstract name nobody else uses.
  const localPath = !config.local.enable
    ? undefined
    : config.local.socket === ""
      ? `\0/org/ovirt/imageio-${randomBytes(8).toString("hex")}`
      : config.local.socket;
  const plane =
    workers > 1
      ? await explained(
          "remote",
          config,
          DataPlane.start(workers, {
            config,
            log: options.log,
            tls: tlsFromConfig(config),
            deadlineMs: options.deadlineMs,
            localSocket: localPath,
            slots,
          }),
        )
      : undefined;
  const app: App = {
    config,
    authorizer: new Authorizer(options.clock, plane),
    log: options.log,
    openBackend: options.openBackend ?? ticketBackendOpener(config, options.log, options.fileOptions),
    buffers: new BufferPool(config.daemon.max_buffers),
    localSocket: undefined,
  };
  for (const ticket of options.tickets ?? []) {
    app.authorizer.add(ticket);
    options.log.info("ADD", { transfer: app.authorizer.get(ticket.uuid).label, source: "ticket file" });
  }
  const started: Listener[] = [];
  const imageLimits: ListenLimits = {
    slots,
    ...(options.deadlineMs === undefined ? {} : { deadlineMs: options.deadlineMs }),
  };
  // With a data plane the main thread only accepts, and each thread serves what it is handed.
  const listenImages = (kind: DataService, address: ListenAddress, tls: TlsFiles | undefined) =>
    plane === undefined
      ? listen(app, kind, address, tls, imageLimits)
      : listenForHandOff(kind, address, options.log, (socket) => plane.handOff(socket, kind));
  const controlLimits: ListenLimits = options.deadlineMs === undefined ? {} : { deadlineMs: options.deadlineMs };
  try {
    let local: Listener | undefined;
    if (localPath !== undefined) {
      local = await explained(
        "local",
        config,
        listenImages("local", { path: localPath, mode: LOCAL_SOCKET_MODE }, undefined),
      );
      started.push(local);
      app.localSocket = localPath;
    }
    const remote = await explained(
      "remote",
      config,
      listenImages("remote", { host: config.remote.host, port: config.remote.port }, tlsFromConfig(config)),
    );
    started.push(remote);
    let control: Listener | undefined;
    if (config.control.enable) {
      const address =
        config.control.transport === "tcp"
          ? { host: config.control.prefer_ipv4 ? "127.0.0.1" : "::1", port: config.control.port }
          : { path: config.control.socket, mode: CONTROL_SOCKET_MODE };
      control = await explained("control", config, listen(app, "control", address, undefined, controlLimits));
      started.push(control);
    }
    return {
      app,
      remote,
      local,
      control,
      dataPlane: plane,
      close: async (graceMs) => {
        await Promise.all([...started.map((listener) => listener.close(graceMs)), plane?.close(graceMs ?? 10_000)]);
      },
    };
  } catch (error) {
    await Promise.all([...started.map((listener) => listener.close(0)), plane?.close(0)]);
    throw error;
  }
}

/**
 * A listener, or a ConfigError naming the setting behind its failure (a busy port, a socket
 * path that cannot be created, a TLS key that does not load), so an admin knows what to fix.
 */
async function explained<T>(kind: Listener["kind"], config: Readonly<Config>, listening: Promise<T>): Promise<T> {
  try {
    return await listening;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? "";
    const message = error instanceof Error ? error.message : String(error);
    if (kind === "remote" && config.tls.enable && !/^E[A-Z]+$/.test(code)) {
      throw new ConfigError(`[tls] key_file, cert_file: cannot use the key or certificate: ${message}`, {
        cause: error,
      });
    }
    const setting =
      kind === "remote"
        ? `[remote] host '${config.remote.host}' port ${config.remote.port}`
        : kind === "local"
          ? `[local] socket '${config.local.socket.replace("\0", "@")}'`
          : config.control.transport === "tcp"
            ? `[control] port ${config.control.port}`
            : `[control] socket '${config.control.socket}'`;
    const hint: Record<string, string> = {
      EADDRINUSE: ": another process listens there (ovirt-imageio? systemctl disable --now ovirt-imageio)",
      EACCES: ": permission denied",
      EADDRNOTAVAIL: ": no such address on this host",
      ENOENT: ": its directory does not exist",
    };
    throw new ConfigError(`${setting}: cannot listen: ${message}${hint[code] ?? ""}`, { cause: error });
  }
}

/** The TCP port a listener is bound to. */
export function portOf(listener: Listener | undefined): number {
  return (listener?.address as AddressInfo | undefined)?.port ?? 0;
}
