"""onco-exercise {sandbox, serve, prescribe, validate, check-config}.

Each command returns an exit code; problems are printed as readable messages on stderr, never as tracebacks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence


def _fail(message: str, code: int = 2) -> int:
    print(f"onco-exercise: {message}", file=sys.stderr)
    return code


def _load_settings(**overrides: object):  # -> Settings
    from pydantic import ValidationError

    from service.config import Settings, settings_problem

    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SystemExit(_fail(settings_problem(exc)))
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app

    settings = _load_settings(mode="serve")
    app = create_app(settings)
    uvicorn.run(app, host=args.host, port=args.port, workers=1, proxy_headers=True, forwarded_allow_ips="*",
                log_config=None, access_log=False)
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    return _fail("the sandbox is not implemented yet")


def cmd_prescribe(args: argparse.Namespace) -> int:
    return _fail("prescribe is not implemented yet")


def cmd_validate(args: argparse.Namespace) -> int:
    return _fail("validate is not implemented yet")


def cmd_check_config(args: argparse.Namespace) -> int:
    return _fail("check-config is not implemented yet")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onco-exercise",
        description="Safe, personalised exercise referral for people with cancer (CDS Hooks + SMART on FHIR).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("sandbox", help="run the service with the embedded sandbox EHR on http://127.0.0.1:8000")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--data-dir", type=Path, default=None, help="where the sandbox keeps its data")
    p.add_argument("--reset", action="store_true", help="start with a clean sandbox (reload the cohort)")
    p.set_defaults(func=cmd_sandbox)

    p = sub.add_parser("serve", help="run the production service (settings from ONCO_EXERCISE_* variables)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("prescribe", help="print the exercise prescription for a FHIR Bundle")
    p.add_argument("bundle", type=Path, help="FHIR R4 Bundle (JSON) with the patient's resources")
    p.add_argument("--now", default=None, help="reference date YYYY-MM-DD (default: today)")
    p.add_argument("--preferences", type=Path, default=None, help="patient preferences (JSON)")
    p.add_argument("--format", choices=("json", "text"), default="json")
    p.set_defaults(func=cmd_prescribe)

    p = sub.add_parser("validate", help="validate FHIR resources or Bundles against R4 and our profiles")
    p.add_argument("files", type=Path, nargs="+")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("check-config", help="check settings and every configured FHIR server")
    p.set_defaults(func=cmd_check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
