"""What an outage of a store or the broker looks like to a loop that waits it out.

The loops that hold work they must not drop (the outbox relay, the campaign fan-out and on-enter
trigger, the rule engine's feeder and writer) retry that work while one of these is raised, and let
anything else (a bug, bad data) propagate.
"""

from __future__ import annotations

import psycopg
from confluent_kafka import KafkaException
from psycopg_pool import PoolTimeout

from server.runtime.errors import DependencyUnavailable

DEPENDENCY_OUTAGES: tuple[type[Exception], ...] = (
    DependencyUnavailable,  # our adapters' word for it: the producer without an ack, a store that did not answer
    psycopg.OperationalError,  # PostgreSQL refused, dropped or is shutting down the connection
    PoolTimeout,  # no pooled connection in time: PostgreSQL is away or every connection is stuck
    KafkaException,  # a client call the producer does not wrap (commit, metadata) while the broker is away
    ConnectionError,  # a socket refused or reset, from a client that raises it as it is
    TimeoutError,  # a client's own timeout
)
