/**
 * Pieces of HTTP/1.1 syntax (RFC 9110 §5.6.2, RFC 9112) that imageio reads strictly on both of
 * its sides: the images services' own framing (src/http/wire/) and the relay's client.
 */

/** One character of an RFC 9110 token (a method, a field name). */
export const TOKEN_CHAR = "[!#$%&'*+\\-.^_`|~0-9A-Za-z]";

/** The start of a field line (a header or a chunked body's trailer): a token name, then a colon. */
export const FIELD_NAME_COLON = new RegExp(`^${TOKEN_CHAR}+:`);

/** True when `text` holds a control character other than HTAB, which no field value, target or chunked framing line may hold. */
export function hasControl(text: string): boolean {
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if ((code < 0x20 && code !== 0x09) || code === 0x7f) return true;
  }
  return false;
}
