"""The scenario table: every ``ipsbench-load`` scenario command, each defined in a module of its own. A new
scenario is its module (its settings, steps and options, as :class:`~ipsbench.loadgen.scenarios.base.Scenario`)
plus one entry here."""

from __future__ import annotations

from ipsbench.loadgen.scenarios.base import Scenario
from ipsbench.loadgen.scenarios.rate import RATE, TRACE
from ipsbench.loadgen.scenarios.slo import SLO
from ipsbench.loadgen.scenarios.sweep import OFFLINE, RAMP, SINGLE_STREAM, SPIKE, SWEEP

SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario for scenario in (SWEEP, OFFLINE, SINGLE_STREAM, RAMP, SPIKE, RATE, TRACE, SLO)
}
