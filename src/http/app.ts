/**
 * What handlers share: configuration, the ticket store, logging, and how a ticket's backend
 * is opened (injectable, so tests can count or fail opens).
 */
import type { Config } from "../config.js";
import type { BufferPool } from "../io/buffers.js";
import type { Logger } from "../log.js";
import type { Authorizer } from "../tickets/authorizer.js";
import type { BackendOpener } from "./connection.js";

export interface App {
  readonly config: Readonly<Config>;
  readonly authorizer: Authorizer;
  readonly log: Logger;
  readonly openBackend: BackendOpener;
  /** The daemon's I/O buffers: data requests lease theirs here ([daemon] max_buffers). */
  readonly buffers: BufferPool;
  /** The data-plane thread serving here ([daemon] workers), named in OPEN lines; undefined on the main thread. */
  readonly worker?: number;
  /** The local service's socket as OPTIONS reports it (`unix_socket`), when it is enabled. */
  localSocket: string | undefined;
}
