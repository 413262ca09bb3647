"""An attached gateway's actor handles are found again by name when the first gateway's
restart killed the actors (fakes for Ray's handles and its name lookup)."""

import asyncio
from typing import Any

import pytest
import ray
from ray.exceptions import ActorDiedError

from citycard.actors.named_actor import NamedActor
from citycard.cli.runtime import Platform, actor_name
from citycard.config.settings import load_settings


class FakeActor:
    """A Ray handle's shape: ``await actor.probe.remote()``; dead once ``killed``."""

    def __init__(self, tag: str) -> None:
        self.tag, self.killed = tag, False
        self.probe = self.stats = self  # every method answers with the actor's tag

    def remote(self, *_args: Any) -> Any:
        async def answer() -> str:
            if self.killed:
                raise ActorDiedError()
            return self.tag

        return answer()


class Registry:
    """Ray's named actors: the first gateway's restart kills them and makes new ones, same names."""

    def __init__(self) -> None:
        self.actors: dict[str, FakeActor] = {}
        self.lookups = 0

    def get_actor(self, name: str, namespace: str | None = None) -> FakeActor:
        self.lookups += 1
        if name not in self.actors:
            raise ValueError(f"Failed to look up actor with name '{name}'")
        return self.actors[name]


def test_a_dead_actor_is_looked_up_again_at_most_once_per_interval() -> None:
    reg = Registry()
    reg.actors["s:account:0"] = old = FakeActor("old")
    h = NamedActor("s:account:0", old, lambda: reg.get_actor("s:account:0"), relookup_interval_s=0.3)

    async def scenario() -> None:
        assert await h.probe.remote() == "old" and reg.lookups == 0
        old.killed = True
        del reg.actors["s:account:0"]  # the first gateway is restarting: no actor of that name yet
        with pytest.raises(ActorDiedError):
            await h.probe.remote()
        assert reg.lookups == 1
        for _ in range(5):  # a burst of failing calls: no lookup storm
            with pytest.raises(ActorDiedError):
                await asyncio.gather(*(h.probe.remote() for _ in range(3)))
        assert reg.lookups == 1
        reg.actors["s:account:0"] = FakeActor("new")  # it is back
        await asyncio.sleep(0.35)
        with pytest.raises(ActorDiedError):  # this call went to the dead handle; it finds the new one
            await h.probe.remote()
        assert reg.lookups == 2 and await h.probe.remote() == "new"
        assert await h.stats.remote() == "new" and reg.lookups == 2

    asyncio.run(scenario())


def test_an_attached_platform_reaches_the_restarted_first_gateways_actors(monkeypatch) -> None:
    settings = load_settings(env={}, overrides={"city": {"account_shards": 2, "session_shards": 1}})
    reg = Registry()
    names = [actor_name(settings, "account", i) for i in range(2)] + [actor_name(settings, "session", 0)]
    for n in names:
        reg.actors[n] = FakeActor(f"first:{n}")
    monkeypatch.setattr(ray, "get_actor", reg.get_actor)
    platform = Platform(settings, services=None, attach=True)  # type: ignore[arg-type]
    shards, sessions = platform._find_actors()

    async def scenario() -> None:
        for a in shards + sessions:
            a.relookup_interval_s = 0.0
        for n in names:  # the first gateway restarts: its actors killed, new ones with the same names
            reg.actors[n].killed = True
            reg.actors[n] = FakeActor(f"second:{n}")
        for a in shards + sessions:
            with pytest.raises(ActorDiedError):
                await a.probe.remote()
        answers = [await a.probe.remote() for a in shards + sessions]
        assert answers == [f"second:{n}" for n in names]

    asyncio.run(scenario())
