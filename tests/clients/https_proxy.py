#!/usr/bin/env python3
"""One GET through portcullis's TLS listener with Python `requests`, presenting a client
certificate to the proxy: what an app does (README, "Client certificates").

urllib3 (>= 1.26) speaks TLS to a proxy whose URL is https://. For https:// URLs it
tunnels (CONNECT) and takes that hop's TLS settings (trust in the proxy's CA, the client
certificate) from `proxy_ssl_context`, while requests' own `verify=` keeps configuring the
origin's TLS inside the tunnel. For http:// URLs it forwards, the proxy hop is the only TLS,
and it takes the settings from the pool's `ssl_context`: left alone, requests would send
those over TLS that is neither verified nor carries the certificate.

Prints the response status, then its body. Used by tests/tls_listener.rs.
"""

import argparse
import ssl
import sys

import requests
from requests.adapters import HTTPAdapter


class ProxyTlsAdapter(HTTPAdapter):
    """An adapter whose connections to an https:// proxy use `context`; mount one with
    `tunnel=True` for https:// URLs and one with `tunnel=False` for http:// URLs."""

    def __init__(self, context, tunnel, **kwargs):
        self._tunnel = tunnel
        self._proxy_tls = {("proxy_ssl_context" if tunnel else "ssl_context"): context}
        super().__init__(**kwargs)

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        proxy_kwargs.update(self._proxy_tls)
        return super().proxy_manager_for(proxy, **proxy_kwargs)

    def cert_verify(self, conn, url, verify, cert):
        if self._tunnel:
            return super().cert_verify(conn, url, verify, cert)
        # An http:// URL: `conn` is the pool to the proxy. requests would switch its
        # verification off (it expects no TLS for http://); the context verifies.
        conn.cert_reqs = "CERT_REQUIRED"
        return None


def main():
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("--proxy", required=True, help="https://host:port of the TLS listener")
    args.add_argument("--proxy-ca", required=True, help="PEM CA that issued the proxy's certificate")
    args.add_argument("--cert", required=True, help="PEM client certificate")
    args.add_argument("--key", required=True, help="PEM key of the client certificate")
    args.add_argument("--ca", help="PEM CA of an https:// origin (inside the tunnel)")
    args.add_argument("--url", required=True)
    a = args.parse_args()

    context = ssl.create_default_context(cafile=a.proxy_ca)
    context.load_cert_chain(a.cert, a.key)
    # urllib3 matches the proxy's name itself (1.26 requires it: it passes no server name
    # for an IP address); the certificate is still verified against proxy_ca.
    context.check_hostname = False
    session = requests.Session()
    session.trust_env = False  # no *_PROXY variables from the test's environment
    session.mount("http://", ProxyTlsAdapter(context, tunnel=False))
    session.mount("https://", ProxyTlsAdapter(context, tunnel=True))
    session.proxies = {"http": a.proxy, "https": a.proxy}
    response = session.get(a.url, verify=a.ca or True, timeout=20)
    print(response.status_code)
    print(response.text)


if __name__ == "__main__":
    sys.exit(main())
