"""A bare FastAPI endpoint with the same request shape as the Ingestion API, for the throughput ratio.

Run: `python -m amctl.load.bare PORT`. It validates the body and answers 202 without a broker.
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()


class Event(BaseModel):
    userId: str
    eventType: str
    properties: dict[str, Any] = {}


class Batch(BaseModel):
    events: list[dict[str, Any]]


@app.post("/api/events", status_code=202)
async def event(body: Event) -> dict[str, str]:
    return {"status": "accepted"}


@app.post("/api/events/batch", status_code=202)
async def batch(body: Batch) -> dict[str, int]:
    return {"accepted": len([Event.model_validate(e) for e in body.events])}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
