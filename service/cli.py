"""onco-exercise {sandbox, serve, prescribe, validate, check-config, terminology, state-key}.

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
    """Production server: settings validated before anything starts; refuses settings that cannot work."""
    import logging

    import uvicorn

    from service.app import create_app
    from service.logs import configure_logging

    settings = _load_settings(mode="serve")
    errors, warnings = settings.serve_problems()
    if errors:
        return _fail("refusing to start:\n  " + "\n  ".join(errors))
    configure_logging(settings.log_level, settings.log_json)
    log = logging.getLogger("onco_exercise.serve")
    for w in warnings:
        log.warning("configuration: %s", w)
    try:
        app = create_app(settings)
    except (ValueError, OSError) as exc:  # e.g. an unreadable key file named in the settings
        return _fail(f"cannot start: {exc}")
    from service.server import server_config

    everywhere = args.host in ("0.0.0.0", "::", "")
    log.info("starting on %s:%d%s (public URL %s, %d FHIR server(s), %d CDS client(s))", args.host, args.port,
             " - all network interfaces; use --host 127.0.0.1 behind a proxy on the same machine" if everywhere
             else "", settings.public_url, len(settings.fhir_servers), len(settings.cds_clients))
    # proxy_headers: replicas run behind a reverse proxy (docker/nginx.conf); uvicorn's own logging is routed
    # through ours so it is JSON and redacted too; access lines come from service.ops; limits: service.server.
    config = server_config(app, settings, args.host, args.port, proxy_headers=True, forwarded_allow_ips="*")
    uvicorn.Server(config).run()
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    """Everything on one origin with the embedded EHR; loopback only unless explicitly allowed (see docs/sandbox.md)."""
    import asyncio
    import errno
    import ipaddress
    import logging
    import os
    import socket

    host = args.host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = False
    if not loopback and os.environ.get("ONCO_EXERCISE_SANDBOX_ALLOW_REMOTE") != "1":
        return _fail(f"the sandbox binds loopback addresses only (got --host {host}): its sign-in has no passwords "
                     "and its data is synthetic. Set ONCO_EXERCISE_SANDBOX_ALLOW_REMOTE=1 to bind it anyway "
                     "(e.g. inside a container), or use `onco-exercise serve` against a real EHR.")
    if not 0 < args.port < 65536:
        return _fail(f"--port must be between 1 and 65535 (got {args.port})")

    overrides: dict[str, object] = {"mode": "sandbox", "sandbox_reset": bool(args.reset)}
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir.expanduser().resolve()
    if not os.environ.get("ONCO_EXERCISE_PUBLIC_URL"):
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "localhost") else host
        if ":" in shown and not shown.startswith("["):
            shown = f"[{shown}]"
        overrides["public_url"] = f"http://{shown}:{args.port}"
        if "ONCO_EXERCISE_COOKIE_SECURE" not in os.environ:
            overrides["cookie_secure"] = False  # plain http on loopback: Secure cookies would never come back
    settings = _load_settings(**overrides)

    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), args.port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return _fail(f"port {args.port} on {host} is already in use (is another sandbox running?); "
                             f"stop it or choose another port with --port")
            return _fail(f"cannot listen on {host}:{args.port}: {exc.strerror}")

    import uvicorn

    from service.app import create_app
    from service.logs import configure_logging

    json_logs = settings.log_json if "ONCO_EXERCISE_LOG_JSON" in os.environ else False
    configure_logging(settings.log_level, json_logs)
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        app = create_app(settings)
    except (ValueError, OSError) as exc:
        return _fail(f"cannot start the sandbox: {exc}")
    from service.server import server_config

    config = server_config(app, settings, host.strip("[]"), args.port, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    base = settings.public_url

    async def run() -> bool:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started:
            print(
                "\nonco-exercise sandbox is ready (synthetic data only; Ctrl+C to stop)\n"
                f"  EHR screen (start here)  {base}/sandbox/\n"
                f"  FHIR R4 base             {base}/sandbox/fhir\n"
                f"  SMART configuration      {base}/sandbox/fhir/.well-known/smart-configuration\n"
                f"  CDS Hooks discovery      {base}/cds-services\n"
                f"  SMART app launch URL     {base}/smart/launch\n"
                f"  Exercise-service inbox   {base}/sandbox/exercise-service/\n"
                f"  Data directory           {settings.data_dir}{'  (reset)' if settings.sandbox_reset else ''}\n",
                flush=True,
            )
        await task
        return server.started

    try:
        started = asyncio.run(run())
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl+C after its graceful shutdown: a normal stop
        if not server.started:
            return 130
        started = True
    except SystemExit as exc:  # uvicorn exits this way when it cannot bind or start
        return _fail("the sandbox did not start (see the messages above)", int(exc.code or 1))
    if not started:
        return _fail("the sandbox did not start (see the messages above)", 1)
    logging.getLogger("onco_exercise.sandbox").info("sandbox stopped")
    return 0


def cmd_prescribe(args: argparse.Namespace) -> int:
    """Print the prescription for a FHIR R4 Bundle; every input problem is one readable line, exit 2."""
    import json
    from datetime import datetime, time, timezone

    from service.clinical.prescribe import prescribe
    from service.clinical.serialize import preferences_from_json, prescription_to_json, prescription_to_text
    from service.clinical.snapshot import build_snapshot_report, check_r4_bundle
    from service.terminology import TerminologyError

    def load(path: Path, what: str) -> object:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ValueError(f"{what} file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read {what} file {path}: {exc}") from None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{path} is not JSON: {exc}") from None

    try:
        if args.now:
            try:
                day = datetime.strptime(args.now, "%Y-%m-%d").date()
            except ValueError:
                raise ValueError(f"--now {args.now!r} is not a date (YYYY-MM-DD)") from None
            now = datetime.combine(day, time(23, 59, 59), tzinfo=timezone.utc)
        else:
            now = datetime.now(timezone.utc)
        bundle = load(args.bundle, "bundle")
        check_r4_bundle(bundle, str(args.bundle))
        prefs = None
        if args.preferences is not None:
            raw = load(args.preferences, "preferences")
            try:
                prefs = preferences_from_json(raw)
            except ValueError as exc:
                raise ValueError(f"{args.preferences}: {exc}") from None
        snapshot, issues = build_snapshot_report(bundle, now)
        prescription = prescribe(snapshot, now, prefs)
    except TerminologyError as exc:
        return _fail(f"terminology: {exc}", 1)
    except ValueError as exc:
        return _fail(str(exc))
    for issue in issues:
        print(f"onco-exercise: note: {issue}", file=sys.stderr)
    if args.format == "text":
        sys.stdout.write(prescription_to_text(prescription))
        return 0
    resources = []
    if prescription.eligible and prescription.patient_ref:
        from service.fhir.preview import preview_transaction

        resources = [preview_transaction(prescription, snapshot, bundle, args.signer)]
    sys.stdout.write(json.dumps(prescription_to_json(prescription, resources), indent=2, ensure_ascii=False) + "\n")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Exit 0 when every file is valid, 1 when any has an error, 2 when a file is unreadable or not JSON."""
    import json

    from service.fhir.validate import validate_resource

    counts = {"error": 0, "warning": 0, "information": 0}
    unreadable = 0
    for path in args.files:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            unreadable += 1
            _fail(f"{path}: cannot read file ({getattr(exc, 'strerror', None) or exc})")
            continue
        except ValueError as exc:
            unreadable += 1
            _fail(f"{path}: not valid JSON ({exc})")
            continue
        issues = validate_resource(data)
        for issue in issues:
            counts[issue.severity] = counts.get(issue.severity, 0) + 1
            print(f"{path}: {issue.severity}: {issue.path}: {issue.message}")
        if not any(i.severity == "error" for i in issues):
            print(f"{path}: valid" + (f" ({len(issues)} note(s))" if issues else ""))
    summary = (f"{len(args.files)} file(s) checked: {counts['error']} error(s), {counts['warning']} warning(s)"
               + (f", {unreadable} unreadable" if unreadable else ""))
    print(summary)
    return 2 if unreadable else (1 if counts["error"] else 0)


def cmd_check_config(args: argparse.Namespace) -> int:
    from service.checks import check_config

    return check_config()


def cmd_state_key(args: argparse.Namespace) -> int:
    """Rotate the keys that seal the state store (docs/operations.md, "Key rotation")."""
    import asyncio

    from service.sealing import KeyRingError, key_file_path, new_key, read_key_file, write_key_file
    from service.state import open_state_store

    settings = _load_settings()
    if args.action == "new":
        k = new_key()
        print(f"{k['kid']}:{k['k']}")
        return 0
    if args.action in ("rotate", "retire"):
        if settings.state_keys:
            return _fail("the keys come from ONCO_EXERCISE_STATE_KEYS: put `onco-exercise state-key new` first in "
                         "that list (rotate) or drop the old ones (retire) where the secret is kept, restart, then "
                         "run `onco-exercise state-key reseal`")
        path = key_file_path(settings)
        try:
            entries = read_key_file(path) if path.exists() else []
        except KeyRingError as exc:
            return _fail(str(exc))
        if args.action == "retire":
            if len(entries) < 2:
                return _fail(f"{path} holds one key: nothing to retire")
            write_key_file(path, entries[:1])
            print(f"retired {len(entries) - 1} key(s) from {path}; values they sealed no longer open")
            return 0
        entries.insert(0, new_key())
        write_key_file(path, entries)
        print(f"{path}: new key {entries[0]['kid']} seals from now on ({len(entries)} keys in the ring)")

    async def reseal() -> int:
        store = open_state_store(settings)
        try:
            return await store.reseal()
        finally:
            await store.close()

    try:
        n = asyncio.run(reseal())
    except Exception as exc:  # noqa: BLE001 - store unreachable, bad key: one readable line
        return _fail(f"re-sealing failed: {type(exc).__name__}: {exc}")
    print(f"re-sealed {n} stored value(s) with the first key; restart the replicas, then "
          "`onco-exercise state-key retire` drops the old keys")
    return 0


def cmd_terminology(args: argparse.Namespace) -> int:
    """The terminology coverage report: concepts x code systems x counts, the range rules and the sources."""
    import json

    from service.paths import TERMINOLOGY_DIR
    from service.terminology import TerminologyError, get_terminology
    from service.terminology_report import coverage, render

    try:
        get_terminology()  # the same load the service does: a broken file is an error here too
    except TerminologyError as exc:
        return _fail(str(exc))
    report = coverage(TERMINOLOGY_DIR)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


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
    p.add_argument("--host", default="0.0.0.0",
                   help="address to listen on (default 0.0.0.0: every network interface, as in a container)")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("prescribe", help="print the exercise prescription for a FHIR Bundle")
    p.add_argument("bundle", type=Path, help="FHIR R4 Bundle (JSON) with the patient's resources")
    p.add_argument("--now", default=None, help="reference date YYYY-MM-DD (default: today)")
    p.add_argument("--preferences", type=Path, default=None, help="patient preferences (JSON)")
    p.add_argument("--format", choices=("json", "text"), default="json")
    p.add_argument("--signer", default=None,
                   help="Practitioner reference signing the plan in `resources` (default: the Bundle's only "
                        "Practitioner, else Practitioner/signing-clinician)")
    p.set_defaults(func=cmd_prescribe)

    p = sub.add_parser("validate", help="validate FHIR resources or Bundles against R4 and our profiles")
    p.add_argument("files", type=Path, nargs="+")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("check-config", help="check settings and every configured FHIR server")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("state-key", help="rotate the keys that encrypt the state store (new, rotate, reseal, retire)")
    p.add_argument("action", choices=("new", "rotate", "reseal", "retire"),
                   help="new: print a key; rotate: add a key first in the key file and re-seal; reseal: re-seal "
                        "every value with the first key; retire: drop every key but the first")
    p.set_defaults(func=cmd_state_key)

    p = sub.add_parser("terminology", help="print the terminology coverage report (code systems, counts, sources)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_terminology)
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
