/** Opens the backend a ticket names, with the daemon's backend settings. */
import type { Config } from "../config.js";
import type { FileBackendOptions } from "../io/file.js";
import { openBackend } from "../io/open.js";
import type { Logger } from "../log.js";
import type { Ticket } from "../tickets/ticket.js";
import type { BackendOpener } from "./connection.js";

/**
 * @param fileOptions extra file backend options; tests inject a failing O_DIRECT probe here.
 */
export function ticketBackendOpener(
  config: Readonly<Config>,
  log: Logger,
  fileOptions: Pick<FileBackendOptions, "probeDirect"> = {},
): BackendOpener {
  const warned = new WeakSet<Ticket>();
  return async (ticket) => {
    const backend = await openBackend(ticket.fields.url, {
      ...fileOptions,
      caFile: config.backend_http.ca_file || config.tls.ca_file,
      readonly: !ticket.mayWrite(),
      direct: config.backend_file.direct as "auto" | "always" | "never",
      maxConnections: config.daemon.max_connections,
      dirty: ticket.fields.dirty,
      nbd: {
        maxRequests: config.backend_nbd.requests,
        requestSize: config.backend_nbd.request_size,
        maxBytes: config.backend_nbd.queue_size,
        handshakeTimeoutMs: config.backend_nbd.handshake_timeout * 1000,
      },
      onDirectFallback: (reason) => {
        // One warning per ticket, not per connection ([D10]).
        if (warned.has(ticket)) return;
        warned.add(ticket);
        log.warning("DIRECT_IO fallback", { transfer: ticket.label, reason });
      },
    });
    const bufferSizes: Record<string, number> = {
      http: config.backend_http.buffer_size,
      nbd: config.backend_nbd.buffer_size,
    };
    const bufferSize = bufferSizes[backend.name] ?? config.backend_file.buffer_size;
    return { backend, bufferSize };
  };
}
