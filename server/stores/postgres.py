"""PostgreSQL access for the services: one async connection pool per process."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from server.runtime.health import ComponentHealth


class Database:
    """An async pool that maps connection failures to `DependencyUnavailable`."""

    def __init__(self, conninfo: str, max_size: int, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.pool = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=max_size,
            open=False,
            timeout=timeout_s,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(timeout_s))},
            check=AsyncConnectionPool.check_connection,
        )

    async def open(self, wait_s: float) -> None:
        """Open the pool, retrying with backoff until PostgreSQL answers or `wait_s` passes."""
        await self.pool.open(wait=False)
        async for attempt in AsyncRetrying(
            stop=stop_after_delay(wait_s),
            wait=wait_exponential(multiplier=0.1, max=2),
            retry=retry_if_exception_type((psycopg.OperationalError, PoolTimeout, OSError)),
            reraise=True,
        ):
            with attempt:
                async with self.pool.connection() as conn:
                    await conn.execute("SELECT 1")

    async def close(self) -> None:
        await self.pool.close()

    def connection(self) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        """`async with db.connection() as conn:`; pool and connection errors become 503s in the app."""
        return self.pool.connection()

    async def health(self) -> ComponentHealth:
        async with self.connection() as conn:
            cur = await conn.execute("SELECT version()")
            row = await cur.fetchone()
        version = str(row[0]).split(" on ")[0] if row else "unknown"
        return ComponentHealth("UP", {"database": "PostgreSQL", "version": version})

