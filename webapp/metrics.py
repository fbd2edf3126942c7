"""The web app's Prometheus metrics (no user names, no ids: outcomes and statuses only)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

SIGN_INS = Counter("wpc_web_sign_ins_total", "Sign-in attempts, by outcome (ok, refused)", ["outcome"])
PAGE_ERRORS = Counter("wpc_web_error_pages_total", "Error pages shown, by HTTP status", ["status"])
LIVE_STREAMS = Gauge("wpc_web_live_streams", "Open live worklist streams (Server-Sent Events)")
