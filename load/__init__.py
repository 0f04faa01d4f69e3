"""The giftstream load harness: a Locust file of WebSocket viewers (`load/locustfile.py`)
and a runner that starts the server, runs Locust headless, samples the server's CPU and
memory, audits the store and writes a report (`python -m load.run --help`)."""
