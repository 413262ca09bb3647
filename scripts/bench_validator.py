"""Tap to result at the validator, through the real PC/SC stack: the emulated card (state file
fsynced before each answer) in vpcd's reader, pcscd, pyscard, reader_pool, the sale with its
SQLite store (fsynced twice a sale). By APDU count:

- hotlisted: SELECT, READ BINARY 15, refused (2 APDUs)
- passback: + GET BALANCE, READ RECORD 17, refused by the rules (4 APDUs)
- sale: + INITIALIZE, UPDATE CAPP DATA CACHE, DEBIT (7 APDUs)
- recovered: a sale that settles a torn one first, + GET TRANSACTION PROOF (8 APDUs)

"transaction" is from the card's session opening to the result (what the card and the
validator do); "insert to result" adds pcscd noticing the card (it polls vpcd every 400 ms).
Needs pcscd with vsmartcard-vpcd running (reader "Virtual PCD 00 00").

    python scripts/bench_validator.py --runs 3 --per-case 8 --json out.json
"""

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from citycard.config.fare_table import shipped_tables
from citycard.config.settings import load_settings
from citycard.domain.cards import Category
from citycard.domain.offline import IssuerKeys, batch_key
from citycard.domain.sam import SoftSam
from citycard.domain.taps import TapKind
from citycard.emulator.runner import CardEmulator, port_listening
from citycard.emulator.state_file import new_card
from citycard.protocols.vpcd import VPCD_PORT
from citycard.validator.pcsc import PcscCardReader
from citycard.validator.sale import Validator
from citycard.validator.store import Store

READER = "Virtual PCD 00 00"
CASES = ("hotlisted", "passback", "sale", "recovered")
TERMINAL, ROUTE = 4097, 12
STEP_MS = 3_600_000  # an hour between sales: no passback, no transfer
TIMEOUT_S = 10.0


async def one_run(per_case: int, work: Path, run: int) -> dict[str, dict[str, list[float]]]:
    s = load_settings()
    keys = IssuerKeys.of_hex(s.card.issuer_mpk_hex, s.card.issuer_mlk_hex, s.card.issuer_mtk_hex)
    tables = shipped_tables()
    store = Store(work / f"store-{run}.sqlite3", TERMINAL, 1_000_000)
    sam = SoftSam(TERMINAL, keys.mpk, batch_key(bytes(16), TERMINAL), store.next_seq())
    validator = Validator(sam, store, tables, int(TapKind.BUS), ROUTE)
    card_no = 33010000000000013 + 10 * run
    card = new_card(keys, card_no, 100_000, int(Category.ADULT), date.today(), lambda: b"\x01\x02\x03\x04")
    emulator = CardEmulator(card, work / f"card-{run}.json", on_event=lambda _line: None)
    now_ms = int(time.time() * 1000)
    out: dict[str, dict[str, list[float]]] = {c: {"transaction_ms": [], "insert_to_result_ms": [], "apdus": []}
                                              for c in CASES}
    async with PcscCardReader(READER, apdu_timeout_ms=2000) as reader:
        for case in CASES:
            store.hotlist_apply(True, [card_no] if case == "hotlisted" else [], [], 1)
            for _ in range(per_case):
                if case == "recovered":  # a torn sale first, then the measured one settles it
                    emulator.arm_tear()
                    now_ms += STEP_MS
                    await present(emulator, reader, validator, now_ms)
                if case != "passback":
                    now_ms += STEP_MS
                sale, took_ms, insert_ms = await present(emulator, reader, validator, now_ms)
                want = {"hotlisted": "HOTLISTED", "passback": "PASSBACK", "sale": "OK", "recovered": "OK"}[case]
                if sale.result != want or (case == "recovered") != (sale.recovered == 1):
                    raise SystemExit(f"{case}: expected {want}, got {sale}")
                out[case]["transaction_ms"].append(took_ms)
                out[case]["insert_to_result_ms"].append(insert_ms)
                out[case]["apdus"].append(sale.apdus)
            if case == "hotlisted":
                store.hotlist_apply(True, [], [], 2)
                now_ms += STEP_MS
                await present(emulator, reader, validator, now_ms)  # a sale, so passback has one to refuse
    emulator.stop()
    store.close()
    return out


async def present(emulator: CardEmulator, reader: PcscCardReader, validator: Validator, now_ms: int):  # type: ignore[no-untyped-def]
    emulator.insert()
    inserted = time.perf_counter()
    card = await reader.next_card(TIMEOUT_S)
    if card is None:
        raise SystemExit("pcscd never reported the card")
    started = time.perf_counter()
    sale = await validator.sell(card.transmit, now_ms, date.today())
    done = time.perf_counter()
    emulator.remove()
    await reader.card_gone(TIMEOUT_S)
    return sale, (done - started) * 1000, (done - inserted) * 1000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--per-case", type=int, default=8)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if not port_listening(VPCD_PORT):
        print("pcscd with vsmartcard-vpcd is not running (vpcd's port is closed)", file=sys.stderr)
        return 2
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            runs.append(asyncio.run(one_run(args.per_case, Path(tmp), run)))
    summary: dict[str, dict[str, object]] = {}
    for case in CASES:
        row: dict[str, object] = {"apdus": runs[0][case]["apdus"][0]}
        for metric in ("transaction_ms", "insert_to_result_ms"):
            medians = [statistics.median(r[case][metric]) for r in runs]
            worst = [max(r[case][metric]) for r in runs]
            row[metric] = {"median": round(statistics.median(medians), 1), "min": round(min(medians), 1),
                           "max": round(max(medians), 1), "worst_single": round(max(worst), 1)}
        summary[case] = row
        t, i = row["transaction_ms"], row["insert_to_result_ms"]
        print(f"{case:10} {row['apdus']} APDUs  transaction ms median {t['median']} (min {t['min']}, max {t['max']},"  # type: ignore[index]
              f" worst {t['worst_single']})  insert to result ms median {i['median']} (min {i['min']},"  # type: ignore[index]
              f" max {i['max']})")  # type: ignore[index]
    if args.json:
        args.json.write_text(json.dumps({"runs": args.runs, "per_case": args.per_case, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
