"""The framework's floor for ``bench/feedback_throughput.py``: the gateway's preference route with no work.

The same path, body model and reply model as ``POST /v1/comparisons/{id}/preference``, served by the same
FastAPI and uvicorn (httptools, uvloop, no access log), but without authentication, idempotency or the bus.
What the load generator gets from it on this machine is the most any FastAPI route can give it here.

    python -m uvicorn --app-dir bench http_floor:app --port 8000 --no-access-log
"""

import sys
from pathlib import Path

from fastapi import FastAPI, status


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from musicrl.gateway.schemas import EventPublic, PreferenceCreate  # noqa: E402


app = FastAPI()


@app.post("/v1/comparisons/{comparison_id}/preference", status_code=status.HTTP_201_CREATED)
async def create_preference(comparison_id: str, preference_in: PreferenceCreate) -> EventPublic:
    return EventPublic(event_id="0" * 36)
