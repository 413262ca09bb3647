"""What the card-services API takes, on a real socket: integers only for amounts and ids,
bounded bodies and JSON depth, the caller checked before the body, a request head past its
limit answered in the error shape, upload errors in our words, and no traceback ever
(docs/api.md, "Input rules and errors")."""

import asyncio
import json
import logging

import httpx
import pytest

from tests.support.city import api_city, cid, programme

pytestmark = pytest.mark.usefixtures("ray_cluster")

SMALL_LIMITS = {"api": {"max_body_bytes": 4096, "max_upload_bytes": 262_144, "pin_kdf_n": 1024}}
JSON = {"Content-Type": "application/json"}
# Postgres's and the server's own wording: none of it may reach a client
FOREIGN_WORDS = ("violates", "asyncpg", "COPY", "invalid input syntax", "DETAIL", "HINT", "jsonb", "portal",
                 "UTF8", "up_csv", "Traceback", "Internal Server Error")


def assert_error_shape(r: httpx.Response, status: int, field: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.text
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    if field is not None:
        assert body.get("field") == field, body
    for word in FOREIGN_WORDS:
        assert word not in r.text, (word, r.text)
    return body


def test_a_100000_deep_array_gets_400_not_500(configured_services, schema):
    async def scenario() -> None:
        async with api_city(configured_services, schema) as api:
            card = await api.new_card(1)
            pid = await programme(api)
            deep = "[" * 100_000 + "]" * 100_000
            r = await api.http.post(f"/programmes/{pid}/beneficiaries", content=deep,
                                    headers={**api.auth("programme_admin"), **JSON})
            assert "32" in assert_error_shape(r, 400, "body")["error"]
            shallower = "[" * 20_000 + "]" * 20_000  # under api.max_body_bytes
            r = await api.http.post(f"/cards/{card}/topups", content=shallower, headers={**api.auth(), **JSON})
            assert_error_shape(r, 400, "body")
            # 32 levels are taken (and then refused as the wrong shape, 422); 33 are not
            nested = {"purse": "epurse", "amount_fen": 1, "idempotency_key": "deep", "x": json.loads("[" * 20 + "]" * 20)}
            text = json.dumps(nested)
            r = await api.http.post(f"/cards/{card}/topups", content=text, headers={**api.auth(), **JSON})
            assert_error_shape(r, 422, "x")
            too_deep = text.replace("[[", "[[" * 7, 1).replace("]]", "]]" * 7, 1)
            r = await api.http.post(f"/cards/{card}/topups", content=too_deep, headers={**api.auth(), **JSON})
            assert_error_shape(r, 400, "body")
            r = await api.http.get(f"/cards/{card}/balance", headers=api.auth())
            assert r.status_code == 200 and r.json()["purses"]["epurse"] == 0, r.text

    asyncio.run(scenario())


def test_bodies_past_their_limits_get_413(configured_services, schema):
    async def scenario() -> None:
        async with api_city(configured_services, schema, **SMALL_LIMITS) as api:
            card = await api.new_card(1)
            pid = await programme(api)
            padded = {"purse": "epurse", "amount_fen": 1, "idempotency_key": "k" * 5000}
            r = await api.http.post(f"/cards/{card}/topups", json=padded, headers=api.auth())
            assert_error_shape(r, 413, "body")

            async def chunks():  # no Content-Length: refused as the bytes arrive
                for _ in range(100):
                    yield b" " * 1000

            r = await api.http.post(f"/cards/{card}/topups", content=chunks(), headers={**api.auth(), **JSON})
            assert_error_shape(r, 413, "body")
            # an upload has its own, larger limit
            csv_headers = {**api.auth("programme_admin"), "Content-Type": "text/csv"}
            csv = "citizen_id\n" + "\n".join([cid(1)] * 20_000) + "\n"
            r = await api.http.post(f"/programmes/{pid}/beneficiaries", content=csv, headers=csv_headers)
            assert "split the list" in assert_error_shape(r, 413, "body")["error"]
            csv = "citizen_id\n" + "\n".join(cid(i) for i in range(1, 400)) + "\n"  # over 4096, under 262,144
            r = await api.http.post(f"/programmes/{pid}/beneficiaries", content=csv, headers=csv_headers)
            assert r.status_code == 200, r.text
            assert r.json()["lines"] == 399
            r = await api.http.get(f"/cards/{card}/balance", headers=api.auth())
            assert r.status_code == 200 and r.json()["purses"]["epurse"] == 0, r.text

    asyncio.run(scenario())


def test_unexpected_error_is_a_json_500_and_logged(configured_services, schema, caplog):
    async def scenario() -> None:
        async with api_city(configured_services, schema) as api:
            async def boom() -> None:
                raise RuntimeError("secret internals")

            api.city.platform.api.app.add_api_route("/boom-for-a-test", boom)
            with caplog.at_level(logging.ERROR):
                r = await api.http.get("/boom-for-a-test")
            body = assert_error_shape(r, 500)
            assert "secret internals" not in r.text and "RuntimeError" not in r.text, body
            assert "secret internals" in caplog.text  # the server's log has it
            health = await api.http.get("/health")  # both probes asked of the real services
            assert health.status_code == 200 and health.json() == {"status": "ok", "postgres": "ok", "redis": "ok"}

    asyncio.run(scenario())


def test_amounts_and_ids_take_integers_only(configured_services, schema):
    async def scenario() -> None:
        async with api_city(configured_services, schema) as api:
            card = await api.new_card(1)
            for i, amount in enumerate([True, "250", 250.0, False, "1e2", 1.5]):
                r = await api.top_up(card, amount, f"strict-{i}")  # type: ignore[arg-type]
                assert_error_shape(r, 422, "amount_fen")
            r = await api.http.post("/programmes", headers=api.auth("programme_admin"),
                                    json={"name": "p", "kind": "welfare", "amount_fen": True})
            assert_error_shape(r, 422, "amount_fen")
            r = await api.http.post("/programmes", headers=api.auth("programme_admin"),
                                    json={"name": "p", "kind": "welfare", "amount_fen": "100"})
            assert_error_shape(r, 422, "amount_fen")
            r = await api.http.post("/self/session", json={"card_no": str(card), "citizen_id": cid(1),
                                                           "pin": "482913"})
            assert_error_shape(r, 422, "card_no")
            r = await api.http.post("/self/session", json={"card_no": True, "citizen_id": cid(1), "pin": "482913"})
            assert_error_shape(r, 422, "card_no")
            holder = await api.new_holder(2)
            r = await api.http.post(f"/holders/{holder['holder_id']}/cards", headers=api.auth(),
                                    json={"apps": {"library": 1}})
            assert_error_shape(r, 422, "apps.library")
            r = await api.http.post(f"/holders/{holder['holder_id']}/cards", headers=api.auth(),
                                    json={"credit_good": "yes"})
            assert_error_shape(r, 422, "credit_good")
            # integers still work, and nothing above moved money
            r = await api.top_up(card, 250, "strict-ok")
            assert r.status_code == 200, r.text
            assert r.json()["balance"]["epurse"] == 250

    asyncio.run(scenario())


def test_the_caller_is_checked_before_the_body(configured_services, schema):
    async def scenario() -> None:
        async with api_city(configured_services, schema) as api:
            card = await api.new_card(1)
            pid = await programme(api)
            not_json, deep, big = b"this is not json", b"[" * 1000 + b"]" * 1000, b" " * 100_000
            operator_writes = [f"/cards/{card}/topups", f"/cards/{card}/refunds", f"/cards/{card}/loss", "/holders",
                               "/programmes", f"/programmes/{pid}/runs", f"/cards/{card}/pin/verify"]
            for path in operator_writes:
                for body in (not_json, deep, big):
                    r = await api.http.post(path, content=body, headers=JSON)
                    assert_error_shape(r, 401)
                    r = await api.http.post(path, content=body, headers={"Authorization": "Bearer cc_unknown", **JSON})
                    assert_error_shape(r, 401)
            # a token without the role: 403 before the body is looked at
            r = await api.http.post(f"/cards/{card}/topups", content=not_json, headers={**api.auth("read_only"), **JSON})
            assert_error_shape(r, 403)
            r = await api.http.post(f"/programmes/{pid}/beneficiaries", content=b"[" * 100_000,
                                    headers={**api.auth("clerk"), **JSON})
            assert_error_shape(r, 403)
            # the holder's channel: its session first
            for path in ("/self/pin/change", "/self/loss"):
                r = await api.http.post(path, content=not_json, headers=JSON)
                assert_error_shape(r, 401)
                r = await api.http.post(path, content=not_json, headers={"Authorization": "Bearer ss_nope", **JSON})
                assert_error_shape(r, 401)
            # with the right caller, the body is judged as before
            r = await api.http.post(f"/cards/{card}/topups", content=not_json, headers={**api.auth(), **JSON})
            assert_error_shape(r, 422, "body")
            r = await api.http.put(f"/cards/{card}/pin", json={"pin": "482913"}, headers=api.auth())
            assert r.status_code == 201, r.text
            session = await api.session(card, "482913")
            r = await api.http.post("/self/pin/change", content=not_json, headers={**session, **JSON})
            assert_error_shape(r, 422, "body")
            # a public route has no caller to check: its body is judged at once
            r = await api.http.post("/self/session", content=not_json, headers=JSON)
            assert_error_shape(r, 422, "body")

    asyncio.run(scenario())


async def raw_request(port: int, head: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``head`` as it is (a client library would refuse some of them) and read the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        try:
            await writer.drain()
        except ConnectionError:
            pass  # the server answered and stopped reading: the answer is still there to read
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    head_lines, _, body = rest.partition(b"\r\n\r\n")
    headers = dict(line.decode().lower().split(": ", 1) for line in head_lines.split(b"\r\n") if line)
    return int(status_line.split()[1]), headers, body


def test_an_oversized_or_broken_request_head_gets_the_error_shape(configured_services, schema):
    async def scenario() -> None:
        async with api_city(configured_services, schema) as api:
            port = api.city.platform.api_port
            mega = 1_000_000
            cases = [
                (b"GET /cards/" + b"1" * mega + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "path"),
                (b"GET /health?q=" + b"a" * mega + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "path"),
                (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * mega + b"\r\n\r\n", 431, "headers"),
                (b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Many: a\r\n" * 100_000 + b"\r\n", 431, "headers"),
                (b"BREW /pot HTCPCP/1.0 \x00\x01\r\n\r\n", 400, "request"),
            ]
            for head, status, field in cases:
                got, headers, body = await raw_request(port, head)
                assert got == status, (head[:60], got, body)
                assert headers["content-type"] == "application/json", headers
                answer = json.loads(body)
                assert answer["field"] == field and answer["error"], answer
            assert (await api.http.get("/health")).status_code == 200

    asyncio.run(scenario())


def test_upload_errors_are_in_our_words(configured_services, schema):
    async def scenario() -> None:
        async with api_city(configured_services, schema) as api:
            pid = await programme(api)
            csv = {**api.auth("programme_admin"), "Content-Type": "text/csv"}
            url = f"/programmes/{pid}/beneficiaries"
            good = cid(1).encode()
            r = await api.http.post(url, content=b"citizen_id\n" + good + b"\n" + b"\xff\xfe\n", headers=csv)
            assert "not UTF-8" in assert_error_shape(r, 422, "line 3")["error"]
            r = await api.http.post(url, content=b"citizen_id\n" + good + b"\nab\rcd\n", headers=csv)
            assert "carriage return" in assert_error_shape(r, 422, "line 3")["error"]
            json_cases = [
                ('[{"citizen_id": "abc\\u0000"}]', "\\u0000"),
                ("nope", "not valid JSON"),
                ('[{"citizen_id": "\\ud800"}]', "not valid JSON"),
                ('{"citizen_id": "x"}', "a JSON array is expected"),
                ("[1, 2", "not valid JSON"),
            ]
            for text, words in json_cases:
                r = await api.http.post(url, content=text, headers={**api.auth("programme_admin"), **JSON})
                assert words in assert_error_shape(r, 422, "body")["error"], text
            # nothing was half-written by any of them
            r = await api.http.get(f"/programmes/{pid}", headers=api.auth("read_only"))
            assert r.json()["beneficiaries"] == 0, r.text

    asyncio.run(scenario())
