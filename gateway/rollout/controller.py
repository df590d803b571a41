"""Progressive rollouts: a candidate variant brought onto a route step by step (shadow, then a
growing share of the traffic), each step judged by the gates on a window of the edge's figures
for the candidate and its baseline, promoted when every step passed, rolled back at the first
failed gate. Every transition is kept with its evidence (the route store, the log, a metric).

The controller only changes the route (weights, shadow) through the traffic state: tgw-edge
makes every per-request choice. A route changed by someone else mid-rollout pauses it rather
than being overwritten. The candidate follows the baseline in bucket order, so a sticky key
moves only from the baseline to the candidate while the ramp goes up.

After a restart a running rollout stays at its step and judges a fresh window (the evidence
is gathered again, never assumed).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import grpc
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway._protos.tgw.admin.v1 import admin_pb2
from gateway.observability.metrics import PREFIX
from gateway.rollout.gates import Comparison, GateSettings, Verdict, judge_live, judge_shadow
from gateway.settings import RolloutSettings
from gateway.traffic.figures import NONE, VariantTotals
from gateway.traffic.routes import AdminError, variant_name
from gateway.traffic.state import TrafficState

log = structlog.get_logger(__name__)

Totals = Callable[[], Mapping[tuple[str, str], VariantTotals]]
"""(route, variant) -> the edge's cumulative figures now."""
ACTIVE = ("running", "paused")
_WEIGHT_SCALE = 100
"""Weights are percent x 100: steps of a hundredth of a percent."""


class RolloutMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.transitions = Counter(
            f"{PREFIX}_rollout_transitions",
            "Progressive rollout transitions (started, step, promoted, rolled_back, paused, "
            "resumed, aborted), per route.",
            labelnames=["route", "event"],
            registry=registry,
        )
        self.gate = Gauge(
            f"{PREFIX}_rollout_gate",
            "The current step's gates: the observed value and its threshold, per route and gate.",
            labelnames=["route", "gate", "figure"],
            registry=registry,
        )
        self.step = Gauge(
            f"{PREFIX}_rollout_candidate_percent",
            "Share of the route's traffic on the candidate of its rollout (0 at the shadow step).",
            labelnames=["route"],
            registry=registry,
        )


@dataclass
class _Window:
    """Where the current step's window starts: at ``opens`` (None totals until then).

    ``key`` is the (candidate, step, route revision) the window was opened for: a rollout
    begun, resumed or ended through another replica changes it, and a window that no longer
    matches is never judged (its start and totals belong to another step)."""

    key: tuple[str, int, int]
    started: float
    candidate: VariantTotals | None
    baseline: VariantTotals | None
    opens: float = 0.0


class RolloutController:
    def __init__(
        self,
        traffic: TrafficState,
        totals: Totals,
        settings: RolloutSettings,
        metrics: RolloutMetrics,
        *,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        version_digest: Callable[[str, str], str | None] = lambda model, version: None,
        leads: Callable[[], bool] = lambda: True,
    ) -> None:
        self._traffic = traffic
        self._leads = leads
        self._version_digest = version_digest
        self._totals = totals
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._wall_clock = wall_clock
        self._gates = GateSettings(
            max_fault_rate_increase=settings.max_fault_rate_increase,
            max_p99_ratio=settings.max_p99_ratio,
            min_agreement=settings.min_agreement,
            min_argmax_agreement=settings.min_argmax_agreement,
            max_non_finite_rate=settings.max_non_finite_rate,
            z=settings.confidence_z,
        )
        self._windows: dict[str, _Window] = {}
        self._gate_series: dict[str, set[str]] = {}
        """Per route, the gates whose gauges are set (cleared when its step changes)."""
        self._latest: dict[str, list[admin_pb2.GateEvidence]] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._starting: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rollouts")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # one bad pass must not end every rollout's supervision
                log.exception("rollout_tick_failed")
            await asyncio.sleep(self._settings.tick_s)

    # -- the operator's calls --------------------------------------------------------------

    def rollouts(self) -> list[admin_pb2.Rollout]:
        return [self._shown(r) for r in self._traffic.rollouts()]

    def rollout(self, route: str) -> admin_pb2.Rollout:
        return self._shown(self._require(route))

    async def begin(
        self,
        route_name: str,
        candidate: admin_pb2.Variant,
        plan: admin_pb2.RolloutPlan | None = None,
        reason: str = "asked through the admin service",
    ) -> admin_pb2.Rollout:
        async with self._lock:
            current = self._traffic.rollout(route_name)
            if current is not None and current.status in ACTIVE:
                raise _precondition(
                    f"route '{route_name}' has a rollout {current.status} already: promote or "
                    "abort it first"
                )
            route = self._traffic.route(route_name)
            if route is None:
                raise _precondition(
                    f"model '{route_name}' has no route: create one with 'ctl split "
                    f"{route_name} VERSION=100' (its version is the baseline)"
                )
            weighted = [v for v in route.variants if v.weight > 0]
            if len(weighted) != 1:
                raise _precondition(
                    f"route '{route_name}' splits between {len(weighted)} variants: a rollout "
                    "starts from one variant taking all its traffic (the baseline)"
                )
            wanted = admin_pb2.Variant()
            wanted.CopyFrom(candidate)
            wanted.model = wanted.model or route_name
            wanted.name = wanted.name or variant_name(route_name, wanted.model, wanted.version)
            baseline = admin_pb2.Variant()
            baseline.CopyFrom(weighted[0])
            if (baseline.model, baseline.version) == (wanted.model, wanted.version):
                raise _precondition(f"variant {wanted.name} is the baseline already")
            if baseline.name == wanted.name:
                wanted.name = f"{wanted.name}-candidate"
            rollout = admin_pb2.Rollout(
                route=route_name,
                candidate=wanted,
                baseline=baseline,
                plan=self._plan(route_name, plan),
                step=0,
                status="running",
                route_revision=route.revision,
            )
            if route.HasField("shadow"):
                rollout.route_shadow.CopyFrom(route.shadow)
            rollout.started.FromNanoseconds(int(self._wall_clock() * 1e9))
            self._record(rollout, "started", reason)
            return await self._enter(rollout, route, step=0)

    async def pause(self, route: str) -> admin_pb2.Rollout:
        async with self._lock:
            rollout = self._active(route)
            if rollout.status == "paused":
                return self._shown(rollout)
            rollout.status = "paused"
            self._record(rollout, "paused", "asked through the admin service")
            return self._shown(await self._save(rollout))

    async def resume(self, route: str) -> admin_pb2.Rollout:
        async with self._lock:
            rollout = self._active(route)
            current = self._traffic.route(route)
            if current is None:
                raise _precondition(f"model '{route}' has no route any more: abort the rollout")
            # Taken over from whatever the route says now: the step is applied again.
            rollout.route_revision = current.revision
            rollout.status = "running"
            self._record(rollout, "resumed", "asked through the admin service")
            return await self._enter(rollout, current, rollout.step)

    async def promote(self, route: str) -> admin_pb2.Rollout:
        async with self._lock:
            rollout = self._active(route)
            return await self._finish(rollout, "promoted", "asked through the admin service")

    async def abort(self, route: str) -> admin_pb2.Rollout:
        async with self._lock:
            rollout = self._active(route)
            return await self._finish(rollout, "aborted", "asked through the admin service")

    # -- judging -----------------------------------------------------------------------------

    async def tick(self) -> None:
        """Judge every running rollout's step once (the leading replica only: the others
        follow the state it saves; one that starts leading judges fresh windows)."""
        for rollout in self._traffic.rollouts():
            # Every replica shows each route's step (also after a restart, before any change).
            self._show_step(rollout)
        if not self._leads():
            self._windows.clear()
            return
        async with self._lock:
            totals = self._totals()
            for rollout in self._traffic.rollouts():
                if rollout.status != "running":
                    continue
                copy = admin_pb2.Rollout()
                copy.CopyFrom(rollout)
                try:
                    await self._judge(copy, totals)
                except AdminError as exc:
                    # Its route could not be changed (the state store unreachable, say): this
                    # rollout waits paused with the reason; the others go on.
                    await self._pause_for(rollout, exc.message)

    async def _judge(
        self, rollout: admin_pb2.Rollout, totals: Mapping[tuple[str, str], VariantTotals]
    ) -> None:
        route = self._traffic.route(rollout.route)
        if route is None or route.revision != rollout.route_revision:
            rollout.status = "paused"
            shown = "removed" if route is None else f"changed (revision {route.revision})"
            self._record(
                rollout, "paused", f"the route was {shown} by someone else; resume to go on"
            )
            await self._save(rollout)
            return
        key = _window_key(rollout)
        window = self._windows.get(rollout.route)
        candidate_now = totals.get((rollout.route, rollout.candidate.name), NONE)
        baseline_now = totals.get((rollout.route, rollout.baseline.name), NONE)
        now = self._clock()
        if window is None or window.key != key:
            # A gateway that restarted, or a step set through another replica: the step goes
            # on with a fresh window.
            self._windows[rollout.route] = _Window(key, now, candidate_now, baseline_now)
            return
        if now < window.opens:
            return  # the step before is still finishing (see rollout.settle_s)
        if window.candidate is None or window.baseline is None:
            window.candidate, window.baseline, window.started = candidate_now, baseline_now, now
            return
        candidate = candidate_now.minus(window.candidate)
        baseline = baseline_now.minus(window.baseline)
        percent = rollout.plan.steps[rollout.step]
        elapsed = self._clock() - window.started
        if percent == 0:
            enough = elapsed >= _seconds(rollout.plan) and candidate.shadow_compared >= (
                rollout.plan.min_requests
            )
            verdict = judge_shadow(candidate, baseline, self._gates, enough)
        else:
            # Below 100% both sides need the step's calls: the p99s are compared. At 100% the
            # baseline gets none (its p99 was compared at the steps before).
            compared_with_baseline = percent < 100
            enough = (
                elapsed >= _seconds(rollout.plan)
                and candidate.calls >= rollout.plan.min_requests
                and (not compared_with_baseline or baseline.calls >= rollout.plan.min_requests)
            )
            # The baseline answers copies of a share of the candidate's calls: enough of
            # them is that share of the step's minimum.
            share = self._settings.live_compare_percent / 100
            comparison = Comparison.of_live(baseline) if share > 0 else None
            compared_enough = comparison is not None and comparison.calls >= max(
                1, math.ceil(rollout.plan.min_requests * share)
            )
            verdict = judge_live(
                candidate,
                baseline,
                self._gates,
                enough,
                baseline_enough=compared_with_baseline,
                comparison=comparison,
                compared_enough=compared_enough,
            )
        evidence = _evidence(verdict, baseline)
        self._latest[rollout.route] = evidence
        for e in evidence:
            if e.HasField("observed"):
                gate = self._metrics.gate
                gate.labels(route=rollout.route, gate=e.gate, figure="observed").set(e.observed)
                gate.labels(route=rollout.route, gate=e.gate, figure="threshold").set(e.threshold)
                self._gate_series.setdefault(rollout.route, set()).add(e.gate)
        if verdict.outcome == "wait":
            return
        if verdict.outcome == "fail":
            failed = ", ".join(e.gate for e in verdict.evidence if e.outcome == "fail")
            await self._finish(rollout, "rolled_back", f"gate failed: {failed}", evidence)
            return
        if rollout.step + 1 >= len(rollout.plan.steps):
            await self._finish(rollout, "promoted", "every step passed", evidence)
            return
        self._record(rollout, "step", f"step {percent:g}% passed", evidence, rollout.step + 1)
        await self._enter(rollout, route, rollout.step + 1)

    async def _pause_for(self, rollout: admin_pb2.Rollout, reason: str) -> None:
        paused = admin_pb2.Rollout()
        paused.CopyFrom(rollout)
        paused.status = "paused"
        self._record(paused, "paused", f"{reason}; resume to go on")
        try:
            await self._save(paused)
        except AdminError as exc:
            log.error("rollout_pause_failed", route=rollout.route, reason=exc.message)

    # -- applying ----------------------------------------------------------------------------

    async def _enter(
        self, rollout: admin_pb2.Rollout, route: admin_pb2.Route, step: int
    ) -> admin_pb2.Rollout:
        """Set the route for ``step`` and start its window."""
        rollout.step = step
        percent = rollout.plan.steps[step]
        baseline = _weighted(rollout.baseline, round((100 - percent) * _WEIGHT_SCALE))
        candidate = _weighted(rollout.candidate, round(percent * _WEIGHT_SCALE))
        changed = admin_pb2.Route()
        changed.CopyFrom(route)
        changed.ClearField("figures")
        del changed.variants[:]
        changed.variants.extend([baseline, candidate])
        # Outputs are compared within the route's own tolerances (those of the shadow it had
        # before the rollout; 0 and 0: the gateway's defaults).
        tolerance = rollout.route_shadow
        if percent == 0:
            changed.shadow.CopyFrom(
                admin_pb2.Shadow(
                    target=_weighted(rollout.candidate, 0),
                    percent=100,
                    atol=tolerance.atol,
                    rtol=tolerance.rtol,
                )
            )
        elif self._settings.live_compare_percent > 0:
            # Live comparison: copies of the candidate's calls answered by the baseline (the
            # edge never mirrors a call to the variant that answered it).
            changed.shadow.CopyFrom(
                admin_pb2.Shadow(
                    target=_weighted(rollout.baseline, 0),
                    percent=self._settings.live_compare_percent,
                    atol=tolerance.atol,
                    rtol=tolerance.rtol,
                )
            )
        else:
            changed.ClearField("shadow")
        saved = await self._save(rollout, changed)
        now = self._clock()
        self._windows[rollout.route] = _Window(
            _window_key(saved), now, None, None, now + self._settings.settle_s
        )
        self._latest.pop(rollout.route, None)
        self._clear_gates(rollout.route)
        log.info(
            "rollout_step_entered",
            route=rollout.route,
            candidate=rollout.candidate.name,
            step=step,
            percent=percent,
        )
        return self._shown(saved)

    async def _finish(
        self,
        rollout: admin_pb2.Rollout,
        status: str,
        reason: str,
        evidence: list[admin_pb2.GateEvidence] | None = None,
    ) -> admin_pb2.Rollout:
        """Promoted: the candidate takes every call and the baseline leaves the route (it
        drains; withheld too with the plan's unload_replaced). Rolled back or aborted: every
        call back to the baseline at once, the candidate kept at weight 0 (loaded, for
        inspection, and forcible by its name), or with unload_rolled_back out of the route
        and withheld."""
        route = self._traffic.route(rollout.route)
        rollout.status = status
        self._record(rollout, status, reason, evidence)
        self._windows.pop(rollout.route, None)
        self._latest.pop(rollout.route, None)
        self._clear_gates(rollout.route)
        if route is None:
            return self._shown(await self._save(rollout))
        rollout.route_revision = route.revision  # the operator's word is final here
        changed = admin_pb2.Route()
        changed.CopyFrom(route)
        changed.ClearField("figures")
        changed.ClearField("shadow")
        del changed.variants[:]
        withhold = None
        serving = rollout.candidate if status == "promoted" else rollout.baseline
        if rollout.HasField("route_shadow") and not _same_version(
            rollout.route_shadow.target, serving
        ):
            # The route's own shadow, set aside for the rollout, comes back (not when it
            # would mirror calls to the version now answering them).
            changed.shadow.CopyFrom(rollout.route_shadow)
        if status == "promoted":
            changed.variants.append(_weighted(rollout.candidate, 1))
            if rollout.plan.unload_replaced:
                withhold = self._withheld(rollout.baseline, f"replaced by {rollout.candidate.name}")
        else:
            changed.variants.append(_weighted(rollout.baseline, 1))
            if rollout.plan.unload_rolled_back:
                withhold = self._withheld(rollout.candidate, f"rollout {status}: {reason}")
            if withhold is None:
                changed.variants.append(_weighted(rollout.candidate, 0))
        saved = await self._save(rollout, changed, withhold)
        return self._shown(saved)

    def _withheld(
        self, variant: admin_pb2.Variant, reason: str
    ) -> admin_pb2.WithheldVersion | None:
        """The variant's version to withhold; None (logged) for one the repository does not
        publish (loaded by hand: an operator unloads it with 'ctl unload')."""
        digest = self._version_digest(variant.model, variant.version) if variant.version else None
        if digest is None:
            log.warning(
                "rollout_version_left_loaded",
                model=variant.model,
                version=variant.version,
                reason="not a version of a model the gateway publishes from its repository",
            )
            return None
        withheld = admin_pb2.WithheldVersion(
            model=variant.model, version=variant.version, digest=digest, reason=reason
        )
        withheld.at.FromNanoseconds(int(self._wall_clock() * 1e9))
        return withheld

    # -- helpers -----------------------------------------------------------------------------

    def _record(
        self,
        rollout: admin_pb2.Rollout,
        event: str,
        reason: str,
        evidence: list[admin_pb2.GateEvidence] | None = None,
        step: int | None = None,
    ) -> None:
        transition = rollout.history.add(
            event=event,
            step=rollout.step if step is None else step,
            reason=reason,
            evidence=evidence or [],
        )
        transition.at.FromNanoseconds(int(self._wall_clock() * 1e9))

    async def _save(
        self,
        rollout: admin_pb2.Rollout,
        route: admin_pb2.Route | None = None,
        withhold: admin_pb2.WithheldVersion | None = None,
    ) -> admin_pb2.Rollout:
        """Keep ``rollout`` (with its route change), then announce the transitions it added
        in the log and the metrics: a transition that could not be kept never happened."""
        kept = self._traffic.rollout(rollout.route)
        same = kept is not None and kept.started == rollout.started
        announced = len(kept.history) if kept is not None and same else 0
        saved = await self._traffic.save_rollout(rollout, route, withhold)
        for transition in saved.history[announced:]:
            self._announce(saved, transition)
        self._show_step(saved)
        return saved

    def _announce(
        self, rollout: admin_pb2.Rollout, transition: admin_pb2.RolloutTransition
    ) -> None:
        self._metrics.transitions.labels(route=rollout.route, event=transition.event).inc()
        log.info(
            "rollout_" + transition.event,
            route=rollout.route,
            candidate=rollout.candidate.name,
            baseline=rollout.baseline.name,
            step=transition.step,
            reason=transition.reason,
            evidence=[
                {
                    "gate": e.gate,
                    "observed": e.observed if e.HasField("observed") else None,
                    "threshold": e.threshold,
                    "outcome": e.outcome,
                    "calls": e.candidate_calls,
                }
                for e in transition.evidence
            ],
        )

    def _show_step(self, rollout: admin_pb2.Rollout) -> None:
        """The candidate's share now: its step's percent while the rollout runs or waits,
        100 once promoted, 0 once rolled back or aborted."""
        if rollout.status in ACTIVE and rollout.step < len(rollout.plan.steps):
            percent = rollout.plan.steps[rollout.step]
        else:
            percent = 100.0 if rollout.status == "promoted" else 0.0
        self._metrics.step.labels(route=rollout.route).set(percent)

    def _clear_gates(self, route: str) -> None:
        """The gauges of a step that ended: Grafana shows the current step's gates only."""
        for gate in self._gate_series.pop(route, set()):
            for figure in ("observed", "threshold"):
                with contextlib.suppress(KeyError):
                    self._metrics.gate.remove(route, gate, figure)

    def _plan(self, route: str, asked: admin_pb2.RolloutPlan | None) -> admin_pb2.RolloutPlan:
        """What was asked, else the route's plan in the settings, else the defaults."""
        settings = self._settings
        own = settings.plans.get(route)
        steps = (own.steps if own is not None else None) or settings.steps
        min_step_s = own.min_step_s if own is not None and own.min_step_s is not None else None
        min_requests = (own.min_requests if own is not None else None) or settings.min_requests
        plan = admin_pb2.RolloutPlan(
            steps=list(asked.steps) if asked is not None and asked.steps else steps,
            min_requests=asked.min_requests
            if asked is not None and asked.min_requests
            else min_requests,
        )
        if asked is not None and asked.HasField("min_step"):
            plan.min_step.CopyFrom(asked.min_step)
        else:
            seconds = settings.min_step_s if min_step_s is None else min_step_s
            plan.min_step.FromNanoseconds(int(seconds * 1e9))
        for flag in ("unload_replaced", "unload_rolled_back"):
            own_flag = getattr(own, flag) if own is not None else None
            chosen = getattr(settings, flag) if own_flag is None else own_flag
            if asked is not None and asked.HasField(flag):
                chosen = getattr(asked, flag)
            setattr(plan, flag, chosen)
        steps = list(plan.steps)
        if steps != sorted(steps) or steps[-1] != 100 or any(not 0 <= s <= 100 for s in steps):
            raise AdminError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "rollout steps must be ascending percents within 0 and 100, ending at 100",
            )
        return plan

    def _require(self, route: str) -> admin_pb2.Rollout:
        rollout = self._traffic.rollout(route)
        if rollout is None:
            raise AdminError(grpc.StatusCode.NOT_FOUND, f"route '{route}' has had no rollout")
        copy = admin_pb2.Rollout()
        copy.CopyFrom(rollout)
        return copy

    def _active(self, route: str) -> admin_pb2.Rollout:
        rollout = self._require(route)
        if rollout.status not in ACTIVE:
            raise _precondition(f"the rollout of route '{route}' is {rollout.status} already")
        return rollout

    def _shown(self, rollout: admin_pb2.Rollout) -> admin_pb2.Rollout:
        """With the current step's gates so far (not kept: recomputed each tick)."""
        shown = admin_pb2.Rollout()
        shown.CopyFrom(rollout)
        if rollout.status in ACTIVE:
            shown.current.extend(self._latest.get(rollout.route, []))
        return shown

    def on_rolled_out(self, model: str, versions: tuple[str, ...]) -> None:
        """A content of ``model`` serving ``versions`` finished its fleet rollout: when the
        model has a route whose one weighted variant is an older version of it, its newest
        version starts a progressive rollout (``rollout.automatic``)."""
        if not self._settings.automatic or not versions or not self._leads():
            return
        route = self._traffic.route(model)
        current = self._traffic.rollout(model)
        if route is None or (current is not None and current.status in ACTIVE):
            return
        weighted = [v for v in route.variants if v.weight > 0]
        newest = max(versions, key=_number)
        if len(weighted) != 1 or weighted[0].model != model:
            return
        if _number(weighted[0].version) >= _number(newest):
            return
        candidate = admin_pb2.Variant(model=model, version=newest)
        reason = f"version {newest} of {model} was rolled out to the fleet"
        task = asyncio.create_task(self._begin_logged(model, candidate, reason))
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _begin_logged(self, route: str, candidate: admin_pb2.Variant, reason: str) -> None:
        try:
            await self.begin(route, candidate, reason=reason)
        except AdminError as exc:
            log.warning("rollout_not_started", route=route, reason=exc.message)


def _number(version: str) -> int:
    """A version as a number ("" the model's latest: above any)."""
    return int(version) if version.isdigit() else 1 << 62


def _weighted(variant: admin_pb2.Variant, weight: int) -> admin_pb2.Variant:
    copy = admin_pb2.Variant()
    copy.CopyFrom(variant)
    copy.weight = weight
    return copy


def _window_key(rollout: admin_pb2.Rollout) -> tuple[str, int, int]:
    return (rollout.candidate.name, rollout.step, rollout.route_revision)


def _same_version(a: admin_pb2.Variant, b: admin_pb2.Variant) -> bool:
    return (a.model, a.version) == (b.model, b.version)


def _seconds(plan: admin_pb2.RolloutPlan) -> float:
    return float(plan.min_step.ToNanoseconds()) / 1e9


def _evidence(verdict: Verdict, baseline: VariantTotals) -> list[admin_pb2.GateEvidence]:
    found = []
    for e in verdict.evidence:
        entry = admin_pb2.GateEvidence(
            gate=e.gate,
            threshold=e.threshold,
            outcome=e.outcome,
            candidate_calls=e.samples,
            baseline_calls=baseline.calls,
        )
        if e.observed is not None:
            entry.observed = e.observed
        if e.bound is not None:
            entry.bound = e.bound
        found.append(entry)
    return found


def _precondition(message: str) -> AdminError:
    return AdminError(grpc.StatusCode.FAILED_PRECONDITION, message)
