// One request through portcullis with undici's default ProxyAgent, which tunnels every
// request with CONNECT, http:// ones included. Prints {"status":…,"body":…} or {"error":…}.
// Usage: node undici_request.mjs PROXY_URL METHOD URL [BODY]
import { ProxyAgent, request } from 'undici';

const [proxy, method, url, body] = process.argv.slice(2);
const dispatcher = new ProxyAgent(proxy);
try {
  const headers = body === undefined ? {} : { 'content-type': 'text/plain' };
  const res = await request(url, { dispatcher, method, body, headers });
  const text = await res.body.text();
  console.log(JSON.stringify({ status: res.statusCode, body: text }));
} catch (e) {
  console.log(JSON.stringify({ error: String(e && (e.cause || e)) }));
} finally {
  await dispatcher.close();
}
