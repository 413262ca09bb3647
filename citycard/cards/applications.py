"""A card's applications (e-purse, online account, library, health insurance, merchant
alliance) and products (monthly bus pass, park annual pass), set through its shard."""

import uuid
from dataclasses import asdict, dataclass
from typing import Literal

from ..domain.cards import App
from ..domain.ops import SetApps, SetProduct
from ..domain.views import CardView
from ..persistence import audit
from .errors import Invalid, check_result
from .services import CardInfo, Services, card_info
from .who import Who

Product = Literal["monthly_pass", "park_pass"]
_FLAGS = (("epurse", App.EPURSE), ("online", App.ONLINE), ("library", App.LIBRARY), ("medical", App.MEDICAL),
          ("merchant_member", App.MERCHANT_MEMBER))


@dataclass(frozen=True)
class Apps:
    epurse: bool = True
    online: bool = True
    library: bool = False
    medical: bool = False
    insurance: str = ""  # insurance category; required with medical
    medical_from_purse: bool = False  # self-pay may come from the ordinary purses
    merchant_member: bool = False

    def flags(self) -> int:
        return sum(int(flag) for name, flag in _FLAGS if getattr(self, name))


def apps_of(view: CardView) -> Apps:
    on = {name: bool(view.apps & flag) for name, flag in _FLAGS}
    return Apps(**on, insurance=view.insurance, medical_from_purse=view.medical_from_purse)


def check_insurance(svc: Services, apps: Apps) -> None:
    if apps.medical and not apps.insurance:
        raise Invalid("apps.insurance: required when medical is enabled", field="apps.insurance")
    known = svc.insurance_categories
    if apps.insurance and apps.insurance not in known:
        raise Invalid(f"apps.insurance: not one of {sorted(known)}", field="apps.insurance")


def fresh_key(scope: str, card_no: int) -> str:
    """An op key for an op idempotent by nature (setting a state): a retry sets it again."""
    return f"{scope}:{card_no}:{uuid.uuid4().hex}"


async def set_apps(svc: Services, who: Who, card_no: int, apps: Apps) -> CardInfo:
    check_insurance(svc, apps)
    before = await card_info(svc, card_no)
    out = await svc.shards.apply_op(SetApps(fresh_key("apps", card_no), card_no, apps.flags(),
                                            apps.insurance if apps.medical else "", apps.medical_from_purse))
    check_result(out.result, card_no)
    assert out.view is not None
    after = CardInfo(out.view, before.holder_id)
    await audit.record(svc.pool, who.name, who.role, "card.apps", f"card:{card_no}", asdict(apps_of(before.view)),
                       asdict(apps_of(after.view)))
    return after


async def set_product(svc: Services, who: Who, card_no: int, product: Product, from_ms: int,
                      until_ms: int) -> CardInfo:
    """Buy or renew a product for [from_ms, until_ms); until_ms <= from_ms removes it."""
    before = await card_info(svc, card_no)
    out = await svc.shards.apply_op(SetProduct(fresh_key(product, card_no), card_no, product, from_ms, until_ms))
    check_result(out.result, card_no)
    assert out.view is not None
    after = CardInfo(out.view, before.holder_id)
    await audit.record(svc.pool, who.name, who.role, f"card.{product}", f"card:{card_no}",
                       getattr(before.view, product), getattr(after.view, product))
    return after
