"""The Redis transport (sparkops/broker.py): a channel's connection pool makes a caller wait for
a free connection instead of refusing it, so a gevent worker acking hundreds of tasks at once
queues on CELERY_BROKER_MAX_CONNECTIONS connections rather than failing its acks."""

from __future__ import annotations

import threading
from typing import Any

import kombu
import redis

from sparkops import broker
from sparkops.testing.processes import RedisServer


def test_a_redis_channel_waits_for_a_free_connection_instead_of_refusing():
    server = RedisServer()
    server.start()
    try:
        with kombu.Connection(server.url, transport_options={"max_connections": 1}) as conn:
            channel = conn.default_channel
            assert isinstance(channel, broker.RedisChannel)
            pool = channel.pool
            assert isinstance(pool, redis.BlockingConnectionPool)
            held = pool.get_connection()
            outcome: list[Any] = []

            def second() -> None:
                try:
                    outcome.append(pool.get_connection())
                except Exception as exc:  # a refusing pool raises at once
                    outcome.append(exc)

            waiter = threading.Thread(target=second)
            waiter.start()
            waiter.join(0.3)
            assert waiter.is_alive() and outcome == [], outcome  # waiting, not refused
            pool.release(held)
            waiter.join(10)
            assert len(outcome) == 1 and isinstance(outcome[0], redis.Connection), outcome
            pool.release(outcome[0])
            # The pool still speaks to the server, with kombu's settings.
            assert redis.Redis(connection_pool=pool).ping()
    finally:
        server.close()
