/**
 * Text in the shapes upstream's Python produces, which clients and tests compare exactly:
 * `json.dumps` output (", " and ": " separators, non-ASCII escaped) and `repr()` of values
 * quoted in error messages.
 */

/** Serializes like Python's `json.dumps(value)` with default arguments. */
export function pythonJson(value: unknown): string {
  if (value === null || value === undefined) return "null";
  if (typeof value === "boolean") return value ? "true" : "false";
  if (typeof value === "number") return Number.isFinite(value) ? String(value) : "null";
  if (value instanceof PythonFloat) return reprFloat(value.value);
  if (typeof value === "string") return asciiJsonString(value);
  if (Array.isArray(value)) return `[${value.map(pythonJson).join(", ")}]`;
  if (typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== undefined);
    return `{${entries.map(([k, v]) => `${asciiJsonString(k)}: ${pythonJson(v)}`).join(", ")}}`;
  }
  return "null";
}

function asciiJsonString(text: string): string {
  return JSON.stringify(text).replace(/[\u007f-\uffff]/g, (c) =>
    c === "\u007f" ? c : `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}

/** Formats like Python's `repr(value)` for JSON-decoded values. */
export function pythonRepr(value: unknown): string {
  if (value === null || value === undefined) return "None";
  if (typeof value === "boolean") return value ? "True" : "False";
  if (typeof value === "number") return String(value);
  if (value instanceof PythonFloat) return reprFloat(value.value);
  if (typeof value === "string") return reprString(value);
  if (Array.isArray(value)) return `[${value.map(pythonRepr).join(", ")}]`;
  if (typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>);
    return `{${entries.map(([k, v]) => `${reprString(k)}: ${pythonRepr(v)}`).join(", ")}}`;
  }
  return String(value);
}

function reprString(text: string): string {
  const quote = text.includes("'") && !text.includes('"') ? '"' : "'";
  let out = "";
  for (const char of text) {
    const code = char.codePointAt(0) ?? 0;
    if (char === "\\") out += "\\\\";
    else if (char === quote) out += `\\${quote}`;
    else if (char === "\n") out += "\\n";
    else if (char === "\r") out += "\\r";
    else if (char === "\t") out += "\\t";
    else if (code < 0x20 || code === 0x7f) out += `\\x${code.toString(16).padStart(2, "0")}`;
    else out += char;
  }
  return `${quote}${out}${quote}`;
}

/**
 * A JSON number written with a fraction or an exponent (`4096.0`, `1e3`), which Python's
 * json.loads makes a float: never an integer, whatever its value. Validators see an object,
 * not a number, so they refuse it where an integer is required, as upstream does.
 */
export class PythonFloat {
  constructor(
    /** The number as the JSON text wrote it. */
    readonly source: string,
  ) {}

  get value(): number {
    return Number(this.source);
  }
}

/** Python's repr() of a float: `4096.0`, `1000.0`, `1.5`, `1e+30`, `1e-07`. */
function reprFloat(value: number): string {
  if (!Number.isFinite(value)) return Number.isNaN(value) ? "nan" : value > 0 ? "inf" : "-inf";
  if (Number.isInteger(value) && Math.abs(value) < 1e16) return `${value}.0`;
  return String(value).replace(/e([+-])(\d)$/, "e$10$2");
}

/** A number token in JSON text, at a position where one may start. */
const JSON_NUMBER = /-?\d+(\.\d+)?([eE][+-]?\d+)?/y;

/**
 * Parses JSON as Python's json.loads sees it: numbers written with a fraction or exponent
 * become PythonFloat (JavaScript would make `4096.0` the integer 4096).
 * @throws SyntaxError for invalid JSON, with JSON.parse's message.
 */
export function parseJsonLikePython(text: string): unknown {
  const value: unknown = JSON.parse(text);
  const floats = floatTokens(text);
  if (floats.length === 0) return value;
  // Valid JSON (parsed above), so the tokens are exact: each float becomes a string only this
  // call can produce, turned back into a PythonFloat by the reviver.
  const marker = `\u0000float-${Math.random().toString(36).slice(2)}:`;
  let marked = "";
  let at = 0;
  for (const [index, token] of floats.entries()) {
    marked += `${text.slice(at, token.start)}${JSON.stringify(`${marker}${index}`)}`;
    at = token.end;
  }
  marked += text.slice(at);
  return JSON.parse(marked, (_key, item: unknown) =>
    typeof item === "string" && item.startsWith(marker)
      ? new PythonFloat((floats[Number(item.slice(marker.length))] as { source: string }).source)
      : item,
  );
}

/** The number tokens of valid JSON text that have a fraction or an exponent. */
function floatTokens(text: string): { start: number; end: number; source: string }[] {
  const tokens: { start: number; end: number; source: string }[] = [];
  for (let i = 0; i < text.length; i++) {
    const char = text[i] as string;
    if (char === '"') {
      // Skip the string, escapes included.
      for (i++; i < text.length && text[i] !== '"'; i++) if (text[i] === "\\") i++;
    } else if (char === "-" || (char >= "0" && char <= "9")) {
      JSON_NUMBER.lastIndex = i;
      const match = JSON_NUMBER.exec(text);
      if (match === null) continue;
      const end = i + match[0].length;
      if (match[1] !== undefined || match[2] !== undefined) tokens.push({ start: i, end, source: match[0] });
      i = end - 1;
    }
  }
  return tokens;
}
