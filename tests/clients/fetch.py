"""Requests through portcullis with Python `requests`, as an app using HTTPS_PROXY does.

Usage: python3 fetch.py PLAN_JSON
PLAN_JSON: {"proxy": "http://127.0.0.1:PORT", "ca": "/path/ca.pem" or null,
            "requests": [{"method": "GET", "url": "https://...", "body": "...",
                          "headers": {...}, "sleep_before": 0.0, "new_session": false}]}
One `requests.Session` serves the requests in order (its pooled tunnel is reused) unless a
request asks for a new session. Prints one JSON line: a list of {"status", "body",
"proxy_status"} or {"error"} per request.
"""
import json
import os
import sys
import time

import requests

plan = json.loads(sys.argv[1])
for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "no_proxy"):
    os.environ.pop(var, None)
os.environ["HTTPS_PROXY"] = plan["proxy"]
if plan.get("ca"):
    os.environ["REQUESTS_CA_BUNDLE"] = plan["ca"]

results = []
session = requests.Session()
for r in plan["requests"]:
    time.sleep(r.get("sleep_before", 0))
    if r.get("new_session"):
        session.close()
        session = requests.Session()
    try:
        resp = session.request(r["method"], r["url"], data=r.get("body"),
                               headers=r.get("headers", {}), timeout=30)
        results.append({"status": resp.status_code, "body": resp.text,
                        "proxy_status": resp.headers.get("proxy-status")})
    except Exception as e:  # the test reads the error
        results.append({"error": f"{type(e).__name__}: {e}"})
print(json.dumps(results))
