/**
 * Starts the services a configuration asks for — remote (TLS), local (unix socket) and
 * control — over one ticket store, and stops them together.
 */

import { randomBytes } from "node:crypto";
import type { AddressInfo } from "node:net";
import type { Config } from "../config.js";
import { BufferPool } from "../io/buffers.js";
import type { FileBackendOptions } from "../io/file.js";
import type { Logger } from "../log.js";
import { Authorizer } from "../tickets/authorizer.js";
import type { Clock } from "../tickets/clock.js";
import type { TicketFields } from "../tickets/ticket.js";
import type { App } from "./app.js";
import { ticketBackendOpener } from "./backends.js";
import type { BackendOpener } from "./connection.js";
import { type Listener, listen, tlsFromConfig } from "./server.js";

/** Control socket mode: owner and group only ([D11]). */
export const CONTROL_SOCKET_MODE = 0o660;

export interface ServicesOptions {
  log: Logger;
  clock?: Clock;
  openBackend?: BackendOpener;
  /** Extra file backend options (tests: an O_DIRECT probe that fails). */
  fileOptions?: Pick<FileBackendOptions, "probeDirect">;
  /** Tickets added before any service accepts connections (`--ticket FILE`). */
  tickets?: TicketFields[];
}

export interface RunningServices {
  readonly app: App;
  readonly remote: Listener | undefined;
  readonly local: Listener | undefined;
  readonly control: Listener | undefined;
  /** Stops accepting and waits up to `graceMs` for running requests. */
  close(graceMs?: number): Promise<void>;
}

export async function startServices(config: Readonly<Config>, options: ServicesOptions): Promise<RunningServices> {
  const app: App = {
    config,
    authorizer: new Authorizer(options.clock),
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
  try {
    let local: Listener | undefined;
    if (config.local.enable) {
      // An empty socket means "pick one": a random abstract name nobody else uses.
      const path =
        config.local.socket === "" ? `\0/org/ovirt/imageio-${randomBytes(8).toString("hex")}` : config.local.socket;
      local = await listen(app, "local", { path });
      started.push(local);
      app.localSocket = path;
    }
    const remote = await listen(
      app,
      "remote",
      { host: config.remote.host, port: config.remote.port },
      tlsFromConfig(config),
    );
    started.push(remote);
    let control: Listener | undefined;
    if (config.control.enable) {
      const address =
        config.control.transport === "tcp"
          ? { host: config.control.prefer_ipv4 ? "127.0.0.1" : "::1", port: config.control.port }
          : { path: config.control.socket, mode: CONTROL_SOCKET_MODE };
      control = await listen(app, "control", address);
      started.push(control);
    }
    return {
      app,
      remote,
      local,
      control,
      close: async (graceMs) => {
        await Promise.all(started.map((listener) => listener.close(graceMs)));
      },
    };
  } catch (error) {
    await Promise.all(started.map((listener) => listener.close(0)));
    throw error;
  }
}

/** The TCP port a listener is bound to. */
export function portOf(listener: Listener | undefined): number {
  return (listener?.address as AddressInfo | undefined)?.port ?? 0;
}
