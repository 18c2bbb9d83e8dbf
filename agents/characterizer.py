"""The characterizer: turns a probe run's documents into a `Measurement` with uncertainties.

Scalar channels: the run's start document maps event data keys to output names (`channels`); each
reading is taken as is, with uncertainty |value| × the world's noise.

Powder patterns: when the start document names `pattern_fields` ({"two_theta": key, "intensity": key})
the event's arrays are analyzed by whole-pattern fitting of the `candidate_phases` (agents/phase_id.py),
and the outputs derived as the solid-state world defines them: `target_fraction` (weight fraction of
the target: the start document's `target`, else the first candidate), `precursor_fraction` (unreacted
starting material: the start document's `precursors` and `decomposition_products`; where it names
neither, every candidate but the target that no reaction of the reference library forms, i.e. dosed
powders and their oxides) and `impurity_fraction` (everything else: side phases), each with its
standard uncertainty from the fit (covariances included). They are reported for those of the
campaign's outputs among them; the fraction of every candidate goes along as `phase:<formula>`. A
derived value replaces a scalar channel of the same name. Target, precursors and `side_phases` named
in the start document are analyzed even when the candidate list omits them.

A pattern that cannot be analyzed (empty, non-finite, unknown phase), one in which no candidate is
detected, or one the candidates leave largely unexplained (more than `MAX_UNEXPLAINED` of the signal
above background: a phase outside the candidate list, or the wrong sample) becomes a `Fault` with a
one-line reason, never a doubtful measurement.
"""

from __future__ import annotations

import math
from typing import Any

from athanor.agents.common import Agent
from athanor.messages import Fault, Measurement, to_wire

DERIVED = ("target_fraction", "precursor_fraction", "impurity_fraction")
MAX_UNEXPLAINED = 0.25  # share of the above-background signal power (beyond counting noise)


class CharacterizerAgent(Agent):
    role = "characterizer"

    def interpret(self, sample_id: str, causation_id: str, instrument: str,
                  documents: list[tuple[str, dict[str, Any]]], duration_s: float) -> dict[str, Any]:
        starts = [doc for name, doc in documents if name == "start"]
        events = [doc for name, doc in documents if name == "event"]
        envelope = dict(campaign_id=self.campaign_id, sample_id=sample_id, causation_id=causation_id,
                        sender=self.role)
        if not starts or not events:
            return to_wire(Fault(**envelope, step="characterize", error=f"{instrument} returned no reading"))
        if starts[-1].get("pattern_fields"):
            return self._pattern(envelope, instrument, starts, events[-1], duration_s)
        channels: dict[str, str] = starts[-1]["channels"]
        data = events[-1]["data"]
        values = {output: float(data[key]) for key, output in channels.items()}
        bad = [name for name, v in values.items() if not math.isfinite(v)]
        if bad:
            return to_wire(Fault(**envelope, step="characterize",
                                 error=f"non-finite reading {values[bad[0]]} for {bad[0]!r} from {instrument} "
                                       f"(run {starts[-1]['uid'][:8]})"))
        noise = self.spec.world.noise
        return to_wire(Measurement(
            **envelope, instrument=instrument, values=values,
            uncertainties={k: abs(v) * noise for k, v in values.items()},
            run_uids=[s["uid"] for s in starts], duration_s=duration_s,
        ))

    def _pattern(self, envelope: dict[str, Any], instrument: str, starts: list[dict[str, Any]],
                 event: dict[str, Any], duration_s: float) -> dict[str, Any]:
        start = starts[-1]
        where = f"{instrument} (run {str(start.get('uid', '?'))[:8]})"

        def fault(error: str) -> dict[str, Any]:
            return to_wire(Fault(**envelope, step="characterize", error=f"{error} from {where}"))

        data = event.get("data") or {}
        values: dict[str, float] = {}
        for key, output in (start.get("channels") or {}).items():
            try:
                values[output] = float(data[key])
            except (KeyError, TypeError, ValueError):
                return fault(f"no numeric reading {key!r} for {output!r}")
            if not math.isfinite(values[output]):
                return fault(f"non-finite reading {values[output]} for {output!r}")
        noise = self.spec.world.noise
        uncertainties = {k: abs(v) * noise for k, v in values.items()}

        try:
            derived, derived_u = _analyze(start, data)
        except Exception as exc:  # noqa: BLE001 -- any analysis failure is the sample's fault, in one line
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return fault(f"XRD phase analysis failed: {text}")
        outputs = set(self.spec.output_names)
        for name, value in derived.items():
            if name in outputs or name.startswith("phase:"):
                values[name], uncertainties[name] = value, derived_u[name]
        missing = [name for name in self.spec.output_names if name not in values]
        if missing:
            return fault(f"no value for output {missing[0]!r} (a powder pattern gives {', '.join(DERIVED)})")
        return to_wire(Measurement(**envelope, instrument=instrument, values=values, uncertainties=uncertainties,
                                   run_uids=[s["uid"] for s in starts if "uid" in s], duration_s=duration_s))


def _names(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{field} must be a list of phase formulas, got {value!r}")
    return [v.strip() for v in value]


def _analyze(start: dict[str, Any], data: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """Derived values and their uncertainties from the pattern the start document points at."""
    from athanor.agents.phase_id import identify_phases
    from athanor.simulators import phases as lib

    fields = start["pattern_fields"]
    if not isinstance(fields, dict) or "two_theta" not in fields or "intensity" not in fields:
        raise ValueError(f"pattern_fields must name 'two_theta' and 'intensity' data keys, got {fields!r}")
    arrays = {}
    for role in ("two_theta", "intensity"):
        if fields[role] not in data:
            raise ValueError(f"the event has no {role} data {fields[role]!r}")
        arrays[role] = data[fields[role]]

    def canon(name: str) -> str:
        return lib.lookup(name) or name

    candidates = _names(start.get("candidate_phases"), "candidate_phases")
    target = start.get("target") or (candidates[0] if candidates else None)
    if not isinstance(target, str) or not target.strip():
        raise ValueError("no target phase: the start document names no candidate_phases or target")
    # Unreacted starting material: the dosed precursors and what they decompose to (the world's definition).
    if start.get("precursors") is not None or start.get("decomposition_products") is not None:
        precursors = [*_names(start.get("precursors"), "precursors"),
                      *_names(start.get("decomposition_products"), "decomposition_products")]
    elif len(candidates) > 1:  # not said: every candidate but the target that no reaction in the library forms
        precursors = [c for c in candidates
                      if canon(c) != canon(target) and "kinetics" not in lib.PHASES.get(canon(c), {})]
    else:
        precursors = list(lib.PHASES.get(canon(target), {}).get("precursors", []))
    # Analyze the target, precursors and side phases even where the candidate list leaves them out.
    given = {canon(c): c for c in candidates}
    for name in [target, *precursors, *_names(start.get("side_phases"), "side_phases")]:
        given.setdefault(canon(name), name)
    names = list(given.values())
    fit = identify_phases(arrays["two_theta"], arrays["intensity"], names)
    if not fit.detected:
        raise ValueError(f"none of {', '.join(names)} detected (Rwp {fit.rwp:.2f})")
    if fit.unexplained > MAX_UNEXPLAINED:
        raise ValueError(f"the candidates ({', '.join(names)}) leave {fit.unexplained:.0%} of the pattern "
                         f"unexplained (Rwp {fit.rwp:.2f}, reduced χ² {fit.chi2:.1f}): a phase outside the list?")
    t = given[canon(target)]
    pre = list(dict.fromkeys(given[canon(p)] for p in precursors if canon(p) != canon(target)))
    rest = [n for n in names if n != t and n not in pre]
    values, sigmas = {}, {}
    for label, group in (("target_fraction", [t]), ("precursor_fraction", pre), ("impurity_fraction", rest)):
        values[label], sigmas[label] = fit.combined(group)
    for n in names:
        values[f"phase:{n}"], sigmas[f"phase:{n}"] = fit.weight_fractions[n], fit.uncertainties[n]
    return values, sigmas
