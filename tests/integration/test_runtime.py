"""The supervisor: a loop that dies stops its process loudly, never half-alive."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from services.settings import Settings

SERVE_WITH_A_BROKEN_PROJECTOR = textwrap.dedent("""
    import asyncio
    from services.bootstrap import build
    from services.runtime import serve

    services = build()

    async def broken() -> None:
        await asyncio.sleep(0.5)
        raise RuntimeError("projector bug")

    services.projector.run = broken
    asyncio.run(serve(services))
""")


def test_a_loop_that_dies_stops_the_process_with_a_non_zero_exit(settings: Settings) -> None:
    env = {**os.environ, **settings.as_env()}
    done = subprocess.run([sys.executable, "-c", SERVE_WITH_A_BROKEN_PROJECTOR], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "loop died, stopping the process" in output and "projector bug" in output
