"""The ADT listener's settings: `ServiceSettings` (infrastructure, topics, relay, operations)
and what only the listener reads: MLLP, TLS, its HTTP port, the senders, the write path.

Built once by its command (`wpc listener`, `wpc up`) with `services.settings.load_settings`
and handed to `adt_listener.service.Listener`. Variable names are those of every
release (``WPC_MLLP_PORT``, ...): the split into classes changes nothing a county sets.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from services.settings import ServiceSettings


class ListenerSettings(ServiceSettings):
    service: ClassVar[str] = "listener"

    def published_topics(self) -> tuple[str, ...]:
        return (self.topic_adt_events, self.topic_adt_deadletter)

    # --- MLLP ---------------------------------------------------------------------------------
    mllp_host: str = "0.0.0.0"
    mllp_port: int = 2575
    mllp_max_frame_bytes: int = 1_048_576  # 1 MiB: large enough for any ADT, small enough to bound memory
    mllp_idle_timeout_s: float = 300.0  # interface engines keep connections open between messages
    mllp_read_timeout_s: float = 30.0  # a frame once started must complete within this time
    mllp_max_connections: int = 256
    # --- no one can lock the hospitals out (adt_listener/admission.py) -------------------------
    mllp_first_frame_timeout_s: float = Field(
        default=10.0, gt=0,
        description="A new connection from an unknown sender must complete its first frame (TLS handshake "
        "included) within this time; interface engines send at once after connecting",
    )
    mllp_max_connections_per_address: int = Field(
        default=32, ge=0, description="Connections per source IP of unknown senders (0: no limit); known ones exempt"
    )
    mllp_reserved_slots: int = Field(
        default=32, ge=0,
        description="Of WPC_MLLP_MAX_CONNECTIONS, slots only senders known by address or client certificate may use",
    )
    http_max_body_bytes: int | None = Field(
        default=None, gt=0,
        description="POST /v1/adt body limit, refused (413) before reading it; empty: WPC_MLLP_MAX_FRAME_BYTES",
    )
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = Field(
        default=None, description="When set, MLLP requires client certificates signed by this CA (mutual TLS)"
    )

    # --- HTTP and senders ---------------------------------------------------------------------
    listener_http_port: int = 8080
    senders_file: Path | None = Field(
        default=None,
        description="YAML list of senders (credentials, facilities, validation mode); see docs in README",
    )
    accepted_processing_ids: str = "P,T,D"  # MSH-11, HL7 table 0103
    medi_cal_authorities: str = "MEDI-CAL,MEDICAL,MEDICAID,CA-MEDICAID,CADHCS"

    # --- write path and checks off the ACK path -----------------------------------------------
    commit_batch_max: int = 512
    commit_linger_ms: float = Field(
        default=2.0, ge=0.0, le=100.0,
        description="Group commit under load: while messages arrive faster than one per this many ms, "
                    "a writer waits this long before committing, so that a commit carries more of them (0: never)",
    )
    conformance_max_per_s: float = Field(
        default=5.0, description="Cap on hl7apy conformance checks per second (each costs ~30 ms of CPU)"
    )
    conformance_cpu_share: float = Field(
        default=0.05, gt=0.0, le=1.0,
        description="Cap on the CPU the hl7apy conformance checks take, as a share of one CPU (0.05: 5 %)",
    )

    def processing_ids(self) -> frozenset[str]:
        return frozenset(p.strip() for p in self.accepted_processing_ids.split(",") if p.strip())

    def medi_cal_authority_set(self) -> frozenset[str]:
        return frozenset(a.strip().upper() for a in self.medi_cal_authorities.split(",") if a.strip())
