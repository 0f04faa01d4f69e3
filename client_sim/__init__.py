"""The giftstream viewer bot: async viewers that sign up, buy coins, watch a live room,
chat and send gifts, with a live feed of the room and a summary of what they measured.

`python -m client_sim --help` (see `client_sim.cli`).
"""
