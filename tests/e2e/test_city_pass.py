"""The city-pass end to end, through the real stack: the emulated card in vpcd's reader, pcscd,
pyscard and reader_pool; a counter load with MAC2 from the HTTP API; validators selling
offline with the gateway down, a torn sale settled when the card comes back, store and
forward once the gateway is up, and a loss report reaching the validator's hotlist."""

import asyncio
import contextlib
import os
from datetime import date
from pathlib import Path

import pytest

from citycard.config.fare_table import load_fare_tables
from citycard.counter.load import load_card
from citycard.domain.cards import Category
from citycard.domain.offline import IssuerKeys
from citycard.domain.taps import TapKind
from citycard.emulator.runner import CardEmulator
from citycard.emulator.state_file import new_card
from citycard.reader_pool import ReaderPool
from citycard.validator.pcsc import PcscCardReader
from citycard.validator.run import ValidatorApp, ValidatorSettings
from tests.support.city import api_city, plain_cards
from tests.support.pcsc import READER

pytestmark = [pytest.mark.usefixtures("ray_cluster"), pytest.mark.timeout(300)]
WAIT_S = 20.0
COUNTER_TERMINAL = 9001




async def wait_for(what: str, check, timeout_s: float = WAIT_S) -> None:  # noqa: ANN001
    for _ in range(int(timeout_s / 0.05)):
        if await check() if asyncio.iscoroutinefunction(check) else check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Validator:
    """A validator app on the shared reader, run as a task; ``present`` shows it the card."""

    def __init__(self, cfg: ValidatorSettings, tables, emulator: CardEmulator) -> None:  # noqa: ANN001
        self.cfg, self.tables, self.emulator = cfg, tables, emulator
        self.lines: list[str] = []

    async def __aenter__(self) -> "Validator":
        self.reader = await PcscCardReader(READER, apdu_timeout_ms=2000).__aenter__()
        self.app = ValidatorApp(self.cfg, self.tables, self.reader, out=self.lines.append)
        self.task = asyncio.get_running_loop().create_task(self.app.run())
        return self

    async def present(self, tear: bool = False):  # noqa: ANN201 - the Sale
        n = len(self.app.sales)
        if tear:
            self.emulator.arm_tear()
        await asyncio.to_thread(self.emulator.insert)
        await wait_for("the sale", lambda: len(self.app.sales) > n)
        await asyncio.to_thread(self.emulator.remove)
        return self.app.sales[-1]

    async def __aexit__(self, *exc: object) -> None:
        self.app.stop()
        await asyncio.wait_for(self.task, WAIT_S)
        await self.reader.__aexit__(None, None, None)


def test_load_sell_offline_tear_upload_and_hotlist(configured_services, schema, pcscd, tmp_path: Path):  # noqa: ANN001
    async def scenario() -> None:
        async with api_city(configured_services, schema) as api:
            city, s = api.city, api.city.settings
            keys = IssuerKeys.of_hex(s.card.issuer_mpk_hex, s.card.issuer_mlk_hex, s.card.issuer_mtk_hex)
            card_no = plain_cards(city)[0]
            card = new_card(keys, card_no, 0, int(Category.ADULT), date.today(), lambda: os.urandom(4))
            emulator = CardEmulator(card, tmp_path / "card.json", on_event=lambda _line: None)
            conn = await city.conn()
            try:
                # 1. At the counter: 30 yuan in cash onto the card, MAC2 from the host.
                async with ReaderPool(lambda name: name == READER) as pool:
                    await asyncio.to_thread(emulator.insert)
                    session = await pool.card(READER, timeout_ms=int(WAIT_S * 1000))
                    loaded = await load_card(session.transmit, api.http, api.tokens["clerk"], amount_fen=3000,
                                             source="cash", key="counter-load-1", terminal_id=COUNTER_TERMINAL)
                    assert (loaded.card_no, loaded.balance_fen, loaded.replay, loaded.tac_verified) == \
                        (card_no, 3000, False, True)
                    # The clerk runs it again: nothing moves twice, the card's proof confirms it.
                    again = await load_card(session.transmit, api.http, api.tokens["clerk"], amount_fen=3000,
                                            source="cash", key="counter-load-1", terminal_id=COUNTER_TERMINAL)
                    assert again.replay and card.state.balance_fen == 3000
                    await asyncio.to_thread(emulator.remove)
                assert await conn.fetchval("SELECT loaded_fen FROM offline_cards WHERE card_no = $1", card_no) == 3000

                # 2. Validators sell with the gateway down: store and forward.
                tables = load_fare_tables(s.fare_table_path())
                a_id, b_id = city.terminals[0].terminal_id, city.terminals[1].terminal_id

                def cfg(terminal_id: int, gateway: tuple[str, int]) -> ValidatorSettings:
                    return ValidatorSettings(
                        terminal_id=terminal_id, kind=int(TapKind.BUS), route=12,
                        state_dir=tmp_path / f"validator-{terminal_id}", gateway=gateway,
                        terminal_key_master=s.city.master_key, issuer_mpk=keys.mpk,
                        batch_master_key=bytes.fromhex(s.card.batch_master_key_hex), upload_interval_s=0.2)

                down = ("127.0.0.1", 9)  # nothing listens: the gateway is down
                async with Validator(cfg(a_id, down), tables, emulator) as a:
                    sale = await a.present()
                    assert sale.ok and sale.apdus == 7, sale
                    fare_a = sale.fare_fen
                async with Validator(cfg(b_id, down), tables, emulator) as b:
                    torn = await b.present(tear=True)
                    assert not torn.ok and torn.result == "CARD_REMOVED", torn
                    spent_before = card.state.balance_fen
                    back = await b.present()
                    assert back.recovered == 1 and back.result == "PASSBACK", back
                    assert card.state.balance_fen == spent_before  # settled, not sold twice
                    fare_b = 3000 - fare_a - spent_before
                assert await conn.fetchval("SELECT count(*) FROM offline_records WHERE card_no = $1", card_no) == 0

                # 3. The gateway is reachable: each validator uploads what it kept.
                up = ("127.0.0.1", city.port)
                for terminal_id in (a_id, b_id):
                    async with Validator(cfg(terminal_id, up), tables, emulator) as v:
                        await wait_for("the upload", lambda v=v: any("uploaded batch" in ln for ln in v.lines))
                        assert v.app.store.counts() == {"pending": 0, "sold": 0, "refused": 0}, v.lines
                rows = await conn.fetch("SELECT offline_counter, amount_fen, code FROM offline_records"
                                        " WHERE card_no = $1 ORDER BY offline_counter", card_no)
                assert [(r["offline_counter"], r["amount_fen"], r["code"]) for r in rows] == \
                    [(0, fare_a, 0), (1, fare_b, 0)]
                shadow = await conn.fetchrow("SELECT loaded_fen - spent_fen AS balance FROM offline_cards"
                                             " WHERE card_no = $1", card_no)
                assert shadow["balance"] == card.state.balance_fen

                history = await api.http.get(f"/cards/{card_no}/transactions", headers=api.auth())
                assert history.status_code == 200, history.text
                purse = history.json()["card_purse"]
                assert sorted((i["kind"], i["amount_fen"]) for i in purse) == \
                    sorted([("load", 3000), ("offline_purchase", fare_a), ("offline_purchase", fare_b)]), purse
                assert all(i["ledger"] == "card_purse" for i in purse)
                assert history.json()["shadow_balance_fen"] == card.state.balance_fen

                # 4. The card is reported lost: validators learn it by hotlist deltas and refuse it.
                r = await api.http.post(f"/cards/{card_no}/loss", headers=api.auth(),
                                        json={"reason": "lost on the bus"})
                assert r.status_code in (200, 201), r.text
                async with Validator(cfg(a_id, up), tables, emulator) as v:
                    await wait_for("the hotlist", lambda v=v: v.app.store.listed(card_no))
                    refused = await v.present()
                    assert refused.result == "HOTLISTED" and "card blocked" in refused.display(), refused
                    assert card.state.balance_fen == shadow["balance"]
            finally:
                with contextlib.suppress(Exception):
                    emulator.stop()
                await conn.close()

    asyncio.run(scenario())
