"""ophyd devices for the lab's hardware, on either backend, with the same components.

`soft_device(hardware, name, allowed)`: the `simulated` backend. Every channel of the `Hardware` is a
soft `Signal`; `trigger()` hands the setpoints to the hardware, runs its action in this process and
publishes the readbacks.

`epics_device(hardware_class, pv_prefix, name, timeout_s)`: the `epics` backend. Every channel is an
`EpicsSignal` (writable) or `EpicsSignalRO` at `{pv_prefix}{channel}`, over Channel Access (caproto's
client); `trigger()` writes 1 to `{pv_prefix}acquire` and waits for the put to complete — the IOC
completes it when the action is done — at most `timeout_s`, then reads `error`.

A setpoint with limits (the hardware's `Channel.limits`, narrowed by the campaign's `instruments[].limits`) is a
signal whose `check_value` refuses a value outside them, on either backend: every `put` consults it, and
`check_limits(plan)` runs a whole plan past them before anything moves, as bluesky's simulators do.

Failures come back in the status, as hardware's do: an `InstrumentFault` when the instrument itself
reports one (the step failed: a cracked crucible, a detector dropout); a `ControlSystemError` when the
control system lost it (a PV disconnected, an action that never completed): the instrument may be fine
and the sample untouched, or not — the station decides what that means for the step.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ophyd import Component as Cpt
import numpy as np
from ophyd import Device, Signal
from ophyd.status import DeviceStatus
from ophyd.utils import LimitError

from athanor.instruments.hardware import Hardware
from athanor.simulators.base import InstrumentFault

CONNECT_TIMEOUT_S = 5.0  # one attempt to reach an instrument's PVs (the first search of a client takes longest)


class ControlSystemError(RuntimeError):
    """The control system lost the instrument: a disconnected PV, an action that did not complete in time."""


Range = tuple[float | None, float | None]


def allowed_ranges(hardware_class: type[Hardware], narrower: dict[str, Range] | None = None) -> dict[str, Range]:
    """Channel -> (low, high) for every limited setpoint: the hardware's own, narrowed by a campaign's
    (a campaign can keep a plan further from the controller's limits, never take it past them)."""
    ranges: dict[str, Range] = {c.name: c.limits for c in hardware_class.all_channels() if c.limits is not None}
    for channel, (low, high) in (narrower or {}).items():
        own_low, own_high = ranges.get(channel, (None, None))
        ranges[channel] = (max((v for v in (low, own_low) if v is not None), default=None),
                           min((v for v in (high, own_high) if v is not None), default=None))
    return ranges


class _InRange:
    """A setpoint that refuses values outside (low, high), elementwise for an array (a furnace program)."""

    allowed: Range = (None, None)
    units: str = ""

    def check_value(self, value: Any, **kwargs: Any) -> None:
        super().check_value(value, **kwargs)  # type: ignore[misc]
        low, high = self.allowed
        controller = self.controller_limits()
        if controller is not None:  # an IOC's DRVL/DRVH: the tighter of the two on each side
            low = controller[0] if low is None else max(low, controller[0])
            high = controller[1] if high is None else min(high, controller[1])
        values = np.atleast_1d(np.asarray(value, dtype=float))
        units = f" {self.units}" if self.units else ""
        if low is not None and not (values >= low).all():
            worst = values[~(values >= low)][0]
            raise LimitError(f"{self.name} = {worst:g}{units} is below its lower limit {low:g}{units}")
        if high is not None and not (values <= high).all():
            worst = values[~(values <= high)][0]
            raise LimitError(f"{self.name} = {worst:g}{units} is above its upper limit {high:g}{units}")


    def controller_limits(self) -> tuple[float, float] | None:
        """The limits the controller itself publishes, when it publishes any (an EPICS record's)."""
        return None


class LimitedSignal(_InRange, Signal):
    def __init__(self, *args: Any, allowed: Range = (None, None), units: str = "", **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.allowed, self.units = allowed, units


def check_limits(plan: Any) -> list[str]:
    """Every setpoint a plan would send outside its signal's limits, said in one line each (the plan is
    iterated, not run: nothing moves). bluesky.simulators.check_limits stops at the first; a lab wants
    them all."""
    problems = []
    for msg in plan:
        if msg.command == "set" and hasattr(msg.obj, "check_value"):
            try:
                msg.obj.check_value(msg.args[0])
            except (LimitError, ValueError) as exc:
                problems.append(str(exc))
    return problems


class _SoftDevice(Device):
    hardware: Hardware

    def trigger(self) -> DeviceStatus:
        status = DeviceStatus(self)
        hw = self.hardware
        try:
            for channel in hw.all_channels():
                if channel.writable:
                    hw.put(channel.name, getattr(self, channel.name).get())
            hw.acquire()
        except Exception as exc:  # noqa: BLE001 -- the fault travels in the status, as hardware's would
            status.set_exception(exc if isinstance(exc, InstrumentFault) else InstrumentFault(str(exc)))
        else:
            status.set_finished()
        finally:
            for channel in hw.all_channels():
                if not channel.writable:
                    getattr(self, channel.name).put(hw.values[channel.name])
        return status


def soft_device(hardware: Hardware, name: str, allowed: dict[str, Range] | None = None) -> Device:
    """The hardware in this process, its channels as soft signals; `allowed` overrides its limits."""
    ranges = allowed_ranges(type(hardware), allowed)
    components = {c.name: Cpt(LimitedSignal, value=c.initial, kind=c.kind, allowed=ranges[c.name], units=c.units)
                  if c.name in ranges else Cpt(Signal, value=c.initial, kind=c.kind)
                  for c in hardware.all_channels()}
    cls = type(f"Simulated{type(hardware).__name__}", (_SoftDevice,), components)
    device = cls(name=name)
    device.hardware = hardware
    device.outputs = dict(getattr(type(hardware), "outputs", {}))  # a probe's readings: channel -> output
    return device


class _EpicsDevice(Device):
    timeout_s: float = 60.0

    def trigger(self) -> DeviceStatus:
        status = DeviceStatus(self)

        def act() -> None:
            try:
                done = self.acquire.set(1, timeout=self.timeout_s)
                try:
                    done.wait(self.timeout_s)
                except Exception as exc:  # noqa: BLE001 -- a timeout, or the connection lost mid-action
                    raise ControlSystemError(f"{self.acquire.pvname} did not complete within {self.timeout_s:g} s"
                                             f"{self._where()}") from exc
                error = self.error.get()
                if error:
                    raise InstrumentFault(f"{self.name}: {error}")
            except (InstrumentFault, ControlSystemError) as exc:
                status.set_exception(exc)
            except Exception as exc:  # noqa: BLE001 -- anything else from the client is the control system's
                status.set_exception(ControlSystemError(f"{self.name}: {type(exc).__name__}: {exc}"))
            else:
                status.set_finished()

        threading.Thread(target=act, name=f"{self.name}-acquire", daemon=True).start()
        return status

    def _where(self) -> str:
        """What the instrument read when it gave up, if it can still be read."""
        try:
            return f" (state {self.state.get(timeout=1.0)!r})"
        except Exception:  # noqa: BLE001 -- it is gone: say nothing more
            return " (no answer from the IOC)"

    def check_connection(self, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        """Raise `ControlSystemError` naming a PV that does not answer within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        for signal in [self.acquire, *(getattr(self, c) for c in self.component_names if c != "acquire")]:
            try:
                signal.wait_for_connection(timeout=max(0.05, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001 -- ophyd raises TimeoutError, caproto its own
                raise ControlSystemError(f"{signal.pvname} does not answer (is the IOC running?)") from None


def epics_device(hardware_class: type[Hardware], pv_prefix: str, name: str, timeout_s: float = 60.0,
                 allowed: dict[str, Range] | None = None) -> Device:
    """The hardware behind an IOC, its channels as PVs `{pv_prefix}{channel}`; `allowed` overrides its limits."""
    from ophyd.signal import EpicsSignal, EpicsSignalRO

    class LimitedEpicsSignal(_InRange, EpicsSignal):
        def controller_limits(self) -> tuple[float, float] | None:
            if not self.connected:
                return None
            low, high = self.limits  # the PV's control limits; (0, 0) when the record sets none
            return (float(low), float(high)) if low is not None and high is not None and low < high else None

    ranges = allowed_ranges(hardware_class, allowed)

    common = {"timeout": CONNECT_TIMEOUT_S, "connection_timeout": CONNECT_TIMEOUT_S}
    # A put waits for its completion at most timeout_s: ophyd's default waits forever, so an IOC that
    # dies between a setpoint's put and its callback would hang the plan, and the campaign with it.
    writes = {**common, "write_timeout": timeout_s}
    components: dict[str, Any] = {
        "acquire": Cpt(EpicsSignal, "acquire", put_complete=True, kind="omitted", **writes)}
    for c in hardware_class.all_channels():
        text = c.dtype in ("text", "str")
        if c.writable and c.dtype in ("float", "int", "array"):
            components[c.name] = Cpt(LimitedEpicsSignal, c.name, put_complete=True, string=text, kind=c.kind, **writes)
        elif c.writable:
            components[c.name] = Cpt(EpicsSignal, c.name, put_complete=True, string=text, kind=c.kind, **writes)
        else:
            components[c.name] = Cpt(EpicsSignalRO, c.name, string=text, kind=c.kind, **common)
    cls = type(f"Epics{hardware_class.__name__}", (_EpicsDevice,), components)
    device = cls(pv_prefix, name=name)
    for c in hardware_class.all_channels():
        signal = getattr(device, c.name, None)
        if isinstance(signal, _InRange):
            signal.allowed, signal.units = ranges.get(c.name, (None, None)), c.units
    device.timeout_s = timeout_s
    device.outputs = dict(getattr(hardware_class, "outputs", {}))
    return device


def use_caproto() -> None:
    """ophyd's Channel Access through caproto's pure-Python client (no libca needed)."""
    import ophyd

    if ophyd.get_cl().name != "caproto":
        ophyd.set_cl("caproto")

