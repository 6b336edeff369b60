"""chat-bench: one benchmark for the whole pipeline (API -> outbox -> relay -> gateway).

``chat-bench`` starts the stack the way ``chat-dev`` does, but with PostgreSQL on durable
commits (or targets a running one), loads a realistic data set, runs its phases
(``chat_bench.phases``) and compares every figure with its target. docs/performance.md has the
figures and how to add a phase.
"""
