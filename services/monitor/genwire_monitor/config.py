"""Settings of the monitor service (env prefix ``GENWIRE_MONITOR_``).

Every alerting window and hold time is a *production* duration in seconds; the monitor
multiplies each by ``window_scale``, so a test can run the 1 h / 5 min burn-rate pair in
5 s / 0.4 s without changing the rules. Durations that are wall-clock behaviour rather than
windows are not scaled: ``trace_idle_s``, ``commit_interval_s``, and the stall watch's
``stall_alert_s`` and ``stall_check_interval_s`` (it reads the broker's real offsets). Lists
(SLOs, burn-rate rules, watched groups) are read from JSON in the environment, e.g.
``GENWIRE_MONITOR_SLOS='[{"name": "e2e", "stage": "end_to_end", "threshold_ms": 3000}]'``.
"""

from __future__ import annotations

from collections import Counter
from typing import ClassVar, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from genwire.settings import CLIENT_ONLY, STACK_ONLY, STAGE_ONLY, ServiceSettings
from genwire.telemetry import semconv as sc
from genwire.topics import Topic
from genwire_monitor.features import BY_ATTR

RollbackKind = Literal["latency_burn", "error_burn", "drift", "canary"]
"""The alert kinds that name a model version (``partition_stalled`` names a partition and
``slo_no_data`` an SLO, so they can roll nothing back)."""
Severity = Literal["page", "ticket"]
"""The severities the monitor's alerts carry (burn rules choose; drift is a ticket; a canary
and a stalled partition page)."""
DRIFT_SEVERITY: Severity = "ticket"
"""A drift alert's severity (people look; nothing rolls back on it by default)."""
CANARY_SEVERITY: Severity = "page"
"""A canary alert's severity: a version in front of users that differs from its champion."""
STALL_SEVERITY: Severity = "page"
"""A stalled partition's: requests wait and nothing moves them."""
NO_DATA_SEVERITY: Severity = "ticket"
"""An SLO whose stage no span has: it counts nothing, so it can never fire (a typo, a renamed
service); someone should fix its configuration."""

END_TO_END = "end_to_end"
TTFT = "ttft"
TPOT = "tpot"
OTHER_MODEL = "other"  # the one series every model version beyond ``max_models`` shares


class LatencySLO(BaseModel):
    """``objective`` of requests (or spans of ``stage``) complete under ``threshold_ms``."""

    name: str = Field(
        description="Short id used in alert ids and metric labels; unique among the SLOs "
        "(the error SLO's included)."
    )
    stage: str = Field(
        END_TO_END, description="end_to_end, ttft, tpot, or any stage the page lists."
    )
    threshold_ms: float = Field(gt=0, description="A request slower than this is 'bad'.")
    objective: float = Field(0.99, gt=0, lt=1, description="Target share of good events.")


class ErrorSLO(BaseModel):
    """``objective`` of requests (traces) finish without a span in status ERROR."""

    name: str = Field(
        "errors",
        description="Short id used in alert ids and metric labels; no latency SLO may share it.",
    )
    objective: float = Field(
        0.99, gt=0, lt=1, description="Target share of requests without an error."
    )


class BurnRule(BaseModel):
    """Fire when the error-budget burn rate exceeds ``factor`` over BOTH windows."""

    severity: Severity
    long_s: float = Field(gt=0, description="Long window (production seconds).")
    short_s: float = Field(gt=0, description="Short window, about 1/12 of the long one.")
    factor: float = Field(gt=0, description="Burn rate: error ratio / (1 - objective).")

    @property
    def rule_id(self) -> str:
        """The rule named by its production windows (``raised_by``): ``page 1h/5m 14.4x``."""
        return f"{self.severity} {_dur(self.long_s)}/{_dur(self.short_s)} {self.factor:g}x"


def _dur(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def max_burn(objective: float) -> float:
    """The highest burn rate an SLO can report: every event bad. The evaluator's own
    arithmetic (bad ratio 1.0 / budget), so the check at start agrees with it to the last bit."""
    return 1.0 / (1.0 - objective)


def default_watched_groups() -> dict[str, str]:
    """The pipeline's three stage groups and the topic each consumes."""
    return {
        "genwire-preprocess": Topic.REQUESTS.value,
        "genwire-inference": Topic.PREPARED.value,
        "genwire-postprocess": Topic.GENERATIONS.value,
    }


def default_burn_rules() -> list[BurnRule]:
    """The SRE Workbook's 30-day table, with sloth's 1 d / 2 h row."""
    hour = 3600.0
    return [
        BurnRule(severity="page", long_s=hour, short_s=5 * 60, factor=14.4),
        BurnRule(severity="page", long_s=6 * hour, short_s=30 * 60, factor=6.0),
        BurnRule(severity="ticket", long_s=24 * hour, short_s=2 * hour, factor=3.0),
        BurnRule(severity="ticket", long_s=72 * hour, short_s=6 * hour, factor=1.0),
    ]


def default_slos() -> list[LatencySLO]:
    """End to end 99.9 % under 10 s; time to first token 99 % under 1 s (from the entry point).

    Chosen from the measured detection times (docs/monitor.md, "Detection times"): with the
    Workbook's windows a total outage pages after f (1 - o) L, 8.6 min at 0.99 and 52 s at
    0.999, and a 10 % degradation after 3.6 h at 0.99 but 8.6 min at 0.999. 0.95 for TTFT
    paged a total stall only after 43 min and a 10 % one never.
    """
    return [
        LatencySLO(name="e2e", stage=END_TO_END, threshold_ms=10_000, objective=0.999),
        LatencySLO(name="ttft", stage=TTFT, threshold_ms=1_000, objective=0.99),
    ]


class DriftSettings(BaseModel):
    """Windows and thresholds of the drift tests (see docs/monitor.md for why these)."""

    reference: Literal["frozen", "rolling"] = Field(
        "frozen",
        description="frozen: the first reference window per model version, kept; rolling: "
        "the window just before the current one.",
    )
    reference_window_s: float = Field(3600, gt=0, description="Reference window length.")
    current_window_s: float = Field(600, gt=0, description="Current window length.")
    min_samples: int = Field(200, ge=10, description="Below this, a window is not tested.")
    psi_bins: int = Field(10, ge=2, description="PSI/JS bins, quantiles of the reference.")
    psi_threshold: float = Field(0.2, gt=0, description="PSI at or above: drift (numeric).")
    psi_clear: float = Field(0.1, gt=0, description="PSI below: drift cleared (hysteresis).")
    js_threshold: float = Field(
        0.1, gt=0, description="Jensen-Shannon distance (base 2) at or above: drift."
    )
    js_clear: float = Field(0.05, gt=0, description="JS distance below: drift cleared.")
    p_value: float = Field(
        0.01, gt=0, lt=1, description="KS / chi-square p below: the change is significant."
    )
    samples_per_bucket: int = Field(
        512, ge=16, description="Reservoir size of each feature in each time bucket."
    )


class MonitorSettings(ServiceSettings):
    """Reads spans from otlp_spans and raises latency and drift alerts."""

    model_config = SettingsConfigDict(
        env_prefix="GENWIRE_MONITOR_", extra="ignore", env_nested_delimiter="__"
    )
    # Its span, feedback and policy readers have their own settings (COMMIT_INTERVAL_S; the
    # feedback and policy readers take the quiet fetch wait): a stage's would go unread.
    # Nor does it use Redis, Triton or the model repository.
    not_read: ClassVar[frozenset[str]] = (
        STAGE_ONLY - {"kafka_quiet_fetch_max_wait_ms"}
        | STACK_ONLY
        | CLIENT_ONLY
        | {"home", "model_repository", "redis_url", "redis_timeout_s", "trace_content"}
        | {"triton_grpc_url", "triton_http_url", "triton_admin_key"}
    )

    service_name: str = Field("genwire-monitor", description="Service and group name.")
    port: int = Field(8090, description="Port of the status page, /healthz, /readyz, /metrics.")
    group_id: str = Field("genwire-monitor", description="Consumer group on the spans topic.")
    spans_topic: str = Field(Topic.SPANS.value, description="Topic of OTLP protobuf spans.")
    alerts_topic: str = Field(Topic.ALERTS.value, description="Topic alert events go to.")
    alert_state_topic: str = Field(
        Topic.ALERT_STATE.value,
        description="Compacted topic of alert state (key: alert id; value: its latest event, "
        "firing or resolved), read back on start to rebuild the firing ones; '' turns it off.",
    )
    restore_timeout_s: float = Field(
        30.0, gt=0, description="How long reading back the alert state may take at start."
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "latest", description="Where a NEW group starts; a known group resumes from commits."
    )
    max_batch_records: int = Field(500, ge=1, description="Records decoded per batch.")
    commit_interval_s: float = Field(1.0, gt=0, description="How often offsets are committed.")
    window_scale: float = Field(
        1.0, gt=0, description="Multiplies every window and hold time (tests: e.g. 1/720)."
    )
    eval_interval_s: float = Field(
        10.0, gt=0, description="How often rules are evaluated (production seconds)."
    )
    trace_idle_s: float = Field(
        3.0, gt=0, description="A trace with no new span for this long is complete (unscaled)."
    )
    max_open_traces: int = Field(100_000, ge=100, description="Bound on traces being assembled.")
    page_window_s: float = Field(300, gt=0, description="Window of the page's percentiles.")
    history_points: int = Field(360, ge=10, description="Points kept per plotted series.")
    slos: list[LatencySLO] = Field(
        default_factory=default_slos,
        description="Latency SLOs (JSON list of {name, stage, threshold_ms, objective}): "
        "stage end_to_end, ttft, tpot or any stage the page lists.",
    )
    error_slo: ErrorSLO = Field(
        default_factory=ErrorSLO, description="The error SLO (JSON {name, objective})."
    )
    burn_rules: list[BurnRule] = Field(
        default_factory=default_burn_rules,
        description="Multi-window burn-rate rules applied to every SLO (JSON list of "
        "{severity, long_s, short_s, factor}): each fires when the error budget burns faster "
        "than factor over both windows. A rule above an SLO's highest possible burn, "
        "1 / (1 - objective), cannot fire on that SLO; an SLO no rule of a severity can fire "
        "on is refused at start.",
    )
    min_events: int = Field(
        20, ge=1, description="Events in the short window before a burn rule may fire."
    )
    alert_for_s: float = Field(
        0.0, ge=0, description="How long a condition holds before firing (production s)."
    )
    alert_keep_firing_s: float = Field(
        300.0, ge=0, description="Minimum hold: a clear condition must last this long."
    )
    min_hold_s: float = Field(
        5.0,
        ge=0,
        description="Floor, in real (unscaled) seconds, of every non-zero hold: the keep-firing "
        "hold and the for-time before firing (burn rate and drift), whatever window_scale is.",
    )
    max_models: int = Field(
        8,
        ge=1,
        description="Model versions (name + version) with their own SLO, error, drift and "
        "log-probability series; later ones, and requests no model version served (unknown or "
        "rejected names), share one 'other' series.",
    )
    model_idle_s: float = Field(
        3600.0,
        gt=0,
        description="A model version series with no request for this long (production s, "
        "scaled) is evicted, freeing its slot; its alerts resolve. Alerts rebuilt after a "
        "restart for a version with no request for this long resolve too.",
    )
    drift: DriftSettings = Field(
        default_factory=DriftSettings,
        description="Drift detection (JSON, or one key at a time as DRIFT__<KEY>: below).",
    )
    config_topic: str = Field(
        Topic.CONFIG.value,
        description="Compacted topic of the models' serving policies (genwire.policy), "
        "followed live: which version is the champion and which are canaries; automatic "
        "rollbacks are published there. '' turns following (and rollback) off.",
    )
    feedback_topic: str = Field(
        Topic.FEEDBACK.value,
        description="Topic of caller feedback (genwire.feedback), counted per model version "
        "on the status page; '' turns it off.",
    )
    auto_rollback: bool = Field(
        True,
        description="Publish a rollback of a model's policy when a canary version's alerts "
        "fire while its champion's do not.",
    )
    rollback_kinds: list[RollbackKind] = Field(
        default_factory=lambda: list[RollbackKind](("latency_burn", "error_burn", "canary")),
        description="Alert kinds of a canary version that trigger its rollback (a canary's "
        "own drift, against its own first hour, is left to people).",
    )
    rollback_severities: list[Severity] = Field(
        default_factory=lambda: list[Severity](("page",)),
        description="Alert severities that trigger one.",
    )
    canary_features: list[str] = Field(
        default_factory=lambda: [
            sc.GEN_AI_OUTPUT_TOKENS,
            sc.GEN_AI_FINISH_REASONS,
            sc.MEAN_LOGPROB,
        ],
        description="Features a canary is compared on against its champion (current windows, "
        "the drift tests and thresholds): what the model produces, not what callers send.",
    )
    canary_min_samples: int = Field(
        50, ge=10, description="Requests on each side before a canary is compared."
    )
    canary_for_s: float = Field(
        60.0,
        ge=0,
        description="How long a canary must differ from its champion before its 'canary' "
        "alert fires (production s, scaled, at least min_hold_s).",
    )
    drift_hold_evaluations: int = Field(
        2, ge=1, description="Drifted evaluations (at least) before a drift alert fires."
    )
    drift_for_s: float = Field(
        120.0, ge=0, description="How long drift must persist before its alert fires."
    )
    examples_per_alert: int = Field(5, ge=1, description="Example trace ids in each alert.")
    watched_groups: dict[str, str] = Field(
        default_factory=default_watched_groups,
        description="Consumer group -> topic whose committed offsets the stall watch reads from "
        "the broker (JSON in the environment); {} turns the watch off.",
    )
    stall_alert_s: float = Field(
        60.0,
        gt=0,
        description="A watched partition with records waiting whose committed offset has not "
        "moved for this long raises partition_stalled (unscaled wall-clock seconds).",
    )
    stall_check_interval_s: float = Field(
        5.0, gt=0, description="How often the broker's offsets are read (unscaled seconds)."
    )
    alertmanager_url: str | None = Field(
        None, description="Alertmanager base URL; alerts are POSTed to <url>/api/v2/alerts."
    )
    alertmanager_resend_s: float = Field(
        60.0,
        ge=0,
        description="How often every firing alert is sent again to the Alertmanager (unscaled "
        "seconds), each with endsAt 4 intervals ahead: Alertmanager resolves an alert it has "
        "not heard of by then. 0: transitions only, firing alerts without endsAt (a receiver "
        "that wants no repeats; Alertmanager resolves them after its resolve_timeout).",
    )

    @model_validator(mode="after")
    def _rollback_can_fire(self) -> MonitorSettings:
        if not self.auto_rollback:
            return self
        if not (self.rollback_kinds and self.rollback_severities):
            raise ValueError(  # no alert could ever match: say so instead of never acting
                "auto_rollback needs at least one of rollback_kinds and of rollback_severities "
                "(AUTO_ROLLBACK=false turns the rollback off)"
            )
        burns = {rule.severity for rule in self.burn_rules}
        raised: dict[str, set[Severity]] = {
            "latency_burn": burns if self.slos else set(),  # no latency SLO: no latency burn
            "error_burn": burns,
            "drift": {DRIFT_SEVERITY},
            "canary": {CANARY_SEVERITY},
        }
        wanted = set(self.rollback_severities)
        never = [k for k in self.rollback_kinds if not raised.get(k, set()) & wanted]
        if never:
            raise ValueError(
                f"rollback_kinds {never} never come with a severity of rollback_severities "
                f"{self.rollback_severities}: drift alerts are {DRIFT_SEVERITY}s, canary alerts "
                f"{CANARY_SEVERITY}s, burn alerts those of burn_rules ({sorted(burns)}), "
                "latency burns only with slos"
            )
        return self

    @model_validator(mode="after")
    def _slo_names_unique(self) -> MonitorSettings:
        # The name keys an SLO's alerts, metric series, page row and the rollback's look-up:
        # two of one name share them, and a healthy one's clear wipes a failing one's pending.
        names = Counter([slo.name for slo in self.slos] + [self.error_slo.name])
        dupes = sorted(name for name, n in names.items() if n > 1)
        if dupes:
            raise ValueError(
                f"SLO names {dupes} are used more than once (slos and error_slo together): "
                "each SLO needs its own name"
            )
        return self

    @model_validator(mode="after")
    def _burn_rules_can_fire(self) -> MonitorSettings:
        # A rule whose factor is above an SLO's highest possible burn never fires on it. One
        # such rule is fine while another of its severity can (a 0.9 SLO pages at 6x, not at
        # the Workbook's 14.4x, which assumes 99.9 %); none of a severity that can means that
        # severity says clear through a total outage: refuse it rather than watch nothing.
        slos = [(slo.name, slo.objective) for slo in self.slos]
        slos.append((self.error_slo.name, self.error_slo.objective))
        never: list[str] = []
        for severity in sorted({rule.severity for rule in self.burn_rules}):
            rules = [r for r in self.burn_rules if r.severity == severity]
            lowest = min(r.factor for r in rules)
            never += [
                f"SLO {name!r} (objective {objective:g}) burns at most "
                f"{max_burn(objective):.4g}x (every request bad), below every {severity} rule "
                f"({', '.join(repr(r.rule_id) for r in rules)}); the lowest needs an objective "
                f"of at least 1 - 1/{lowest:g} = {1.0 - 1.0 / lowest:.4g}"
                for name, objective in slos
                if max_burn(objective) < lowest
            ]
        if never:
            raise ValueError(
                f"burn rules that could never fire (a total outage would read as clear): "
                f"{'; '.join(never)}. Raise the objective or lower a rule's factor"
            )
        return self

    @field_validator("canary_features")
    @classmethod
    def _known_features(cls, names: list[str]) -> list[str]:
        unknown = [n for n in names if n not in BY_ATTR]
        if unknown:  # a typo would compare a canary on nothing, silently
            raise ValueError(f"unknown features {unknown}; the monitored ones are {list(BY_ATTR)}")
        return names

    def scaled(self, seconds: float) -> float:
        """A production duration in this deployment's time scale."""
        return seconds * self.window_scale

    def hold_s(self, seconds: float) -> float:
        """A hold time: scaled, but never under ``min_hold_s`` real seconds (0 stays 0)."""
        return 0.0 if seconds <= 0 else max(self.scaled(seconds), self.min_hold_s)
