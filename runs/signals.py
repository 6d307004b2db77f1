"""Where the rest of the platform listens to the engine. Receivers run inside the engine's
transaction (with the run row locked): write rows there (an outbox), and send anything to the
outside world only from `transaction.on_commit`. An exception in a receiver rolls the
transition back, so receivers must not fail on bad data."""

from django.dispatch import Signal

# A run reached a final status. kwargs: run
run_finished = Signal()

# Events were appended to a run's log. kwargs: run_id, events (list of RunEvent, in seq order)
events_appended = Signal()

# A model call was charged (budgets already are, by the same transaction; metrics listen).
# kwargs: run, step, cost (Decimal), input_tokens, output_tokens
usage_charged = Signal()
