"""Which adapter serves a process: Aerospike when `AM_AEROSPIKE_HOSTS` is set (Kubernetes), else local ones.

Local target: profiles in PostgreSQL, rate-limit buckets and recent event ids in the process's
memory. Kubernetes: all three in Aerospike (`user_profiles`, `analytics`, `cache`), shared by replicas.
"""

from __future__ import annotations

from server.runtime.settings import ServiceSettings
from server.stores.postgres import Database
from server.stores.postgres_profiles import PostgresProfileStore
from server.stores.profile_store import ProfileStore
from server.stores.rate_limit import LocalRecentIds, LocalTokenBuckets, RateLimiter, RecentIds


def profile_store(settings: ServiceSettings, db: Database) -> ProfileStore:
    if not settings.aerospike_hosts:
        return PostgresProfileStore(db)
    from server.stores.aerospike_profiles import AerospikeProfileStore, connect  # the client needs a server

    return AerospikeProfileStore(connect(settings.aerospike_hosts))


def request_guards(settings: ServiceSettings) -> tuple[RateLimiter, RecentIds]:
    """The Ingestion API's per-client rate limiter and its eventId dedupe window."""
    if not settings.aerospike_hosts:
        return (LocalTokenBuckets(settings.rate_limit_per_s, settings.rate_limit_burst),
                LocalRecentIds(settings.dedupe_window_s))
    from server.stores.aerospike_cache import AerospikeRecentIds, AerospikeTokenBuckets
    from server.stores.aerospike_profiles import connect

    client = connect(settings.aerospike_hosts)
    return (AerospikeTokenBuckets(client, settings.rate_limit_per_s, settings.rate_limit_burst),
            AerospikeRecentIds(client, settings.dedupe_window_s))
