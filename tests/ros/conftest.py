"""Every DDS participant of the test session stays on loopback, in a domain of its own."""

from __future__ import annotations

import os
import random

import pytest

# FACTS.md: interface lo, no multicast, the one peer 127.0.0.1 (discovery by unicast only).
LOOPBACK_DDS = (
    "<CycloneDDS><Domain><General><Interfaces><NetworkInterface name='lo'/></Interfaces>"
    "<AllowMulticast>false</AllowMulticast></General><Discovery><ParticipantIndex>auto"
    "</ParticipantIndex><Peers><Peer address='127.0.0.1'/></Peers></Discovery></Domain>"
    "</CycloneDDS>"
)


@pytest.fixture(autouse=True, scope="session")
def loopback_dds():
    """CYCLONEDDS_URI and ROS_DOMAIN_ID for this process and every process it starts."""
    saved = {key: os.environ.get(key) for key in ("CYCLONEDDS_URI", "ROS_DOMAIN_ID")}
    os.environ["CYCLONEDDS_URI"] = LOOPBACK_DDS
    os.environ["ROS_DOMAIN_ID"] = str(random.SystemRandom().randint(1, 100))
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
