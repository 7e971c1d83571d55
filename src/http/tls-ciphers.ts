/**
 * The cipher suites the images service offers. TLS 1.3 suites are all AEAD with forward
 * secrecy; on TLS 1.2 only ECDHE key exchange with an AEAD cipher is offered: no static RSA
 * (no forward secrecy), no CBC with SHA-1 or SHA-2 MACs, no CCM or ARIA.
 */

/** TLS 1.3 suites in our order of preference: AES-128-GCM first (as BoringSSL and Go do), as safe and cheaper. */
const TLS13_SUITES = ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"];

/** TLS 1.2: ECDHE with AEAD only, ECDSA certificates before RSA ones, AES-128 before AES-256. */
const TLS12_SUITES = [
  "ECDHE-ECDSA-AES128-GCM-SHA256",
  "ECDHE-RSA-AES128-GCM-SHA256",
  "ECDHE-ECDSA-AES256-GCM-SHA384",
  "ECDHE-RSA-AES256-GCM-SHA384",
  "ECDHE-ECDSA-CHACHA20-POLY1305",
  "ECDHE-RSA-CHACHA20-POLY1305",
];

/**
 * TLS 1.0 and 1.1 have no AEAD suite: with `enable_tls1_1` these ECDHE CBC suites come back
 * (after the AEAD ones, so TLS 1.2 clients still get AEAD), and OpenSSL 3 needs security
 * level 0 to use them at all.
 */
const TLS11_SUITES = [
  "ECDHE-ECDSA-AES128-SHA",
  "ECDHE-RSA-AES128-SHA",
  "ECDHE-ECDSA-AES256-SHA",
  "ECDHE-RSA-AES256-SHA",
];

/** The OpenSSL cipher string for the server (TLS 1.3 suites included, which Node accepts here). */
export function serverCiphers(enableTls11: boolean): string {
  const suites = [...TLS13_SUITES, ...TLS12_SUITES];
  if (enableTls11) suites.push(...TLS11_SUITES, "@SECLEVEL=0");
  return suites.join(":");
}
