"""The brokers' transports: kombu's filesystem transport with atomic message writes (the
embedded default), and kombu's Redis transport with a blocking connection pool.

kombu's own `_put` creates the message file and then writes it; a consumer polling the folder
can move and read the file in between, get an empty payload and die with "Unrecoverable
error: JSONDecodeError" (seen under load in bench/engine.py). Here a message is written to a
staging folder on the same filesystem and renamed into place, so a consumer only ever sees
complete files. Registered as the `sparkfs://` transport.

kombu's Redis channel takes a connection from a redis-py pool for every ack and publish, and
that pool refuses the 11th concurrent one (`MaxConnectionsError`: "Too many connections").
A threads pool rarely gets there; a gevent worker with hundreds of tasks finishing at once
does, and a refused ack leaves the message to be redelivered. Here the pool blocks instead:
at most `max_connections` (CELERY_BROKER_MAX_CONNECTIONS) connections per channel, and a
greenlet or thread that finds none free waits for one (up to `POOL_TIMEOUT` seconds).
Registered for `redis://` and `rediss://`, so URLs stay as they are."""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

import redis
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    # The signature of kombu's filesystem Channel (our parent): its abstract base names the
    # second argument `message` and takes no keywords; kombu passes both positionally.
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        staging = os.path.join(os.path.dirname(os.path.abspath(self.data_folder_out)), "staging")
        os.makedirs(staging, exist_ok=True)
        temporary = os.path.join(staging, name)
        try:
            with open(temporary, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(temporary, os.path.join(self.data_folder_out, name))
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot add {name!r} to the queue folder") from exc


class Transport(filesystem.Transport):
    Channel = Channel
    driver_type = "filesystem"
    driver_name = "sparkfs"


TRANSPORT_ALIASES["sparkfs"] = "sparkops.broker:Transport"


class RedisChannel(kombu_redis.Channel):
    POOL_TIMEOUT = 30.0

    def _get_pool(self, asynchronous: bool = False) -> redis.BlockingConnectionPool:
        pool = super()._get_pool(asynchronous)  # kombu's parameters, in a refusing pool
        return redis.BlockingConnectionPool(
            connection_class=pool.connection_class,
            max_connections=pool.max_connections,
            timeout=self.POOL_TIMEOUT,
            **pool.connection_kwargs,
        )


class RedisTransport(kombu_redis.Transport):
    Channel = RedisChannel


TRANSPORT_ALIASES["redis"] = "sparkops.broker:RedisTransport"
TRANSPORT_ALIASES["rediss"] = "sparkops.broker:RedisTransport"
