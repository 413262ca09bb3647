"""`citycard terminal register --key-file`: the terminal's key, provisioned by the command
(mode 0600, never over another file unless --force), authenticates on a live gateway (issue 16)."""

import asyncio
import stat

import pytest

from citycard.domain.results import Result
from citycard.protocols import messages as m
from tests.support.city import plain_cards, running_city
from tests.support.cli import citycard_env, run_citycard
from tests.support.clock import now_ms
from tests.support.terminal import RawConn

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("ray_cluster")]



def test_register_writes_a_key_the_terminal_authenticates_with(configured_services, schema, tmp_path):
    env = citycard_env(configured_services, schema)
    key_file = tmp_path / "t4101.key"

    async def go() -> None:
        async with running_city(configured_services, schema, n_cards=50, n_terminals=1) as city:
            code, out, err = await run_citycard(env, "terminal", "register", "4101", "--kind", "bus", "--route", "12",
                                            "--key-file", str(key_file))
            assert code == 0 and "registered" in out and str(key_file) in out, (out, err)
            assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
            text = key_file.read_text()
            assert len(text) == 65 and text.endswith("\n")
            key = bytes.fromhex(text)
            conn = await RawConn.authenticated(city.port, 4101, key)  # only the file's key: no master key
            conn._client = None
            tap = m.Tap(seq=1, card=plain_cards(city)[0], time_ms=now_ms(), kind=1, route=12)
            await conn.send(len(body := m.encoder.encode(tap)).to_bytes(4, "big") + body)
            result = await conn.read(10.0)
            assert result is not None and result["code"] == Result.OK, result
            await conn.close()

            # the file exists: refused before anything is done, the file untouched
            key_file.write_text("someone else's\n")
            code, out, err = await run_citycard(env, "terminal", "register", "4102", "--kind", "bus", "--route", "3",
                                            "--key-file", str(key_file))
            assert code == 2 and "exists" in err and "--force" in err and "Traceback" not in err, (out, err)
            assert key_file.read_text() == "someone else's\n"
            code, out, err = await run_citycard(env, "terminal", "show", "4102")
            assert code == 2 and "not registered" in err, (out, err)
            # --force replaces it (a terminal already registered gets its key again)
            code, out, err = await run_citycard(env, "terminal", "register", "4101", "--kind", "bus", "--route", "12",
                                            "--key-file", str(key_file), "--force")
            assert code == 0 and "already registered" in out, (out, err)
            assert key_file.read_text() == text and stat.S_IMODE(key_file.stat().st_mode) == 0o600

    asyncio.run(asyncio.wait_for(go(), 240))
