"""The signature process: CDS client JWT signatures checked in a helper process give the same verdicts as in-process,
and any trouble with the helper (killed, stuck, busy, off) means the check is made in-process, never skipped.

Tokens are real JWTs signed with real keys (joserfc), the helper is the real child process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from service.app import create_app
from service.cds_hooks import signature_process as sp
from service.cds_hooks.discovery import ENCOUNTER_START_ID
from service.cds_hooks.signature import public_key, signature_valid
from tests.cds_hooks.conftest import Ehr, hook_body, make_settings
from tests.support.live import free_port, serve

ES = ECKey.generate_key("P-384", parameters={"kid": "es-1", "alg": "ES384"})
RS = RSAKey.generate_key(2048, parameters={"kid": "rs-1", "alg": "RS384"})
OTHER = ECKey.generate_key("P-384", parameters={"kid": "es-1", "alg": "ES384"})  # same kid, another key
P256 = ECKey.generate_key("P-256", parameters={"kid": "es256-1", "alg": "ES256"})


def _parts(key: Any, alg: str, **claims: Any) -> tuple[dict[str, Any], list[str]]:
    header = {"alg": alg, "kid": key.kid, "typ": "JWT"}
    token = jwt.encode(header, {"iss": "https://ehr.example.org", "jti": str(time.monotonic_ns()), **claims},
                       key, algorithms=[alg])
    return header, token.split(".")


def _cases() -> list[tuple[str, dict[str, Any], str, Any, list[str], bool]]:
    """(name, header, alg, verifying key (public), parts, expected verdict)."""
    es_header, es = _parts(ES, "ES384")
    rs_header, rs = _parts(RS, "RS384")
    _, other = _parts(OTHER, "ES384")
    _, forged_payload = _parts(ES, "ES384", admin=True)
    p256_header, p256 = _parts(P256, "ES256")
    pub = {name: public_key(k.as_dict(private=False)) for name, k in
           (("es", ES), ("rs", RS), ("p256", P256))}
    return [
        ("ES384, good", es_header, "ES384", pub["es"], es, True),
        ("RS384, good", rs_header, "RS384", pub["rs"], rs, True),
        ("ES256, good", p256_header, "ES256", pub["p256"], p256, True),
        ("signed by another key with the same kid", es_header, "ES384", pub["es"], other, False),
        ("payload swapped after signing", es_header, "ES384", pub["es"],
         [es[0], forged_payload[1], es[2]], False),
        ("ES384 header on an RSA key", es_header, "ES384", pub["rs"], es, False),
        ("RS384 signature checked as ES384", es_header, "ES384", pub["es"], [es[0], es[1], rs[2]], False),
        ("ES384 on a P-256 key", es_header, "ES384", pub["p256"], es, False),
        ("signature cut short", es_header, "ES384", pub["es"], [es[0], es[1], es[2][:-8]], False),
        ("signature not base64url", es_header, "ES384", pub["es"], [es[0], es[1], "!!" + es[2][2:]], False),
        ("signature not ASCII", es_header, "ES384", pub["es"], [es[0], es[1], "é" + es[2][1:]], False),
        ("empty signature", es_header, "ES384", pub["es"], [es[0], es[1], ""], False),
        ("unknown crit header", {**es_header, "crit": ["exp"]}, "ES384", pub["es"], es, False),
    ]


def _input(parts: list[str]) -> bytes:
    return f"{parts[0]}.{parts[1]}".encode("ascii")


async def _running(checker: sp.SignatureProcess, header: dict[str, Any], key: Any, parts: list[str]) -> int:
    """Check until the child answers (it starts on the first check); its pid."""
    deadline = time.monotonic() + 30
    before = checker.checked_in_child
    while checker.checked_in_child == before:
        assert time.monotonic() < deadline, "the signature process never answered"
        await checker.check(header, "ES384", key, _input(parts), parts[2])
        await asyncio.sleep(0.02)
    assert checker.pid is not None
    return checker.pid


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"


async def test_the_child_gives_the_same_verdict_as_in_process() -> None:
    cases = _cases()
    checker = sp.SignatureProcess()
    try:
        await _running(checker, cases[0][1], cases[0][3], cases[0][4])
        first = checker.checked_in_child
        for name, header, alg, key, parts, expected in cases:
            assert signature_valid(header, alg, key, _input(parts), parts[2]) is expected, name
            assert await checker.check(header, alg, key, _input(parts), parts[2]) is expected, name
        assert checker.checked_in_child - first == len(cases)  # all answered by the child
        # many at once, interleaved good and bad, each gets its own answer
        many = [cases[i % len(cases)] for i in range(40)]
        verdicts = await asyncio.gather(*(checker.check(h, a, k, _input(p), p[2]) for _, h, a, k, p, _ in many))
        assert verdicts == [expected for *_, expected in many]
        assert checker._waiting == {}  # every check leaves the table
    finally:
        await checker.close()


async def test_a_killed_child_means_in_process_checks_then_a_new_child(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sp, "RESTART_AFTER_SECONDS", 0.2)
    name, header, alg, key, parts, _ = _cases()[0]
    _, _, _, _, bad, _ = _cases()[3]
    checker = sp.SignatureProcess()
    try:
        pid = await _running(checker, header, key, parts)
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.1)
        in_process = checker.checked_in_process
        assert await checker.check(header, alg, key, _input(parts), parts[2]) is True
        assert await checker.check(header, alg, key, _input(bad), bad[2]) is False
        assert checker.checked_in_process == in_process + 2
        await asyncio.sleep(0.3)
        new_pid = await _running(checker, header, key, parts)
        assert new_pid != pid
        assert await checker.check(header, alg, key, _input(bad), bad[2]) is False
    finally:
        await checker.close()


async def test_a_stuck_child_times_out_to_an_in_process_check_and_is_replaced(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sp, "RESTART_AFTER_SECONDS", 0.2)
    _, header, alg, key, parts, _ = _cases()[0]
    _, _, _, _, bad, _ = _cases()[4]
    checker = sp.SignatureProcess(timeout=0.3)
    try:
        pid = await _running(checker, header, key, parts)
        os.kill(pid, signal.SIGSTOP)
        try:
            in_process = checker.checked_in_process
            started = time.monotonic()
            assert await checker.check(header, alg, key, _input(bad), bad[2]) is False  # waits 0.3 s, once
            assert time.monotonic() - started < 1.0
            started = time.monotonic()
            assert await checker.check(header, alg, key, _input(parts), parts[2]) is True  # no wait: replaced
            assert time.monotonic() - started < 0.1
            assert checker.checked_in_process == in_process + 2
            await asyncio.sleep(0.1)
            assert _gone(pid)  # the stuck child was killed
        finally:
            if not _gone(pid):
                os.kill(pid, signal.SIGCONT)
        await asyncio.sleep(0.2)
        assert await _running(checker, header, key, parts) != pid
    finally:
        await checker.close()


async def test_too_many_waiting_checks_are_made_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    _, header, alg, key, parts, _ = _cases()[0]
    _, _, _, _, bad, _ = _cases()[3]
    checker = sp.SignatureProcess()
    try:
        await _running(checker, header, key, parts)
        monkeypatch.setattr(sp, "MAX_WAITING", 0)
        in_child = checker.checked_in_child
        assert await checker.check(header, alg, key, _input(bad), bad[2]) is False
        assert await checker.check(header, alg, key, _input(parts), parts[2]) is True
        assert checker.checked_in_child == in_child
    finally:
        await checker.close()


async def test_the_child_gets_no_secrets_and_stops_with_its_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONCO_EXERCISE_STATE_KEYS", "k1:c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA")
    _, header, _, key, parts, _ = _cases()[0]
    checker = sp.SignatureProcess()
    pid = await _running(checker, header, key, parts)
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    names = {e.split(b"=")[0] for e in environ if e}
    assert b"PYTHONPATH" in names
    assert names <= {b"PYTHONPATH", b"LD_LIBRARY_PATH", b"OPENSSL_CONF", b"OPENSSL_MODULES"}
    await checker.close()
    assert _gone(pid)
    assert checker.pid is None
    # closed: no new child, every check in-process
    assert await checker.check(header, "ES384", key, _input(parts), parts[2]) is True
    await asyncio.sleep(0.1)
    assert checker.pid is None


def test_auto_uses_the_child_only_with_two_cpus(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    affinity = float(len(os.sched_getaffinity(0)))
    cpu_max.write_text("max 100000\n")
    assert sp.available_cpus(cpu_max) == affinity
    cpu_max.write_text("150000 100000\n")
    assert sp.available_cpus(cpu_max) == min(affinity, 1.5)
    assert sp.available_cpus(tmp_path / "absent") == affinity
    cpu_max.write_text("garbage\n")
    assert sp.available_cpus(cpu_max) == affinity
    assert sp.wanted("auto", 2.0) and not sp.wanted("auto", 1.5) and not sp.wanted("auto", 1.0)
    assert sp.wanted("on", 1.0) and not sp.wanted("off", 8.0)


def _sample(metrics: str, name: str) -> float:
    line = next((x for x in metrics.splitlines() if x.startswith(name + " ")), None)
    return float(line.split()[-1]) if line else 0.0



@pytest.mark.parametrize("setting", ["on", "off"])
def test_hook_calls_through_the_service(setting: str, tmp_path: Path, keys: dict[str, Any]) -> None:
    """The real service over HTTP: good tokens get the card, bad ones the 401, with the helper on or off; the
    helper is gone when the service stops; `/metrics` counts the checks the helper made (none when off)."""
    port = free_port()
    app = create_app(make_settings(port, tmp_path, keys, None, cds_signature_process=setting))
    path = f"/cds-services/{ENCOUNTER_START_ID}"
    with serve(app, port) as url:
        ehr = Ehr(url, keys["es"])
        stranger = Ehr(url, keys["stranger"])  # same kid, another key: a forged signature
        checker = app.state.signature_process
        counted = 'onco_cds_signature_checks_total{where="helper"}'
        before = _sample(httpx.get(f"{url}/metrics").text, counted)  # the registry is the test process's
        assert (checker is not None) is (setting == "on")
        deadline = time.monotonic() + 30
        while True:
            resp = ehr.post(path, hook_body(ENCOUNTER_START_ID, None, "p-1"))
            assert resp.status_code in (200, 412), resp.text  # no prefetch, no FHIR server: 412 is an answer
            assert stranger.post(path, hook_body(ENCOUNTER_START_ID, None, "p-1")).status_code == 401
            if checker is None or checker.checked_in_child >= 2:
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        pid = checker.pid if checker is not None else None
        token = ehr.token(path)
        assert httpx.post(f"{url}{path}", json=hook_body(ENCOUNTER_START_ID, None, "p-2"),
                          headers={"Authorization": f"Bearer {token}"}).status_code in (200, 412)
        replay = httpx.post(f"{url}{path}", json=hook_body(ENCOUNTER_START_ID, None, "p-2"),
                            headers={"Authorization": f"Bearer {token}"})
        assert replay.status_code == 401
        helper = _sample(httpx.get(f"{url}/metrics").text, counted) - before
        assert helper == (checker.checked_in_child if checker is not None else 0)
        assert (helper >= 2) if setting == "on" else (helper == 0)
    if pid is not None:
        assert _gone(pid)


@pytest.mark.parametrize("extra", [{"use": "enc"}, {"key_ops": ["encrypt"]}, {"alg": "ES512"}, {"use": "sig"}])
async def test_what_a_key_allows_crosses_to_the_child(extra: dict[str, Any]) -> None:
    """The child gets the key as a public JWK: `use`, `key_ops` and `alg` must arrive, or a key the client
    published for encryption (or another algorithm) would verify there and be refused in-process."""
    from joserfc.jwk import KeySet

    header, parts = _parts(ES, "ES384")
    key = KeySet.import_key_set({"keys": [{**ES.as_dict(private=False), **extra}]}).keys[0]
    expected = extra == {"use": "sig"}
    assert signature_valid(header, "ES384", key, _input(parts), parts[2]) is expected
    checker = sp.SignatureProcess()
    try:
        _, good_header, _, good_key, good, _ = _cases()[0]
        await _running(checker, good_header, good_key, good)
        in_child = checker.checked_in_child
        assert await checker.check(header, "ES384", key, _input(parts), parts[2]) is expected
        assert checker.checked_in_child == in_child + 1
    finally:
        await checker.close()


async def test_a_check_the_child_could_not_make_is_made_in_process() -> None:
    """The child answers "could not check" (here: a JWK it cannot import): the worker checks with its own key,
    so a bad signature is still refused and a good one accepted (never "valid" by default)."""
    _, header, alg, key, parts, _ = _cases()[0]
    _, _, _, _, bad, _ = _cases()[3]
    odd = public_key(ES.as_dict(private=False))
    odd.as_dict = lambda **_: {"kty": "EC", "crv": "P-999", "x": "AA", "y": "AA", "kid": "es-1"}
    checker = sp.SignatureProcess()
    try:
        await _running(checker, header, key, parts)
        in_process, in_child = checker.checked_in_process, checker.checked_in_child
        assert await checker.check(header, alg, odd, _input(bad), bad[2]) is False
        assert await checker.check(header, alg, odd, _input(parts), parts[2]) is True
        assert (checker.checked_in_process, checker.checked_in_child) == (in_process + 2, in_child)
    finally:
        await checker.close()


async def test_a_child_that_never_gets_ready_is_logged_and_given_up(monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(sp, "RESTART_AFTER_SECONDS", 0.05)
    monkeypatch.setattr(sp.sys, "executable", "/bin/false")  # starts, and exits before it is ready
    _, header, alg, key, parts, _ = _cases()[0]
    _, _, _, _, bad, _ = _cases()[3]
    checker = sp.SignatureProcess()
    try:
        for _ in range(100):
            assert await checker.check(header, alg, key, _input(bad), bad[2]) is False
            assert await checker.check(header, alg, key, _input(parts), parts[2]) is True
            await asyncio.sleep(0.02)
        assert checker.checked_in_child == 0
        assert checker._early_exits == sp.MAX_EARLY_EXITS
        messages = [r.getMessage() for r in caplog.records if r.name == sp.__name__]
        assert sum("exited before it was ready" in m for m in messages) == sp.MAX_EARLY_EXITS
        assert any("no more attempts" in m for m in messages)
    finally:
        await checker.close()


async def test_a_busy_worker_loop_does_not_condemn_a_child_that_answered() -> None:
    """The timeout runs on the worker's loop: when the loop itself stalls past it, the answer already in the pipe
    is used and the child kept."""
    _, header, alg, key, parts, _ = _cases()[0]
    checker = sp.SignatureProcess(timeout=0.2)
    try:
        pid = await _running(checker, header, key, parts)
        pending = asyncio.ensure_future(checker.check(header, alg, key, _input(parts), parts[2]))
        await asyncio.sleep(0)  # the check is sent
        time.sleep(0.4)  # the loop stalls past the timeout while the child answers
        assert await pending is True
        assert checker.pid == pid
    finally:
        await checker.close()
