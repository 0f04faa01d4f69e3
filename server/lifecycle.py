"""What the app knows of its process's life, shared by the app (`/readyz`) and the
server that drains it (`server.serving`): found in the lifespan's state under
`LIFECYCLE_STATE`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

LIFECYCLE_STATE = "lifecycle"


@dataclass
class Lifecycle:
    """`/readyz` answers 503 while `draining`: from the stop signal to the process's end."""

    draining: bool = False
    started_at: float = field(default_factory=time.time)
