"""``citycard status``: the running platform's ``GET /health/ready``, for a person.

Exit 0 ready, 1 not ready (the components that are not are named), 2 nothing answers on
``api.host:api.port`` (the platform is not running there, or its API is off).
"""

import argparse
import json

import httpx

from ..config.settings import Settings

TIMEOUT_S = 5.0  # the endpoint answers within its own 2 s checks; more is a platform in trouble


def _base(settings: Settings) -> str:
    host = settings.api.host
    if host in ("0.0.0.0", "::", ""):  # listening everywhere: ask it on this machine
        host = "127.0.0.1"
    return f"http://{host}:{settings.api.port}"


def status_main(settings: Settings, as_json: bool) -> int:
    where = f"api.host:api.port = {settings.api.host}:{settings.api.port}"
    if settings.api.port == 0:
        print(f"citycard status: the HTTP API is off ({where}); set api.port to the running platform's")
        return 2
    try:
        r = httpx.get(_base(settings) + "/health/ready", timeout=TIMEOUT_S)
        body = r.json()
        components = dict(body["components"])
    except httpx.HTTPError as exc:
        print(f"citycard status: no platform answers on {where} ({type(exc).__name__}); "
              "is `citycard up` running with these settings?")
        return 2
    except (ValueError, KeyError, TypeError):
        print(f"citycard status: {where} answers, but not as citycard's /health/ready does (HTTP {r.status_code})")
        return 2
    ready = r.status_code == 200 and body.get("status") == "ready"
    if as_json:
        print(json.dumps(body, indent=2))
    else:
        print(f"platform on {_base(settings)}: {'ready' if ready else 'NOT READY'}")
        width = max(len(name) for name in components) if components else 0
        for name, state in components.items():
            print(f"  {name:<{width}}  {state}")
    return 0 if ready else 1


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    from ..config.settings import load_settings

    sp = sub.add_parser("status", help="is the running platform ready? Postgres, Redis and each shard, "
                        "from its /health/ready (exit 0 ready, 1 not ready, 2 not running)")
    sp.add_argument("--json", action="store_true", help="print the endpoint's JSON answer as it is")
    sp.set_defaults(func=lambda args: status_main(load_settings(args.config), args.json))
