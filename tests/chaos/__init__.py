"""
The chaos harness: real processes stream numbered messages over a channel
while its host is killed, frozen, stopped or starved, and the harness counts
what was sent, delivered, duplicated, lost and reordered.

``python -m tests.chaos --help`` runs it by hand; ``python -m tests.chaos
soak`` runs the long version and writes ``docs/reliability.md``.
"""
