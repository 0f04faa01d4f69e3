"""The giftstream benchmark: `python -m bench [--profile full|tiny] [--out DIR]`.

One command that starts its own Redis, server processes and load-client processes on
this machine, measures fan-out, gifts, memory per idle viewer, the raw websockets
ceiling and one process against two, prints each figure with its conditions and the
targets with PASS/MISS, and writes `report.json` and `report.md`.
"""
