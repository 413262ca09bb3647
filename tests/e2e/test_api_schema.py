"""Schemathesis against the live card-services API: no request, however malformed, gets a 5xx,
and every answer conforms to the OpenAPI document the server publishes (status codes,
content types, bodies; errors in the one error shape).

The platform runs with its API on real Postgres, Redis and Ray; the OpenAPI document is loaded
from the running server and every operation in it is tested, so routers added later are
covered without touching this file. Two passes:

1. the schemathesis command (all its phases: examples, coverage of boundary values, fuzzing,
   stateful sequences) with a clerk's token, as a subprocess against the live server;
2. the Python API with Hypothesis, for what the command cannot do: each operation with a path
   parameter against a freshly made card, holder, programme or run that exists (a generated
   card number almost never passes its check digit, so the logic behind the path would go
   untested); programme and audit operations with the role that may do them; and every
   operation with each other role, with no token and with an unknown token.

Both are bounded: examples per operation, a time limit per request and for the whole run.
"""

import asyncio
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from citycard.domain.identity import make_citizen_id
from tests.support.city import api_city

pytestmark = pytest.mark.usefixtures("ray_cluster")

MAX_EXAMPLES = int(os.environ.get("CITYCARD_FUZZ_EXAMPLES", "20"))  # per operation, per mode
ROLE_EXAMPLES = 5  # per operation, per other role
REQUEST_TIMEOUT_S = 10.0
# The schemathesis command's budget for all its phases: it uses all of it (its stateful phase
# runs until then), so this is most of the test's time in CI.
CLI_MAX_TIME_S = int(os.environ.get("CITYCARD_FUZZ_CLI_S", "60"))
FAST_PINS = {"api": {"pin_kdf_n": 1024}}  # scrypt at the default cost makes each PIN request ~50 ms

CHECK_NAMES = ["not_a_server_error", "status_code_conformance", "content_type_conformance",
               "response_schema_conformance", "negative_data_rejection"]
CONFORMANCE = [not_a_server_error, status_code_conformance, content_type_conformance,
               response_schema_conformance]
# 503 is a documented answer, not a defect: a shard that did not answer in time, too many PIN
# checks or disbursement runs at once; status_code_conformance checks that it is documented.
# Every other 5xx is a server error.
NOT_A_SERVER_ERROR = ["2xx", "3xx", "4xx", "503"]
CHECKS_TOML = f"""[checks.not_a_server_error]
expected-statuses = {NOT_A_SERVER_ERROR}
"""
# Reports show the requests in full (idempotency keys too); only the token is hidden.
CONFIG = schemathesis.Config.from_dict({
    "checks": {"not_a_server_error": {"expected-statuses": NOT_A_SERVER_ERROR}},
    "output": {"sanitization": {"keys-to-sanitize": ["authorization"], "sensitive-markers": ["authorization"]}}})


# -- pass 1: the schemathesis command ---------------------------------------------------------

async def run_schemathesis_command(base_url: str, token: str, workdir: Path) -> tuple[int, str]:
    """All phases with a clerk's token; returns the exit code and the report."""
    (workdir / "schemathesis.toml").write_text(CHECKS_TOML)  # the command reads it from its cwd
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "schemathesis.cli", "run", f"{base_url}/openapi.json",
        "--header", f"Authorization: Bearer {token}",
        "--checks", ",".join(CHECK_NAMES),
        "--max-examples", str(MAX_EXAMPLES),
        "--request-timeout", str(REQUEST_TIMEOUT_S),
        "--max-time", str(CLI_MAX_TIME_S),
        "--workers", "1", "--no-color", "--warnings", "off",
        cwd=workdir,  # its example database and cache stay out of the repository
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), CLI_MAX_TIME_S + 120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")


# -- pass 2: the Python API ---------------------------------------------------------------------

@dataclass
class Findings:
    failures: dict[str, str] = field(default_factory=dict)  # "<who> <mode> <METHOD path>" -> report
    requests: int = 0

    def report(self) -> str:
        return "\n\n".join(f"=== {k}\n{v}" for k, v in self.failures.items())


def fuzz_operation(op: Any, base_url: str, headers: dict[str, str], mode: GenerationMode, n: int,
                   checks: list[Any], findings: Findings, label: str, **fixed: Any) -> None:
    """Run ``n`` generated cases of one operation; record its first failure (shrunk)."""

    # the token is a fixed header: negative cases get the input wrong, not the credentials
    @given(case=op.as_strategy(generation_mode=mode, headers=headers or None, **fixed))
    @settings(max_examples=n, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate, Phase.shrink],
              suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        findings.requests += 1
        response = case.call(base_url=base_url, headers=headers, timeout=REQUEST_TIMEOUT_S)
        case.validate_response(response, checks=checks, headers=headers)

    try:
        run()
    except Unsatisfiable:
        pass  # negative mode on an operation with no input to get wrong
    except (Exception, BaseExceptionGroup) as exc:  # every failure is collected, reported at once
        findings.failures[f"{label} {mode.value} {op.method.upper()} {op.path}"] = str(exc)[:4000]


class Maker:
    """Fresh holders, cards, programmes and runs, made through the API itself."""

    def __init__(self, base_url: str, tokens: dict[str, str]) -> None:
        self.base_url = base_url
        self.tokens = tokens
        self.http = requests.Session()
        self.serial = count(100)

    def _post(self, path: str, body: dict[str, Any], role: str = "clerk") -> dict[str, Any]:
        r = self.http.post(self.base_url + path, json=body, timeout=REQUEST_TIMEOUT_S,
                           headers={"Authorization": f"Bearer {self.tokens[role]}"})
        assert r.status_code in (200, 201, 202), (path, r.status_code, r.text)
        return r.json()  # type: ignore[no-any-return]

    def holder(self) -> int:
        n = next(self.serial)
        born = date(1950, 1, 1) + timedelta(days=n)
        return int(self._post("/holders", {"citizen_id": make_citizen_id(330106, born, n % 1000),
                                           "name": f"Fuzz {n}", "birth_date": born.isoformat()})["holder_id"])

    def card(self, holder_id: int) -> int:
        card_no = int(self._post(f"/holders/{holder_id}/cards", {})["card_no"])
        for purse, fen in (("epurse", 50_000), ("general", 20_000)):
            self._post(f"/cards/{card_no}/topups", {"purse": purse, "amount_fen": fen,
                                                     "idempotency_key": f"seed-{purse}"})
        return card_no

    def programme(self) -> int:
        n = next(self.serial)
        return int(self._post("/programmes", {"name": f"Fuzz welfare {n}", "kind": "welfare", "amount_fen": 100},
                              "programme_admin")["programme_id"])

    def run(self, programme_id: int) -> int:
        return int(self._post(f"/programmes/{programme_id}/runs", {"period": "fuzz"}, "programme_admin")["run_id"])

    def path_parameters(self, op: Any) -> dict[str, int]:
        """Existing things for the path: a card (with money) and its holder, or a holder without
        a card where only a holder is named (so that issuing a card can succeed); a programme
        and a run of it."""
        names = {p.name for p in op.iter_parameters() if p.location == "path"}
        pinned: dict[str, int] = {}
        if "holder_id" in names or "card_no" in names:
            holder_id = self.holder()
            if "holder_id" in names:
                pinned["holder_id"] = holder_id
            if "card_no" in names:
                pinned["card_no"] = self.card(holder_id)
        if "programme_id" in names or "run_id" in names:
            programme_id = self.programme()
            if "programme_id" in names:
                pinned["programme_id"] = programme_id
            if "run_id" in names:
                pinned["run_id"] = self.run(programme_id)
        return pinned


def owner_of(op: Any) -> str:
    """The role that may do the operation (the schemathesis command sends only a clerk's token)."""
    if op.path.startswith(("/programmes", "/runs")):
        return "programme_admin"
    if op.path.startswith("/audit"):
        return "auditor"
    if op.path.startswith("/merchants"):
        return "merchant_desk"
    return "clerk"


OTHERS = {"clerk": ROLE_EXAMPLES, "read_only": ROLE_EXAMPLES, "auditor": ROLE_EXAMPLES,
          "programme_admin": ROLE_EXAMPLES, "nobody": 3, "bad-token": 3}


def fuzz_with_python_api(base_url: str, tokens: dict[str, str]) -> Findings:
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=CONFIG)
    ops = [r.ok() for r in schema.get_all_operations()]
    assert len(ops) >= 14, [f"{o.method} {o.path}" for o in ops]
    findings = Findings()
    maker = Maker(base_url, tokens)
    for op in ops:
        pinned = maker.path_parameters(op)
        owner = owner_of(op)
        if pinned or owner != "clerk":
            # no negative_data_rejection here: the command checks it, and against a real thing
            # some operations rightly answer 200 to data the schema rules out (a beneficiary
            # list's malformed lines are rejected one by one, in the answer)
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                fuzz_operation(op, base_url, {"Authorization": f"Bearer {tokens[owner]}"}, mode, MAX_EXAMPLES,
                               CONFORMANCE, findings, f"{owner} {pinned or ''}".strip(),
                               path_parameters=pinned or None)
        for who, n in OTHERS.items():
            if who == owner:
                continue
            headers = ({} if who == "nobody" else {"Authorization": "Bearer cc_0000"} if who == "bad-token"
                       else {"Authorization": f"Bearer {tokens[who]}"})
            fuzz_operation(op, base_url, headers, GenerationMode.POSITIVE, n, CONFORMANCE, findings,
                           f"{who} {pinned or ''}".strip(), path_parameters=pinned or None)
    return findings


def test_schemathesis_finds_no_server_error(configured_services, schema, tmp_path):
    async def scenario() -> None:
        async with api_city(configured_services, schema, n_cards=20, **FAST_PINS) as api:
            base_url = str(api.http.base_url).rstrip("/")
            t0 = time.monotonic()
            code, report = await run_schemathesis_command(base_url, api.tokens["clerk"], tmp_path)
            t1 = time.monotonic()
            findings = await asyncio.to_thread(fuzz_with_python_api, base_url, api.tokens)
            t2 = time.monotonic()
            print(f"\nschemathesis command: exit {code} in {t1 - t0:.1f} s\n{report[-1500:]}")
            print(f"python API: {findings.requests} requests in {t2 - t1:.1f} s")
            problems = []
            if code != 0:
                problems.append(f"the schemathesis command failed (exit {code}):\n{report}")
            if findings.failures:
                problems.append(f"{len(findings.failures)} failing runs:\n\n{findings.report()}")
            if problems:
                pytest.fail("\n\n".join(problems), pytrace=False)

    asyncio.run(scenario())


# -- what the runs found, pinned down ------------------------------------------------------------

def test_bad_text_is_422_naming_the_field_never_a_server_error(configured_services, schema):
    """NUL characters reached Postgres (500 after part of a change could be written); blank
    reasons and names were accepted; a body that is not UTF-8 got a 400 without a field."""

    async def scenario() -> None:
        async with api_city(configured_services, schema, n_cards=20) as api:
            h = api.auth()
            card = await api.new_card(1)
            holder_id = (await api.http.get(f"/cards/{card}", headers=h)).json()["holder_id"]
            assert (await api.top_up(card, 1000, "k1")).status_code == 200

            async def expect_422(method: str, path: str, field: str, **kw: Any) -> None:
                r = await api.http.request(method, path, headers={**h, **kw.pop("headers", {})}, **kw)
                assert r.status_code == 422, (method, path, kw, r.status_code, r.text)
                assert r.json()["field"] == field, r.text

            nul = "a\x00b"
            await expect_422("POST", f"/cards/{card}/topups", "idempotency_key",
                             json={"amount_fen": 100, "idempotency_key": nul})
            await expect_422("POST", f"/cards/{card}/refunds", "idempotency_key",
                             json={"amount_fen": 1, "idempotency_key": nul, "reason": "r"})
            await expect_422("POST", f"/cards/{card}/refunds", "reason",
                             json={"amount_fen": 1, "idempotency_key": "r1", "reason": "   "})
            await expect_422("POST", f"/cards/{card}/cancel", "idempotency_key",
                             json={"reason": "r", "idempotency_key": nul})
            await expect_422("POST", f"/cards/{card}/loss", "reason", json={"reason": nul})
            await expect_422("GET", "/holders", "citizen_id", params={"citizen_id": "1" * 17 + "\x00"})
            await expect_422("GET", "/holders", "citizen_id", params={"citizen_id": "1" * 16 + "²X"})
            await expect_422("POST", "/holders", "photo_ref", json={
                "citizen_id": "11010519491231002X", "name": "Li Lei", "birth_date": "1949-12-31", "photo_ref": nul})
            await expect_422("PATCH", f"/holders/{holder_id}", "reason", json={"reason": nul, "photo_ref": "p"})
            await expect_422("PATCH", f"/holders/{holder_id}", "name", json={"reason": "typo", "name": "   "})
            await expect_422("POST", "/holders", "body", content=b"\xff\xfe",
                             headers={"content-type": "application/json"})
            await expect_422("POST", "/holders", "body", content=b"{not json",
                             headers={"content-type": "application/json"})

            # nothing moved or changed by any of it
            bal = (await api.http.get(f"/cards/{card}/balance", headers=h)).json()
            assert bal["status"] == "active" and bal["purses"]["epurse"] == 1000, bal
            entries = (await api.http.get(f"/audit?subject=card:{card}", headers=api.auth("auditor"))).json()
            assert [e["action"] for e in entries] == ["card.issue", "money.top_up"]

            # the framework's own errors come in the same shape
            r = await api.http.get("/no/such/thing", headers=h)
            assert r.status_code == 404 and "error" in r.json(), r.text
            r = await api.http.delete("/holders", headers=h)
            assert r.status_code == 405 and "error" in r.json(), r.text

    asyncio.run(scenario())


def test_openapi_declares_every_error_and_the_readme_calls_work(configured_services, schema):
    """Every operation's error answers are declared, in the one error shape; and the first
    calls README.md shows work in the same order."""

    async def scenario() -> None:
        async with api_city(configured_services, schema, n_cards=20) as api:
            doc = (await api.http.get("/openapi.json")).json()
            assert (await api.http.get("/docs")).status_code == 200
            assert "ErrorBody" in doc["components"]["schemas"]
            assert "HTTPValidationError" not in doc["components"]["schemas"]
            ops = [(path, method, op) for path, item in doc["paths"].items() for method, op in item.items()]
            for path, method, op in ops:
                responses = op["responses"]
                for status, response in responses.items():
                    if status[0] in "45":  # every error is JSON with at least an "error" sentence
                        ref = response["content"]["application/json"]["schema"]["$ref"]
                        shape = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
                        assert "error" in shape["required"], (method, path, status, shape)
                if {"operator_token"} <= {name for req in op.get("security", []) for name in req}:
                    assert {"401", "403"} <= responses.keys(), (method, path)
                if "requestBody" in op or op.get("parameters"):
                    assert "422" in responses, (method, path)
            top_up = doc["paths"]["/cards/{card_no}/topups"]["post"]["responses"]
            assert {"200", "401", "403", "404", "409", "422", "503"} <= top_up.keys()

            h = api.auth()
            r = await api.http.post("/holders", headers=h, json={
                "citizen_id": "11010519491231002X", "name": "Li Lei", "birth_date": "1949-12-31",
                "category": "elderly"})
            assert r.status_code == 201, r.text
            holder_id = r.json()["holder_id"]
            r = await api.http.post(f"/holders/{holder_id}/cards", headers=h, json={})
            assert r.status_code == 201, r.text
            card = r.json()["card_no"]
            body = {"amount_fen": 5000, "idempotency_key": "counter-7:000123"}
            first = await api.http.post(f"/cards/{card}/topups", headers=h, json=body)
            again = await api.http.post(f"/cards/{card}/topups", headers=h, json=body)
            assert first.status_code == again.status_code == 200
            assert (first.json()["replay"], again.json()["replay"]) == (False, True)
            assert again.json()["balance"]["epurse"] == 5000
            r = await api.http.get(f"/cards/{card}/balance", headers=api.auth("read_only"))
            assert r.json()["total_fen"] == 5000

    asyncio.run(scenario())
