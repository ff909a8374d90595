"""The exceptions zmqrelay raises.

Every error zmqrelay raises derives from :class:`ZmqRelayError`; a bare ``zmq.ZMQError`` never
reaches user code. The tree::

    ZmqRelayError
    ├── ProtocolError
    │   ├── LocalProtocolError    we were asked to send something the protocol cannot carry
    │   └── RemoteProtocolError   a peer sent something that does not decode
    ├── RemoteError               the worker's handler raised; carries its type and message
    ├── RequestRefused            the broker ended the request without a reply
    │   ├── BrokerBusy            its queue was full, or no worker was free in time
    │   ├── NoWorkers             no live worker could take it in time
    │   ├── DeadlineExceeded      the request's deadline passed (also a RequestTimeout)
    │   └── WorkerDied            its worker died, and it could not be sent again
    ├── BrokerLost                the broker holding the request was lost (several brokers)
    ├── RequestTimeout            also a TimeoutError
    ├── EndpointError             an endpoint could not be bound or connected; also an OSError
    ├── ClosedError               the broker, worker or client is not running: not started yet,
    │                             already ran, or closed (by you) while the call waited
    └── BrokenError               a socket under it failed or its context was terminated
"""

from __future__ import annotations

__all__ = [
    "BrokenError",
    "BrokerBusy",
    "BrokerLost",
    "ClosedError",
    "DeadlineExceeded",
    "EndpointError",
    "Forbidden",
    "KeyFileError",
    "LocalProtocolError",
    "NoWorkers",
    "PolicyError",
    "ProtocolError",
    "RemoteError",
    "RemoteProtocolError",
    "RequestRefused",
    "RequestTimeout",
    "WorkerDied",
    "ZmqRelayError",
]


class ZmqRelayError(Exception):
    """Root of every exception zmqrelay raises."""


class ProtocolError(ZmqRelayError):
    """A message does not follow the protocol."""


class LocalProtocolError(ProtocolError):
    """This side was asked to send something the protocol cannot express.

    Example: a request with no body frames.
    """


class RemoteProtocolError(ProtocolError):
    """The peer sent frames that do not decode.

    Inside the broker, worker and client these are counted and dropped, never raised out of a
    receive loop; they surface to callers only where a reply they wait for is malformed.
    """


class RemoteError(ZmqRelayError):
    """The worker's handler raised while serving the request.

    Attributes:
        type_name: the name of the exception class raised by the handler (``"ValueError"``).
        message: ``str()`` of that exception.

    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message


class BrokerLost(ZmqRelayError):
    """The broker holding the request was lost before its reply came.

    Raised by an :class:`~zmqrelay.AsyncClient` with several endpoints when the connection to
    the broker the request went to closed, or stayed silent past the heartbeat timeout. The
    request may or may not have been handled: it is sent again, to another broker, only under
    a retry policy that lists this error (the default :class:`~zmqrelay.RetryPolicy` does).
    """


class RequestTimeout(ZmqRelayError, TimeoutError):
    """No reply came before the request's timeout. Also a :class:`TimeoutError`."""


class RequestRefused(ZmqRelayError):
    """A load-balancing broker ended the request without a reply.

    It does so at once, rather than let the client wait for its timeout.
    """


class BrokerBusy(RequestRefused):
    """The broker's queue was full, or no worker was free within its queue timeout."""


class NoWorkers(RequestRefused):
    """No live worker could take the request within the broker's queue timeout."""


class DeadlineExceeded(RequestRefused, RequestTimeout):
    """The request's deadline passed before a reply came. Also a :class:`RequestTimeout`."""


class WorkerDied(RequestRefused):
    """The worker holding the request died, and the request could not be sent again."""


class Forbidden(RequestRefused):
    """The broker's authorisation policy does not let this client call this service."""


class EndpointError(ZmqRelayError, OSError):
    """An endpoint could not be bound or connected (bad address, address in use)."""


class ClosedError(ZmqRelayError):
    """The broker, worker or client is not running.

    It was used before it started or after it ran (each runs once), or it was closed while the
    call waited. Closing is something this process did; compare :class:`BrokenError`.
    """


class BrokenError(ZmqRelayError):
    """A socket under the broker, worker or client failed, so it cannot go on.

    libzmq refused a call on the socket: most often the ``zmq.Context`` it was given was
    terminated under it. The message gives libzmq's reason; the ``zmq.ZMQError`` is the
    ``__cause__``. Unlike :class:`ClosedError`, nothing here closed it.
    """


class KeyFileError(ZmqRelayError, ValueError):
    """A CURVE key file or key directory cannot be read; the message names the file."""


class PolicyError(ZmqRelayError, ValueError):
    """An authorisation policy cannot be read; the message names the file and the line."""
