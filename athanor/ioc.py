"""The simulated lab as a Channel Access IOC (caproto), the world computing what the hardware does.

Every instrument of the campaign is served with the channels of its station's hardware
(instruments/hardware.py) as PVs `{prefix}{instrument}:{device}:{channel}`, plus
`{prefix}{instrument}:{device}:acquire`: a put of 1 runs the device's action and completes (the
client's put-callback fires) when the action is done; `state` and `error` say how it went. Any CA
client reads them (`caproto-get`, `camonitor`, ophyd's `EpicsSignal`).

Readbacks are published when an action finishes and, while one runs, as they change (polled at
10 Hz), so a client monitoring `temperature` or `state` sees the furnace heat.

`athanor ioc CONFIG [--prefix P] [--port N]` serves on loopback (`--interface` to change it);
`serve_embedded` starts that command as a child process for a dry run (`ioc: embedded`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from athanor.errors import AthanorError
from athanor.instruments.hardware import MAX_POINTS, MAX_TEXT, Channel, Hardware
from athanor.instruments.stations import station_for
from athanor.spec import Campaign

PUBLISH_S = 0.1
READY = "athanor ioc: serving"


def lab_hardware(spec: Campaign, world: Any) -> dict[str, dict[str, Hardware]]:
    """instrument name -> its devices' hardware, as its station builds them."""
    return {i.name: station_for(spec, i, world).hardware(world, spec) for i in spec.instruments}


def pv_prefix(spec: Campaign, instrument: str, device: str, prefix: str | None = None) -> str:
    """`{prefix}{instrument}:{device}:`; `prefix` overrides the instrument's own."""
    own = spec.instrument_named(instrument).prefix
    return f"{own if prefix is None else prefix}{instrument}:{device}:"


def pv_names(spec: Campaign, hardware: dict[str, dict[str, Hardware]], prefix: str | None = None) -> list[str]:
    return [f"{pv_prefix(spec, inst, dev, prefix)}{name}" for inst, devices in hardware.items()
            for dev, hw in devices.items() for name in ("acquire", *(c.name for c in hw.all_channels()))]


def _native(channel: Channel, value: Any) -> Any:
    if channel.dtype == "array":
        return np.asarray(value, dtype=float)
    if channel.dtype in ("str", "text"):
        return value.decode() if isinstance(value, bytes) else str(value)
    if isinstance(value, (list, tuple, np.ndarray)):
        value = value[0]
    return float(value) if channel.dtype == "float" else int(value)


def _data(channel: Channel, hw: Hardware) -> Any:
    """The caproto channel for one hardware channel; a write to a writable one reaches the hardware."""
    import caproto

    base, options = {
        "float": (caproto.ChannelDouble, {"precision": 4}),
        "int": (caproto.ChannelInteger, {}),
        "str": (caproto.ChannelString, {}),
        "text": (caproto.ChannelChar, {"max_length": MAX_TEXT, "string_encoding": "utf-8"}),
        "array": (caproto.ChannelDouble, {"max_length": MAX_POINTS}),
    }[channel.dtype]
    if channel.units and channel.dtype in ("float", "array"):
        options["units"] = channel.units
    value = hw.values[channel.name]
    value = list(np.asarray(value, float)) if channel.dtype == "array" else value
    if not channel.writable:
        return base(value=value, **options)
    low, high = channel.limits or (None, None)
    if channel.limits is not None:  # a controller's DRVL/DRVH: clients read them, and a put outside fails
        options.update(lower_ctrl_limit=low, upper_ctrl_limit=high)

    class Setpoint(base):  # type: ignore[misc, valid-type]
        async def verify_value(self, new: Any) -> Any:
            new = await super().verify_value(new)
            values = np.atleast_1d(np.asarray(_native(channel, new), dtype=float)) if channel.limits else ()
            if len(values) and not ((values >= low) & (values <= high)).all():
                raise ValueError(f"{channel.name}: {values.tolist()} outside its limits [{low:g}, {high:g}]")
            hw.put(channel.name, _native(channel, new))
            return new

    return Setpoint(value=value, **options)


class _Lab:
    """The pvdb of every instrument's hardware, and the task that publishes their readbacks."""

    def __init__(self, spec: Campaign, hardware: dict[str, dict[str, Hardware]], prefix: str | None):
        import caproto

        self.pvdb: dict[str, Any] = {}
        self.readbacks: list[tuple[Hardware, str, Any]] = []  # hardware, channel, caproto data
        self.published: dict[int, Any] = {}
        for inst, devices in hardware.items():
            for dev, hw in devices.items():
                base = pv_prefix(spec, inst, dev, prefix)
                for channel in hw.all_channels():
                    data = _data(channel, hw)
                    self.pvdb[base + channel.name] = data
                    if not channel.writable:
                        self.readbacks.append((hw, channel.name, data))
                lab = self

                class Acquire(caproto.ChannelInteger):
                    async def verify_value(self, new: Any, _hw: Hardware = hw) -> Any:
                        if int(np.ravel(new)[0]) == 1:
                            loop = asyncio.get_running_loop()
                            with contextlib.suppress(Exception):  # the fault is in `state` and `error`
                                await loop.run_in_executor(None, _hw.acquire)
                            await lab.publish(_hw)
                        return 0

                self.pvdb[base + "acquire"] = Acquire(value=0)

    async def publish(self, only: Hardware | None = None) -> None:
        for hw, name, data in self.readbacks:
            if only is not None and hw is not only:
                continue
            value = hw.values[name]
            if self.published.get(id(data)) is value:
                continue
            self.published[id(data)] = value
            await data.write(list(np.asarray(value, float)) if isinstance(value, np.ndarray) else value,
                             verify_value=False)

    async def keep_publishing(self) -> None:
        while True:
            await self.publish()
            await asyncio.sleep(PUBLISH_S)


def serve(spec: Campaign, prefix: str | None = None, port: int | None = None, interface: str = "127.0.0.1",
          stalled: tuple[str, ...] = ()) -> None:
    """Serve the campaign's instruments until interrupted (Ctrl-C or SIGTERM)."""
    from athanor import registry

    if port is not None:
        os.environ["EPICS_CA_SERVER_PORT"] = str(port)
    world = registry.make_world(spec)
    hardware = lab_hardware(spec, world)
    unknown = [name for name in stalled if name not in hardware]
    if unknown:
        raise AthanorError(f"--stall: no instrument {', '.join(unknown)}; the instruments are {', '.join(hardware)}")
    for name in stalled:
        for hw in hardware[name].values():
            hw.stalled.set()
    lab = _Lab(spec, hardware, prefix)

    async def main() -> None:
        from caproto.asyncio.server import Context

        context = Context(lab.pvdb, interfaces=[interface])
        publisher = asyncio.ensure_future(lab.keep_publishing())

        def ready(*_args: Any) -> None:
            print(f"{READY} {len(lab.pvdb)} PVs on {interface}:{os.environ.get('EPICS_CA_SERVER_PORT', 5064)}",
                  flush=True)

        try:
            await context.run(log_pv_names=False, startup_hook=_hook(ready))
        finally:
            publisher.cancel()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


def _hook(ready: Any) -> Any:
    async def startup(_async_lib: Any) -> None:
        ready()
    return startup


def free_port() -> int:
    """A TCP and UDP port free on loopback now (Channel Access serves both on one number)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def client_environment(port: int) -> dict[str, str]:
    """What a Channel Access client needs to find an IOC serving on loopback at `port`."""
    return {"EPICS_CA_ADDR_LIST": "127.0.0.1", "EPICS_CA_AUTO_ADDR_LIST": "NO", "EPICS_CA_SERVER_PORT": str(port),
            "EPICS_CA_REPEATER_PORT": str(port + 1)}


class IocProcess:
    """`athanor ioc` as a child process in its own process group, ready once it says it serves."""

    def __init__(self, config: str | Path, port: int | None = None, extra: tuple[str, ...] = (),
                 timeout_s: float = 60.0, log: Path | None = None):
        self.config, self.port, self.extra, self.timeout_s = Path(config), port or free_port(), extra, timeout_s
        self.log = log
        self.process: subprocess.Popen[str] | None = None

    @property
    def environment(self) -> dict[str, str]:
        return client_environment(self.port)

    def start(self) -> IocProcess:
        env = {**os.environ, **self.environment, "PYTHONUNBUFFERED": "1"}
        sink = open(self.log, "a") if self.log else subprocess.DEVNULL  # noqa: SIM115 -- the child writes it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "athanor", "ioc", str(self.config), "--port", str(self.port), *self.extra],
            stdout=subprocess.PIPE, stderr=sink, text=True, env=env, start_new_session=True)
        deadline = time.monotonic() + self.timeout_s
        assert self.process.stdout is not None
        while time.monotonic() < deadline:  # its first line says it serves; EOF says it died
            ready, _, _ = select.select([self.process.stdout], [], [], max(0.0, deadline - time.monotonic()))
            line = self.process.stdout.readline() if ready else ""
            if line.startswith(READY):
                return self
            if ready and not line:
                break
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)  # after EOF, its exit status is a moment away
        code = self.process.poll()
        self.stop()
        why = f"it exited with status {code}" if code is not None else f"it did not serve within {self.timeout_s:g} s"
        raise AthanorError(f"the IOC for {self.config} did not start on port {self.port}: {why}"
                           + (f" (its log: {self.log})" if self.log else ""))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def __enter__(self) -> IocProcess:
        return self if self.process is not None else self.start()

    def __exit__(self, *_exc: Any) -> None:
        self.stop()

    def kill(self) -> None:
        """As a crash would: SIGKILL, no goodbye."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None


@contextlib.contextmanager
def embedded(config: str | Path, **kwargs: Any) -> Iterator[IocProcess]:
    ioc = IocProcess(config, **kwargs).start()
    try:
        yield ioc
    finally:
        ioc.stop()
