from __future__ import annotations

import sys

from client_sim.cli import main

sys.exit(main())
