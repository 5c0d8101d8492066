"""The running operator process: its settings, the composition root wiring both controllers to
the runtime, and the thin kopf registrations."""
