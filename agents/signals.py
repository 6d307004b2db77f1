"""Questions agents asks the layers above it, which it does not know.

`agent_used_by(sender=Agent, agent=...)`: asked before an agent is deleted (and by its admin's
delete page); each receiver returns the names of what uses the agent (workflows answer with
theirs, see workflows/receivers.py). A used agent is not deleted."""

from __future__ import annotations

from django.dispatch import Signal

agent_used_by = Signal()
