"""chat-bench: one benchmark for the whole pipeline (API -> outbox -> relay -> gateway).

``chat-bench`` starts the stack the way ``chat-dev`` does (or targets a running one), loads a
realistic data set, measures every figure of issue 8 and compares it with its target.
"""
