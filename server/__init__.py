"""giftstream: a simulated live-stream gifting server."""
