"""The Flink operator: keyed user state + broadcast segment rules, delegating to `flinkjob.logic`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
from pyflink.common import Types
from pyflink.datastream import OutputTag, RuntimeContext
from pyflink.datastream.functions import KeyedBroadcastProcessFunction
from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor

from flinkjob.logic import Outcome, UserState, compile_definition, on_event, on_reevaluate, on_timer, utc_from_millis
from server.domain.events import UserEvent
from server.domain.membership import SegmentRule

RULES = MapStateDescriptor("segment-rules", Types.STRING(), Types.STRING())
PROFILES = OutputTag("profiles", Types.STRING())
PROBE_ID = "__probe__"


class RuleEngineFunction(KeyedBroadcastProcessFunction):  # type: ignore[misc]
    """Per user: apply events, evaluate rules, emit membership changes (main) and profiles (side)."""

    def open(self, runtime_context: RuntimeContext) -> None:
        self.user = runtime_context.get_state(ValueStateDescriptor("user", Types.STRING()))
        self.timer = runtime_context.get_state(ValueStateDescriptor("timer", Types.LONG()))
        self.compiled: dict[str, tuple[str, SegmentRule]] = {}  # segment id -> (raw definition, compiled)
        self.active: dict[str, SegmentRule] | None = None
        group = runtime_context.get_metrics_group()
        self.events = group.counter("eventsProcessed")
        self.evaluations = group.counter("ruleEvaluations")
        self.changes = group.counter("membershipChanges")
        self.evaluated = group.counter("recordsEvaluated")  # events and backfill requests
        self.eval_micros = group.counter("evaluationMicros")  # summed: mean = evaluationMicros / recordsEvaluated

    def _rules(self, ctx: Any) -> dict[str, SegmentRule]:
        """The active rules, compiled; rebuilt only after the broadcast side changed (or a restore)."""
        if self.active is None:
            self.active = self._compile_all(ctx)
        return self.active

    def _compile_all(self, ctx: Any) -> dict[str, SegmentRule]:
        rules: dict[str, SegmentRule] = {}
        for segment_id, raw in ctx.get_broadcast_state(RULES).items():
            if segment_id == PROBE_ID:
                continue
            cached = self.compiled.get(segment_id)
            if cached is None or cached[0] != raw:
                rule = compile_definition(orjson.loads(raw))
                if rule is None:
                    continue
                cached = (raw, rule)
                self.compiled[segment_id] = cached
            rules[segment_id] = cached[1]
        return rules

    def _emit(self, outcome: Outcome, ctx: Any) -> Iterator[Any]:
        profile = outcome.state.profile.to_json() if outcome.profile_changed and outcome.state.profile else None
        self.user.update(outcome.state.to_json(profile))
        for change in outcome.changes:
            # the profile that caused a change travels with it: the store never shows a membership
            # before the profile behind it, whatever order the writer reads the two topics in
            yield orjson.dumps({**change.to_json(), **({"profile": profile} if profile else {})}).decode()
        self.changes.inc(len(outcome.changes))
        if profile is not None:
            yield PROFILES, orjson.dumps(profile).decode()
        if outcome.next_timer is not None:
            millis = int(outcome.next_timer.timestamp() * 1000) + 1
            if self.timer.value() != millis:
                ctx.timer_service().register_processing_time_timer(millis)
                self.timer.update(millis)

    def process_element(self, value: str, ctx: Any) -> Iterator[Any]:
        record = orjson.loads(value)
        if record.get("kind") == "probe":  # readiness: both inputs flow once the probe's token is known
            if ctx.get_broadcast_state(RULES).get(PROBE_ID) == record["token"]:
                yield orjson.dumps({"probe": record["token"]}).decode()
            return
        rules = self._rules(ctx)
        state = UserState.from_json(self.user.value())
        now = datetime.now(UTC)
        started = time.perf_counter()
        if record.get("kind") == "reevaluate":
            outcome = on_reevaluate(state, record["segments"], rules, now)
        else:
            outcome = on_event(state, UserEvent.from_json(record), rules, now)
            self.events.inc()
        self.evaluations.inc(len(rules))
        self.evaluated.inc()
        self.eval_micros.inc(int((time.perf_counter() - started) * 1e6))
        yield from self._emit(outcome, ctx)

    def process_broadcast_element(self, value: str, ctx: Any) -> None:
        definition = orjson.loads(value)
        state = ctx.get_broadcast_state(RULES)
        self.active = None
        if definition.get("kind") == "probe":
            state.put(PROBE_ID, definition["token"])
            return
        segment_id = str(definition["id"])
        current = state.get(segment_id)
        if current is not None and int(orjson.loads(current).get("version", 0)) > int(definition.get("version") or 0) \
                and not definition.get("deleted"):
            return  # an older definition arriving late
        if compile_definition(definition) is None:
            state.remove(segment_id)
        else:
            state.put(segment_id, value)

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Any]:
        self.timer.clear()
        state = UserState.from_json(self.user.value())
        yield from self._emit(on_timer(state, self._rules(ctx), utc_from_millis(timestamp)), ctx)
