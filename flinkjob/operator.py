"""The Flink operator: keyed user state + broadcast segment rules, delegating to `flinkjob.logic`.

Each input record is decoded once into its message (`server.domain.pipeline`). One that cannot be
read is skipped, counted (`recordsRejected`) and logged with its key: raising would fail the job, and
the restarted job would read the same record again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from pyflink.common import Types
from pyflink.datastream import OutputTag, RuntimeContext
from pyflink.datastream.functions import KeyedBroadcastProcessFunction
from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor

from flinkjob.logic import Outcome, UserState, compile_definition, on_record, on_timer, utc_from_millis
from server.domain.events import UserEvent
from server.domain.membership import RuleSet, SegmentRule
from server.domain.pipeline import (
    PROBE_ID,
    ForgetRecord,
    MembershipOutput,
    MergeRecord,
    ProbeEcho,
    ProbeRecord,
    keyed_input,
    rules_input,
)
from server.domain.profile import HISTORY_LOOKBACK
from server.domain.segment import SegmentDefinition
from server.stores.records import RejectedRecords, UnreadableRecord, decode

RULES = MapStateDescriptor("segment-rules", Types.STRING(), Types.STRING())
PROFILES = OutputTag("profiles", Types.STRING())
FEEDBACK = OutputTag("feedback", Types.STRING())  # records for other keys: merges, forwarded events, forgets
log = logging.getLogger("rule-engine.job")


class RuleEngineFunction(KeyedBroadcastProcessFunction):  # type: ignore[misc]
    """Per user: apply events, evaluate rules, emit membership changes (main), profiles and feedback (side).

    `lookback` is how long each user's event history is kept whatever the live rules need."""

    def __init__(self, lookback: timedelta = HISTORY_LOOKBACK) -> None:
        super().__init__()
        self.lookback = lookback

    def open(self, runtime_context: RuntimeContext) -> None:
        self.user = runtime_context.get_state(ValueStateDescriptor("user", Types.STRING()))
        self.timer = runtime_context.get_state(ValueStateDescriptor("timer", Types.LONG()))
        self.compiled: dict[str, tuple[str, SegmentRule]] = {}  # segment id -> (raw definition, compiled)
        self.active: RuleSet | None = None
        group = runtime_context.get_metrics_group()
        self.events = group.counter("eventsProcessed")
        self.evaluations = group.counter("ruleEvaluations")
        self.changes = group.counter("membershipChanges")
        self.evaluated = group.counter("recordsEvaluated")  # events and backfill requests
        self.eval_micros = group.counter("evaluationMicros")  # summed: mean = evaluationMicros / recordsEvaluated
        self.rejected = RejectedRecords(log, group.counter("recordsRejected").inc)
        self.merges = group.counter("identitiesMerged")
        self.forgotten = group.counter("usersForgotten")

    def _rules(self, ctx: Any) -> RuleSet:
        """The active rules, compiled and in evaluation order; rebuilt only after the broadcast side changed (or a
        restore)."""
        if self.active is None:
            self.active = RuleSet(self._compile_all(ctx), self.lookback)
        return self.active

    def _compile_all(self, ctx: Any) -> dict[str, SegmentRule]:
        rules: dict[str, SegmentRule] = {}
        for segment_id, raw in ctx.get_broadcast_state(RULES).items():
            if segment_id == PROBE_ID:
                continue
            cached = self.compiled.get(segment_id)
            if cached is None or cached[0] != raw:
                try:  # state restored from a checkpoint holds what an earlier run accepted
                    rule = compile_definition(decode(raw, SegmentDefinition.from_json))
                except UnreadableRecord:
                    rule = None
                if rule is None:
                    continue
                cached = (raw, rule)
                self.compiled[segment_id] = cached
            rules[segment_id] = cached[1]
        return rules

    def _emit(self, outcome: Outcome, ctx: Any) -> Iterator[Any]:
        profile = outcome.state.profile if outcome.profile_changed else None
        # encoded once, as bytes: the state, every change and the snapshot embed the same JSON (with the history, a
        # profile is a few KB, and one event can change several memberships)
        profile_json = orjson.Fragment(orjson.dumps(profile.to_json())) if profile is not None else None
        if outcome.state.empty:  # deleted, or never anything: no state is kept for the key
            self.user.clear()
            self.timer.clear()
        else:
            self.user.update(outcome.state.to_json(profile_json))
        for change in outcome.changes:
            yield orjson.dumps(MembershipOutput(change, profile).to_json(profile_json)).decode()
        self.changes.inc(len(outcome.changes))
        if profile_json is not None and not outcome.changes:  # a change carries the profile that caused it
            yield PROFILES, orjson.dumps(profile_json).decode()  # the fragment's bytes as they are
        if outcome.removed is not None:  # after the key's last change and snapshot, on both topics
            removal = orjson.dumps(outcome.removed.to_json()).decode()
            yield removal
            yield PROFILES, removal
        for record in outcome.feedback:
            yield FEEDBACK, orjson.dumps(record.to_json()).decode()
        if outcome.next_timer is not None:
            millis = int(outcome.next_timer.timestamp() * 1000) + 1
            if self.timer.value() != millis:
                ctx.timer_service().register_processing_time_timer(millis)
                self.timer.update(millis)

    def process_element(self, value: str, ctx: Any) -> Iterator[Any]:
        try:
            record = decode(value, keyed_input)
        except UnreadableRecord as exc:
            self.rejected.reject(f"keyed input, key {ctx.get_current_key()!r}", exc)
            return
        if isinstance(record, ProbeRecord):  # readiness: both inputs flow once the probe's token is known
            if ctx.get_broadcast_state(RULES).get(PROBE_ID) == record.token:
                yield orjson.dumps(ProbeEcho(record.token).to_json()).decode()
            return
        rules = self._rules(ctx)
        state = UserState.from_json(self.user.value())
        now = datetime.now(UTC)
        started = time.perf_counter()
        outcome = on_record(state, record, rules, now)
        if outcome.refused is not None:  # the state stays as it was
            self.rejected.reject(f"keyed input, key {ctx.get_current_key()!r}", outcome.refused)
            return
        if isinstance(record, UserEvent) and not outcome.feedback:  # applied here, not sent on to its user
            self.events.inc()
        elif isinstance(record, MergeRecord) and outcome.profile_changed:
            self.merges.inc()
        elif isinstance(record, ForgetRecord):
            self.forgotten.inc()
        self.evaluations.inc(len(rules))
        self.evaluated.inc()
        self.eval_micros.inc(int((time.perf_counter() - started) * 1e6))
        yield from self._emit(outcome, ctx)

    def process_broadcast_element(self, value: str, ctx: Any) -> None:
        try:
            record = decode(value, rules_input)
        except UnreadableRecord as exc:
            self.rejected.reject("rules input", exc)  # once per subtask: each one reads every definition
            return
        state = ctx.get_broadcast_state(RULES)
        if isinstance(record, ProbeRecord):
            state.put(PROBE_ID, record.token)
            return
        if not record.supersedes(self._rules(ctx).get(record.id)):
            return  # an older definition arriving late, or a repeat of the one held
        self.active = None
        rule = compile_definition(record)
        if rule is None:  # deleted, paused, static (or, defensively, invalid): its members exit when evaluated
            state.remove(record.id)
        else:
            state.put(record.id, value)
            self.compiled[record.id] = (value, rule)

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Any]:
        self.timer.clear()
        state = UserState.from_json(self.user.value())
        yield from self._emit(on_timer(state, self._rules(ctx), utc_from_millis(timestamp)), ctx)
