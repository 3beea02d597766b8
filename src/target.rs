//! Target {host, port, tls} parsed from an absolute URI or a CONNECT authority; the pool key.
