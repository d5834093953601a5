"""The demo Space: live at once, with a built-in host whose generated program goes through
the same WebRTC ingest as a real speaker's voice. A person can join its stage from the
listener page and accept themselves from the host console (its key is printed at start)."""

from __future__ import annotations

import asyncio
import logging

from amphi.control.spaces import Space
from amphi.core.tls import own_context
from amphi.media.ingest.client import SpeakError, stay_on_stage
from amphi.media.ingest.sources import GeneratedTrack
from amphi.media.programs import demo_program
from amphi.node import Node

log = logging.getLogger(__name__)

RETRY_S = (0.5, 1, 2, 5)


async def start_demo(node: Node) -> tuple[Space, str]:
    """The demo Space and its host key."""
    space, key = await node.spaces.create("Amphi demo: a tune on a loop")
    await node.spaces.start(space)
    node.spawn(_demo_speaker(node, space, key), name="demo-speaker")
    return space, key


async def _demo_speaker(node: Node, space: Space, key: str) -> None:
    attempt = 0
    cert = node.cfg.http.tls_cert
    while True:
        verify = own_context(cert) if cert else True  # its own certificate (as of now: SIGHUP reloads it)
        try:
            await stay_on_stage(node.cfg.http.base_url, space.id, GeneratedTrack(demo_program), key=key,
                                ice_addresses=node.cfg.ice.addresses, verify=verify)
            return
        except (SpeakError, OSError) as e:
            delay = RETRY_S[min(attempt, len(RETRY_S) - 1)]
            attempt += 1
            log.warning("demo speaker: %s; again in %.1f s", e, delay)
            await asyncio.sleep(delay)
