"""Stand-in for the 0G fine-tuning broker (``0g-fine-tuning-server``, v0.2.2) in a simulated CVM.

Usage::

    python3 -m zerog_sim.broker [--config PATH] [--config-display PATH] [--port N]
                                [--bind ADDR] [--models-dir DIR] [--tee-socket PATH]

``--config`` defaults to ``$CONFIG_FILE`` then ``/etc/config/config.yaml``;
``--config-display`` is the path that messages about the config file name instead (the
simulated CVM passes the host file as ``--config`` and the in-container path here); ``--port``
to ``$PORT`` then gin's 8080.  Environment: ``NETWORK`` (``hardhat`` selects the mock
TEE and the ``ethereumHardhat`` network for the contract client, like upstream),
``ZEROG_SIM_BROKER_STARTUP_SECONDS`` (default 2: how long start-up takes before the
port opens), ``DSTACK_SIMULATOR_ENDPOINT`` (overrides the tappd socket like the SDK).

Start-up follows ``api/fine-tuning/cmd/server/main.go``: config (missing file = silent
defaults), logger, image build in the background, database, storage client (wallet 0),
contract client, TEE client, then ``runApplication``: TEE quote, on-chain service sync,
services, route registration, wait for the execution image, settlement, and only then
the HTTP listener.  A refusal prints the broker's own text and exits like Go does
(``log.Fatalf``: 1, ``panic``: 2).  After the listener is up SIGTERM/SIGINT log
``shutting down server...`` and exit 0; before that they kill the process (no handler).

:func:`validate_config_text` (re-exported from :mod:`zerog_sim.broker_config`) answers
"would this config text start?" without running anything.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import sys
import threading
import time
from typing import Any

from zerog_sim import broker_config as bc
from zerog_sim import broker_http as bh
from zerog_sim import goyaml as gy
from zerog_sim.broker_config import BrokerCrash, Crash, validate_config_text
from zerog_sim.state import not_simulated

__all__ = ["main", "validate_config_text"]

PROGRAM = "0g-fine-tuning-server"
DEFAULT_TEE_SOCKET = "/var/run/tappd.sock"
STARTUP_ENV = "ZEROG_SIM_BROKER_STARTUP_SECONDS"
LEVEL_NUMBERS = {name: i for i, name in enumerate(bc.LOGRUS_LEVELS)}


# ------------------------------------------------------------------------ output


def _write(stream: Any, text: str) -> None:
    stream.buffer.write(text.encode("utf-8", "surrogateescape"))
    stream.flush()


def rfc3339(now: float) -> str:
    """Go's ``time.RFC3339`` in local time (``Z`` for UTC)."""
    tm = time.localtime(now)
    offset = tm.tm_gmtoff or 0
    if offset == 0:
        zone = "Z"
    else:
        sign = "+" if offset > 0 else "-"
        zone = f"{sign}{abs(offset) // 3600:02d}:{abs(offset) % 3600 // 60:02d}"
    return time.strftime("%Y-%m-%dT%H:%M:%S", tm) + zone


def go_log_prefix(now: float) -> str:
    """The standard library ``log`` prefix (``LstdFlags``)."""
    return time.strftime("%Y/%m/%d %H:%M:%S ", time.localtime(now))


def gin_debug(message: str) -> None:
    """gin's ``debugPrint`` (debug mode is gin's default) to stdout."""
    _write(sys.stdout, "[GIN-debug] " + message + ("" if message.endswith("\n") else "\n"))


def render_logrus_text(level: str, msg: str, fields: dict[str, str], now: float) -> str:
    """logrus ``TextFormatter{DisableColors, FullTimestamp}`` line."""
    parts = [f"time={bc.logfmt_value(rfc3339(now))}", f"level={level}", f"msg={bc.logfmt_value(msg)}"]
    parts += [f"{k}={bc.logfmt_value(v)}" for k, v in sorted(fields.items())]
    return " ".join(parts) + "\n"


def render_crash(crash: Crash, now: float) -> str:
    """What the dying Go process writes to stderr."""
    if crash.style == "fatal":
        return go_log_prefix(now) + crash.message + "\n"
    if crash.style == "logrus_fatal":
        return render_logrus_text("fatal", crash.message, dict(crash.fields), now)
    head = f"panic: {crash.message}\n"
    if crash.style == "sigsegv":
        head += "[signal SIGSEGV: segmentation violation code=0x1 addr=0x40 pc=0x0]\n"
    return head + f"\ngoroutine 1 [running]:\n{crash.frame}\n\t(zerog-sim: stack trace not simulated)\n"


class Logrus:
    """The broker's logrus logger as ``log.GetLogger`` configures it."""

    def __init__(self, logger_cfg: dict[str, Any], level: str) -> None:
        self.level = level
        self.format = logger_cfg["format"]
        self.path = logger_cfg["path"]

    def enabled(self, level: str) -> bool:
        """Whether ``level`` passes the configured level."""
        return LEVEL_NUMBERS[level] <= LEVEL_NUMBERS[self.level]

    def log(self, level: str, msg: str, fields: dict[str, str] | None = None) -> None:
        """Emit one entry (stderr, plus the rotatelogs file when ``logger.path`` is set)."""
        if not self.enabled(level):
            return
        if self.format not in ("text", "json"):
            # SetFormatter(nil): the first entry written dereferences a nil Formatter.
            raise BrokerCrash(Crash("sigsegv", bc.GO_NIL_DEREF, frame="github.com/sirupsen/logrus.(*Entry).write(...)"))
        now = time.time()
        fields = fields or {}
        if self.format == "text":
            line = render_logrus_text(level, msg, fields, now)
        else:
            data = {**fields, "level": level, "msg": msg, "time": rfc3339(now)}
            line = bh.go_json(dict(sorted(data.items()))) + "\n"
        _write(sys.stderr, line)
        if self.path:
            self._write_file(line, now)

    def _write_file(self, line: str, now: float) -> None:
        target = self.path + time.strftime(".%Y%m%d%H", time.localtime(now))
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        with open(target, "ab") as handle:
            handle.write(line.encode("utf-8", "surrogateescape"))
        link_dest = os.path.basename(target)
        if os.path.islink(self.path) and os.readlink(self.path) == link_dest:
            return
        tmp = self.path + "_symlink"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(link_dest, tmp)
        os.replace(tmp, self.path)

    def info(self, msg: str, fields: dict[str, str] | None = None) -> None:
        """``logger.Info``."""
        self.log("info", msg, fields)

    def debug(self, msg: str, fields: dict[str, str] | None = None) -> None:
        """``logger.Debugf``."""
        self.log("debug", msg, fields)

    def error(self, msg: str, fields: dict[str, str] | None = None) -> None:
        """``logger.Errorf``."""
        self.log("error", msg, fields)


# ----------------------------------------------------------------------- start-up


class NotSimulatedError(Exception):
    """A valid configuration that the stand-in does not cover."""


def tee_sync_quote(network_env: str, endpoint: str) -> tuple[str, str]:
    """``TeeService.SyncQuote``: returns (provider signer address, quote)."""
    frame = "main.main()"
    if network_env == "hardhat":
        return bc.private_key_to_address(int(bc.MOCK_TEE_KEY, 16)), "mock"
    if network_env == "gcp":
        raise NotSimulatedError("NETWORK=gcp (the GCP TDX attestation client)")
    if not endpoint.startswith(("http://", "https://")) and not os.path.exists(endpoint):
        err = f'Post "http://localhost/prpc/Tappd.DeriveKey": dial unix {endpoint}: connect: no such file or directory'
        raise BrokerCrash(Crash("panic", f"deriving key: failed to derive key from Tappd client: {err}", frame=frame))
    seed = hashlib.sha256(b"zerog-sim tappd key " + os.path.realpath(endpoint).encode()).digest()
    signer = bc.private_key_to_address(int.from_bytes(seed, "big") % (bc.SECP256K1_N - 1) + 1)
    body = bytearray(b"\x04\x00\x02\x00\x81\x00\x00\x00")
    block = seed
    while len(body) < 1024:
        block = hashlib.sha256(block + signer.encode()).digest()
        body += block
    return signer, "0x" + bytes(body[:1024]).hex()


class Startup:
    """One run of ``Main()``; each method is a stage of upstream's start-up."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.network_env = os.environ.get("NETWORK", "")
        self.delay = max(0.0, float(os.environ.get(STARTUP_ENV, "2")))
        self.logger: Logrus | None = None
        self.stop = threading.Event()

    def _sleep(self, fraction: float) -> None:
        time.sleep(self.delay * fraction)

    def prepare(self) -> tuple[bc.StartupPlan, Logrus]:
        """``GetConfig``, ``GetLogger``, image build start, storage and contract clients."""
        data = bc.go_read_file(self.args.config, self.args.config_display)
        holder: dict[str, Logrus] = {}

        def log_wallet(level: str, msg: str, fields: dict[str, str]) -> None:
            holder["logger"].log(level, msg, fields)

        def on_logger(plan: bc.StartupPlan) -> None:
            holder["logger"] = Logrus(plan.config["logger"], plan.log_level)
            self._start_image_build(plan, holder["logger"])

        plan = bc.load_and_check(data, self.args.models_dir, self.network_env, on_logger=on_logger, log=log_wallet)
        return plan, holder["logger"]

    def _start_image_build(self, plan: bc.StartupPlan, logger: Logrus) -> None:
        images = plan.config["images"]
        if images["buildImage"]:
            name = images["executionImageName"]
            if not images["overrideImage"]:
                logger.debug(f"Docker image: {name}, exist: false.")
            logger.debug(f"build image {name}")

    def run_application(self, plan: bc.StartupPlan, logger: Logrus) -> bh.BrokerState:
        """``runApplication`` up to (not including) the listener."""
        logger.info("syncing TEE quote")
        endpoint = os.environ.get("DSTACK_SIMULATOR_ENDPOINT", self.args.tee_socket)
        if "DSTACK_SIMULATOR_ENDPOINT" in os.environ and self.network_env not in ("hardhat", "gcp"):
            _write(sys.stderr, go_log_prefix(time.time()) + f"INFO using simulator endpoint endpoint={endpoint}\n")
        _signer, quote = tee_sync_quote(self.network_env, endpoint)
        self._sleep(0.25)
        service = plan.config["service"]
        logger.info(
            "zerog-sim: on-chain addOrUpdateService simulated (no chain)",
            {
                "servingUrl": service["servingUrl"],
                "pricePerToken": str(service["pricePerToken"]),
                "models": ",".join(sorted(m["name"] for m in plan.models)),
                "provider": plan.contract_wallet.address if plan.contract_wallet else "",
            },
        )
        self._sleep(0.25)
        gin_debug(
            '[WARNING] Running in "debug" mode. Switch to "release" mode in production.\n'
            " - using env:\texport GIN_MODE=release\n - using code:\tgin.SetMode(gin.ReleaseMode)\n\n"
        )
        for method, path, handler in bh.ROUTES:
            gin_debug(f"{method:<6} {path:<25} --> {bh.HANDLER_PREFIX}{handler}-fm (1 handlers)")
        self._sleep(0.5)  # <-imageChan: waiting for execution-test-pytorch:v1
        images = plan.config["images"]
        if images["buildImage"]:
            logger.debug(f"docker image {images['executionImageName']} built successfully!")
        return bh.BrokerState(models=plan.models, quote=quote)

    def serve(self, state: bh.BrokerState, logger: Logrus) -> int:
        """``signal.Notify`` then ``engine.Run()``; returns the exit status."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: self.stop.set())
        logger.info("starting http server...")
        gin_debug(
            "[WARNING] You trusted all proxies, this is NOT safe. We recommend you to set a value.\n"
            "Please check https://pkg.go.dev/github.com/gin-gonic/gin#readme-don-t-trust-all-proxies for details."
        )
        if self.args.port_from == "default":
            gin_debug("Environment variable PORT is undefined. Using port :8080 by default")
        else:
            gin_debug(f"Environment variable PORT={gy.go_quote(str(self.args.port))}")
        gin_debug(f"Listening and serving HTTP on :{self.args.port}\n")
        server = None
        try:
            server = bh.start_server(self.args.bind, self.args.port, bh.Handlers(state), gin_debug)
        except OSError as exc:
            err = f"listen tcp :{self.args.port}: bind: {(exc.strerror or str(exc)).lower()}"
            _write(sys.stderr, f"[GIN-debug] [ERROR] {err}\n")  # Run's deferred debugPrintError
            logger.error(f"HTTP server error: {err}")
            self.stop.set()
        self.stop.wait()
        logger.info("shutting down server...")
        if server is not None:
            server.shutdown()
            server.server_close()
        return 0

    def run(self) -> int:
        """The whole ``Main()``; returns the exit status."""
        try:
            plan, logger = self.prepare()
            self.logger = logger
            state = self.run_application(plan, logger)
            return self.serve(state, logger)
        except BrokerCrash as exc:
            _write(sys.stderr, render_crash(exc.crash, time.time()))
            return exc.crash.exit_code
        except NotSimulatedError as exc:
            return not_simulated(PROGRAM, str(exc))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line (paths default to where upstream looks)."""
    parser = argparse.ArgumentParser(prog="zerog_sim.broker", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config", default=os.environ.get("CONFIG_FILE") or bc.DEFAULT_CONFIG_PATH)
    parser.add_argument(
        "--config-display",
        default=None,
        help="path that messages name instead of --config (the in-container path when --config is its host file)",
    )
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--bind", default="0.0.0.0", help="listen address (upstream listens on all)")
    parser.add_argument("--models-dir", default=bc.DEFAULT_MODELS_DIR)
    parser.add_argument("--tee-socket", default=DEFAULT_TEE_SOCKET)
    args = parser.parse_args(argv)
    if args.port is not None:
        args.port_from = "flag"
    elif os.environ.get("PORT"):
        args.port, args.port_from = int(os.environ["PORT"]), "env"
    else:
        args.port, args.port_from = 8080, "default"
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python3 -m zerog_sim.broker``."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # no handler until signal.Notify, like Go
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return Startup(parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
