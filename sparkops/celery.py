from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals

from . import broker  # noqa: F401  (registers the sparkfs:// transport of the embedded default)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sparkops.settings")

app = Celery("sparkops")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# --- observability hooks (sparkops.tracing, sparkops.metrics); imported lazily: this module
# loads before Django's settings, and prometheus_client must see them first.


@signals.before_task_publish.connect(dispatch_uid="sparkops-trace-publish")
def _trace_publish(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    from sparkops import tracing  # lazily: see above

    tracing.inject_headers(headers)


@signals.task_prerun.connect(dispatch_uid="sparkops-trace-prerun")
def _trace_prerun(task_id: str | None = None, task: Any = None, **kwargs: Any) -> None:
    from sparkops import tracing  # lazily: see above

    tracing.task_started(task_id, getattr(task, "request", None))


@signals.task_postrun.connect(dispatch_uid="sparkops-trace-postrun")
def _trace_postrun(task_id: str | None = None, **kwargs: Any) -> None:
    from sparkops import tracing  # lazily: see above

    tracing.task_finished(task_id)


@signals.worker_process_shutdown.connect(dispatch_uid="sparkops-process-shutdown")
@signals.worker_shutdown.connect(dispatch_uid="sparkops-worker-shutdown")
def _process_exit(**kwargs: Any) -> None:
    """A pool process (prefork) or the worker itself exits: export the spans still batched and
    drop this process's live-gauge files."""
    from sparkops import metrics, tracing  # lazily: see above

    tracing.force_flush(timeout_millis=5_000)  # bounded: the collector may be down
    metrics.mark_process_dead()
