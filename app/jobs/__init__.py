"""The job-lifecycle core: the only code that changes a job's status (see lifecycle.py).

states.py   statuses, the table of legal transitions, terminal states
kinds.py    the JobKind registry: one declaration per kind
lifecycle.py  submit, claim, progress, succeed, fail, cancel, hand_back, recover_lost, expire — one transaction each
dispatch.py   outbox -> broker: the fast path after commit and the relay
signals.py    cross-process wake-ups: a job ended (long-polls), a cancel (workers), a cache to drop
maintenance.py  the scheduler's passes: relay, reconciler, timeouts, batch finalisation, due webhooks
"""
