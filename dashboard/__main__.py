"""``python -m dashboard``: serve the live dashboard on DASHBOARD_BIND (127.0.0.1:8050).

Reads the store STORE names (MONGO_URI, POSTGRES_* or COUCHDB_*) and PROMETHEUS_URL (``make
up`` writes them to .run/stack.env and starts the dashboard too: DASHBOARD_URL).  A non-loopback DASHBOARD_BIND needs DASHBOARD_TOKEN.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys

from common.log import setup_logging
from common.settings import DashboardSettings, describe, secret, with_flags
from common.store.opening import configured

log = logging.getLogger("dashboard")


def loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def main(argv=None) -> int:
    setup_logging()
    p = argparse.ArgumentParser(prog="python -m dashboard", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bind", help="host:port (default DASHBOARD_BIND, 127.0.0.1:8050)")
    p.add_argument("--prometheus-url", help="default PROMETHEUS_URL")
    args = p.parse_args(argv)
    settings = with_flags(DashboardSettings, p, dashboard_bind=args.bind, prometheus_url=args.prometheus_url)
    store, backend = configured(p)  # STORE and the chosen store's settings
    host, _, port = settings.dashboard_bind.rpartition(":")
    if not port.isdigit():
        p.error(f"invalid setting: DASHBOARD_BIND={settings.dashboard_bind!r}: expected host:port")
    if not loopback(host) and not secret(settings.dashboard_token):
        p.error(f"invalid setting: DASHBOARD_BIND={settings.dashboard_bind} is not a loopback address: "
                "set DASHBOARD_TOKEN (the page shows the pipeline's images)")
    log.info("%s", describe(settings, store, backend))
    # No access log: the page polls every DASHBOARD_REFRESH_MS, and /?token=... must never
    # reach a log.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    from werkzeug.serving import make_server

    from dashboard.app import create_app

    server = make_server(host.strip("[]"), int(port), create_app(settings, store=store, backend=backend), threaded=True)
    log.info("dashboard on http://%s:%d/", host, server.port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
