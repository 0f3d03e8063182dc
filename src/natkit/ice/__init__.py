"""natkit.ice: a sans-IO ICE agent (RFC 8445, RFC 7675 consent, RFC 8838 trickle).

Start at :mod:`natkit.ice.agent`, whose docstring is the driver boundary.
"""

import logging

from natkit.ice.agent import IceAgent
from natkit.ice.candidate import Candidate, CandidateType, Extension, LocalCandidate
from natkit.ice.config import IceConfig
from natkit.ice.credentials import Credentials
from natkit.ice.events import (
    CandidateLearned,
    ConsentLost,
    DataReceived,
    IceEvent,
    IceState,
    PairSelected,
    PermissionNeeded,
    RoleChanged,
    SelectedPair,
    StateChanged,
    Transmit,
)
from natkit.ice.sdp import CandidateSyntaxError, format_candidate, parse_candidate

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "Candidate",
    "CandidateLearned",
    "CandidateSyntaxError",
    "CandidateType",
    "ConsentLost",
    "Credentials",
    "DataReceived",
    "Extension",
    "IceAgent",
    "IceConfig",
    "IceEvent",
    "IceState",
    "LocalCandidate",
    "PairSelected",
    "PermissionNeeded",
    "RoleChanged",
    "SelectedPair",
    "StateChanged",
    "Transmit",
    "format_candidate",
    "parse_candidate",
]
