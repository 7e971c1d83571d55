/**
 * Raw requests that once hurt the daemon or were answered wrongly: the probes of issue 10 and
 * the bad-input cases of the spec. test/fuzz.test.ts replays them, then mutates them.
 *
 * `{T}` stands for a writable ticket on a scratch image and `{S}` for a read-only ticket on
 * the sentinel image; `{N}` is a fresh id. Entries run on the service they name. Add every
 * new probe here: a fix stays fixed when its request keeps being replayed.
 */

export type CorpusService = "remote" | "local" | "control";

export interface CorpusEntry {
  name: string;
  service: CorpusService;
  raw: string;
  /** The request is acceptable as it is (a success is right); otherwise it must be refused. */
  ok?: true;
}

const ticket = (fields: string) =>
  `{"uuid": "{N}", "size": 1048576, "url": "file:///tmp/imageio-fuzz-never", "timeout": 60, "ops": ["read"]${fields}}`;

const putTicket = (body: string) =>
  `PUT /tickets/{N} HTTP/1.1\r\nHost: x\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;

const patch = (body: string) =>
  `PATCH /images/{T} HTTP/1.1\r\nHost: x\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;

const manyHeaders = Array.from({ length: 1000 }, (_, i) => `X-F${i}: ${i}\r\n`).join("");

export const CORPUS: CorpusEntry[] = [
  // Item 1: methods Node hands over outside its request path.
  { name: "connect", service: "control", raw: "CONNECT a:1 HTTP/1.1\r\n\r\n" },
  { name: "connect-local", service: "local", raw: "CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\n\r\n" },
  { name: "connect-remote", service: "remote", raw: "CONNECT 127.0.0.1:22 HTTP/1.1\r\n\r\n" },
  {
    name: "websocket-upgrade",
    ok: true,
    service: "local",
    raw: "GET /images/{S} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
  },
  {
    name: "h2c-upgrade",
    ok: true,
    service: "remote",
    raw: "OPTIONS /images/{S} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\n",
  },
  { name: "http2-preface", service: "local", raw: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" },
  // Item 5: a Content-Range past Node's header count.
  {
    name: "header-1001-content-range",
    service: "local",
    raw: `PUT /images/{S} HTTP/1.1\r\nHost: x\r\n${manyHeaders}Content-Range: bytes 4096-4099/*\r\nContent-Length: 4\r\n\r\nXXXX`,
  },
  // Item 6: codings nobody can decode.
  {
    name: "te-gzip",
    service: "local",
    raw: "PUT /images/{T} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
  },
  {
    name: "te-identity",
    service: "remote",
    raw: "PUT /images/{T} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\nabc",
  },
  {
    name: "te-and-length",
    service: "local",
    raw: "PUT /images/{S} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
  },
  // Item 7: PATCH bodies.
  { name: "patch-op-object", service: "local", raw: patch('{"op": {"toString": 1}, "size": 4096}') },
  { name: "patch-op-array", service: "local", raw: patch('{"op": ["zero"], "size": 4096}') },
  { name: "patch-size-float", service: "local", raw: patch('{"op": "zero", "size": 4096.0}') },
  { name: "patch-size-exponent", service: "remote", raw: patch('{"op": "zero", "size": 1e3}') },
  { name: "patch-not-object", service: "local", raw: patch("[1, 2]") },
  { name: "patch-bad-json", service: "local", raw: patch('{"op": "zero", "size": }') },
  {
    name: "patch-sentinel",
    service: "local",
    raw: 'PATCH /images/{S} HTTP/1.1\r\nHost: x\r\nContent-Length: 29\r\n\r\n{"op": "zero", "size": 65536}',
  },
  // Item 8: checksum parameters.
  {
    name: "checksum-negative",
    service: "local",
    raw: "GET /images/{S}/checksum?block_size=-4096 HTTP/1.1\r\nHost: x\r\n\r\n",
  },
  {
    name: "checksum-huge",
    service: "remote",
    raw: "GET /images/{S}/checksum?block_size=99999999999999999999999&algorithm=md5 HTTP/1.1\r\nHost: x\r\n\r\n",
  },
  // Item 9: absolute-form targets.
  {
    name: "absolute-form",
    ok: true,
    service: "remote",
    raw: "GET https://localhost/images/{S} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n",
  },
  { name: "absolute-form-other-scheme", service: "local", raw: "GET ftp://h/images/{S} HTTP/1.1\r\nHost: x\r\n\r\n" },
  // Items 12 and 14: tickets a manager could get wrong.
  {
    name: "ticket-nbd",
    service: "control",
    raw: putTicket(ticket("").replace("file:///tmp/imageio-fuzz-never", "nbd:unix:/x")),
  },
  { name: "ticket-relative-file", service: "control", raw: putTicket(ticket("").replace("file:///tmp/", "file:tmp/")) },
  { name: "ticket-size-float", service: "control", raw: putTicket(ticket("").replace("1048576", "1.0")) },
  { name: "ticket-inactivity-zero", service: "control", raw: putTicket(ticket(', "inactivity_timeout": 0')) },
  {
    name: "ticket-id-control-chars",
    ok: true,
    service: "control",
    raw: putTicket(ticket(', "transfer_id": "a\\nb\\u0000c"')).replace("/tickets/{N}", "/tickets/x%0Ay%00z"),
  },
  // Bad framing and heads (spec §3).
  {
    name: "negative-length",
    service: "local",
    raw: "PUT /images/{S} HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
  },
  { name: "bad-length", service: "remote", raw: "PUT /images/{S} HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n" },
  { name: "unknown-method", service: "local", raw: "FOO /images/{S} HTTP/1.1\r\nHost: x\r\n\r\n" },
  { name: "long-request-line", service: "local", raw: `GET /images/${"x".repeat(5000)} HTTP/1.1\r\nHost: x\r\n\r\n` },
  { name: "http-0.9", service: "local", raw: "GET /images/{S}\r\n\r\n" },
  { name: "bare-lf", service: "local", raw: "GET /images/{S} HTTP/1.1\nHost: x\n\n" },
  { name: "header-no-colon", service: "control", raw: "GET /tickets/{N} HTTP/1.1\r\nHost x\r\n\r\n" },
  { name: "obs-fold", service: "local", raw: "GET /images/{S} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-\r\n 9\r\n\r\n" },
  // Ranges and writes (spec §4, §5.5).
  { name: "range-garbage", service: "local", raw: "GET /images/{S} HTTP/1.1\r\nHost: x\r\nRange: bytes=9-1\r\n\r\n" },
  {
    name: "range-huge",
    service: "remote",
    raw: "GET /images/{S} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-99999999999999999999\r\n\r\n",
  },
  {
    name: "put-sentinel",
    service: "local",
    raw: "PUT /images/{S} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nXXXX",
  },
  {
    name: "put-past-end",
    service: "local",
    raw: "PUT /images/{T} HTTP/1.1\r\nHost: x\r\nContent-Range: bytes 1048575-1048579/*\r\nContent-Length: 5\r\n\r\nXXXXX",
  },
  {
    name: "put-short-body",
    service: "remote",
    raw: "PUT /images/{T} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nXXXX",
  },
  {
    name: "put-chunked-bad-size",
    service: "local",
    raw: "PUT /images/{T} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
  },
  {
    name: "extents-bad-context",
    service: "local",
    raw: "GET /images/{S}/extents?context=x HTTP/1.1\r\nHost: x\r\n\r\n",
  },
  { name: "ticket-json-null", service: "control", raw: putTicket("null") },
  {
    name: "ticket-extend-float",
    service: "control",
    raw: 'PATCH /tickets/{N} HTTP/1.1\r\nHost: x\r\nContent-Length: 17\r\n\r\n{"timeout": 1.5}',
  },
  {
    name: "pipelined-after-close",
    ok: true,
    service: "local",
    raw: "GET /images/{S}?close=y HTTP/1.1\r\nHost: x\r\nRange: bytes=0-0\r\n\r\nPUT /images/{S} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nX",
  },
];
