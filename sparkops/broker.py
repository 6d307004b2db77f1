"""The embedded default's broker: kombu's filesystem transport, with atomic message writes.

kombu's own `_put` creates the message file and then writes it; a consumer polling the folder
can move and read the file in between, get an empty payload and die with "Unrecoverable
error: JSONDecodeError" (seen under load in bench/engine.py). Here a message is written to a
staging folder on the same filesystem and renamed into place, so a consumer only ever sees
complete files. Registered as the `sparkfs://` transport."""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
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
