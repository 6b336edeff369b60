"""What makes the services' Redis use work on a Redis Cluster, without a server: the address
forms that select it, the hash slots of keys that one script or command touches together, and
the limiter's reading of the cluster's answers (CLUSTER SLOTS, MOVED, ASK).

Why: on a cluster a script or multi-key command whose keys hash to two slots is refused
(CROSSSLOT), and a wrong address form would silently talk to one node as if it were the whole.
"""

from __future__ import annotations

import pytest
from redis.asyncio.cluster import RedisCluster

from chat_shared.config import ConfigError, RedisSettings, load_settings
from chat_shared.events import epoch_key, stream_keys
from chat_shared.ratelimit._cluster import parse_cluster_slots
from chat_shared.ratelimit._redis import Redirected, _wire
from chat_shared.redis_client import create_redis, group_by_slot, key_slot


def settings(**values: object) -> RedisSettings:
    return load_settings(RedisSettings, _env_file=None, **values)


@pytest.mark.parametrize(("addr", "cluster", "nodes"), [
    ("redis:6379", False, [("redis", 6379)]),
    ("redis+cluster://a:7000,b:7001", True, [("a", 7000), ("b", 7001)]),
    ("redis+cluster://a:7000/", True, [("a", 7000)]),
])
def test_the_address_says_whether_it_is_a_cluster(addr: str, cluster: bool,
                                                  nodes: list[tuple[str, int]]) -> None:
    s = settings(redis_addr=addr)
    assert (s.cluster_mode, s.redis_nodes) == (cluster, nodes)


def test_redis_cluster_true_makes_a_list_of_nodes_a_cluster() -> None:
    s = settings(redis_addr="a:7000,b:7001", redis_cluster=True)
    assert s.cluster_mode and s.redis_nodes == [("a", 7000), ("b", 7001)]


@pytest.mark.parametrize(("values", "named"), [
    ({"redis_addr": "a:7000,b:7001"}, "REDIS_CLUSTER=true"),
    ({"redis_addr": "redis+cluster://a:7000", "redis_db": 2}, "REDIS_DB must be 0"),
    ({"redis_addr": "redis+cluster://:secret@a:7000"}, "REDIS_PASSWORD"),
    ({"redis_addr": "a:7000,b"}, "REDIS_ADDR"),
])
def test_bad_cluster_addresses_are_refused_with_the_variable_named(
        values: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings(**values)
    assert named in str(err.value)
    assert "secret" not in str(err.value)


def test_the_factory_hands_out_a_cluster_client_for_a_cluster() -> None:
    assert isinstance(create_redis(settings(redis_addr="redis+cluster://127.0.0.1:7000")),
                      RedisCluster)
    assert not isinstance(create_redis(settings(redis_addr="127.0.0.1:6379")), RedisCluster)


@pytest.mark.parametrize("prefix", ["chat:events", "{chat}:events", "tenant-a:events"])
def test_a_stream_and_its_epoch_key_share_a_slot(prefix: str) -> None:
    for stream in stream_keys(16, prefix):
        assert key_slot(epoch_key(stream)) == key_slot(stream), stream
    assert epoch_key("chat:events:0") == "{chat:events:0}:epoch"


def test_streams_spread_over_slots_and_reads_are_grouped_by_slot() -> None:
    keys = stream_keys(8)
    assert len({key_slot(k) for k in keys}) == 8
    assert group_by_slot(keys) == [[k] for k in keys]
    tagged = [f"{{chat}}:events:{i}" for i in range(3)]
    assert group_by_slot([*tagged, "other"]) == [tagged, ["other"]]


def test_a_check_without_ceiling_names_one_slot_only() -> None:
    """An empty ceiling key would hash to slot 0: the user's key goes in its place."""
    assert _wire(("chat:rl:{t}:u:a:send", "", 1, 2, 0, 0)) == (
        "chat:rl:{t}:u:a:send", "chat:rl:{t}:u:a:send", 1, 2, 0, 0)
    both = ("chat:rl:{t}:u:a:send", "chat:rl:{t}:t:send", 1, 2, 3, 4)
    assert _wire(both) == both
    assert key_slot(both[0]) == key_slot(both[1])


def test_redirections_and_slot_maps_are_read_as_redis_writes_them() -> None:
    moved = Redirected("MOVED 3999 127.0.0.1:7002")
    assert (moved.ask, moved.slot, moved.address) == (False, 3999, ("127.0.0.1", 7002))
    ask = Redirected("ASK 12 10.0.0.5:6380")
    assert (ask.ask, ask.slot, ask.address) == (True, 12, ("10.0.0.5", 6380))
    reply = [[0, 5460, [b"10.0.0.1", 7000, b"id1"], [b"10.0.0.4", 7003, b"id4"]],
             [5461, 16383, [b"", 7001, b"id2"]]]
    assert parse_cluster_slots(reply, ("10.0.0.9", 7001)) == [
        (0, 5460, ("10.0.0.1", 7000)), (5461, 16383, ("10.0.0.9", 7001))]
    with pytest.raises(ValueError):
        parse_cluster_slots(b"nope", ("h", 1))
