"""zmqrelay: an asyncio library for embedding a ZeroMQ request-reply broker in Python apps.

Clients connect to the broker's ROUTER *frontend*, workers connect (never bind) to its
*backend*, and the broker shuttles multipart frames between them::

    from zmqrelay import AsyncClient, AsyncWorker, Broker

    async with Broker(frontend="tcp://*:5559", backend="tcp://*:5560"):
        ...
"""

from zmqrelay._aio.broker import Broker, Endpoints
from zmqrelay._aio.client import AsyncClient, RetryPolicy
from zmqrelay._aio.curve import CurveKeyPair
from zmqrelay._aio.handlers import FramesHandler, Handler, is_redelivery, time_left
from zmqrelay._aio.worker import AsyncWorker
from zmqrelay._core.balancer import BalancerStatistics
from zmqrelay._core.client import ClientStatistics
from zmqrelay._core.client_links import ClientLinkStatistics
from zmqrelay._core.relay import BrokerStatistics
from zmqrelay._core.security import SecurityStatistics
from zmqrelay._core.worker import WorkerStatistics
from zmqrelay._core.worker_link import WorkerLinkStatistics
from zmqrelay.errors import (
    BrokenError,
    BrokerBusy,
    BrokerLost,
    ClosedError,
    DeadlineExceeded,
    EndpointError,
    Forbidden,
    KeyFileError,
    LocalProtocolError,
    NoWorkers,
    PolicyError,
    ProtocolError,
    RemoteError,
    RemoteProtocolError,
    RequestRefused,
    RequestTimeout,
    WorkerDied,
    ZmqRelayError,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AsyncWorker",
    "BalancerStatistics",
    "BrokenError",
    "Broker",
    "BrokerBusy",
    "BrokerLost",
    "BrokerStatistics",
    "ClientLinkStatistics",
    "ClientStatistics",
    "ClosedError",
    "CurveKeyPair",
    "DeadlineExceeded",
    "EndpointError",
    "Endpoints",
    "Forbidden",
    "FramesHandler",
    "Handler",
    "KeyFileError",
    "LocalProtocolError",
    "NoWorkers",
    "PolicyError",
    "ProtocolError",
    "RemoteError",
    "RemoteProtocolError",
    "RequestRefused",
    "RequestTimeout",
    "RetryPolicy",
    "SecurityStatistics",
    "WorkerDied",
    "WorkerLinkStatistics",
    "WorkerStatistics",
    "ZmqRelayError",
    "is_redelivery",
    "time_left",
]
