"""The routing table: ``GET`` / ``PUT /v1/admin/routing`` (scope admin)."""

from fastapi import APIRouter

from musicrl.gateway.deps import AdminCaller, StateDep
from musicrl.gateway.routes import AUTHENTICATED, WITH_BODY, errors
from musicrl.gateway.schemas import RoutingPublic
from musicrl.rollout.routing import RoutingTable, rollout_event
from musicrl.v1 import events_pb2


router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.get("/routing", responses=errors(*AUTHENTICATED), summary="The current routing table")
async def read_routing(state: StateDep, caller: AdminCaller) -> RoutingPublic:
    return RoutingPublic.model_validate((await state.routing.get()).to_wire())


@router.put("/routing", responses=errors(400, *AUTHENTICATED, *WITH_BODY, 503), summary="Replace the routing table")
async def update_routing(routing_in: RoutingPublic, state: StateDep, caller: AdminCaller) -> RoutingPublic:
    table = RoutingTable.from_wire(routing_in.model_dump())
    revision = await state.routing.put(table)
    reason = f"routing table revision {revision} set through the admin API by key {caller.key_id!r}"
    await state.publisher.publish(rollout_event(table, events_pb2.ROLLOUT_ACTION_TRAFFIC_CHANGED, reason))
    return RoutingPublic.model_validate(table.to_wire())
