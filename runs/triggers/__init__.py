"""What starts runs on its own: schedules (beat), inbound webhooks and event triggers. The
trigger rows, their validation and beat entries belong to `workflows`; starting the run needs
the engine, so firing lives here, above it. The engine announces finished runs through
`runs.signals`; `receivers` listens (connected in `RunsConfig.ready`)."""
