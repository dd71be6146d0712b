"""Where the native stack keeps things: everything under ``GENWIRE_HOME``, nothing in the clone."""

from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from pathlib import Path

import genwire
from genwire.settings import CommonSettings


def repo_root() -> Path:
    """The clone this code runs from (the editable install puts it on ``sys.path``)."""
    return Path(genwire.__file__).resolve().parent.parent


@dataclass(frozen=True)
class StackPaths:
    """Folders of one genwire home; created on demand by whoever writes there."""

    home: Path

    @classmethod
    def from_settings(cls, settings: CommonSettings | None = None) -> StackPaths:
        """Paths for ``settings.home`` (``GENWIRE_HOME``, default ``~/.cache/genwire``), made
        absolute: the components run with the home as their working folder, where a relative
        home would be found again below itself (``rel/h/rel/h/...``)."""
        return cls((settings or CommonSettings()).home.expanduser().resolve())

    @property
    def logs(self) -> Path:
        """One log file per component: ``<home>/logs/<name>.log``."""
        return self.home / "logs"

    @property
    def run(self) -> Path:
        """Pid files of what this home's stack started, and its lock."""
        return self.home / "run"

    @property
    def downloads(self) -> Path:
        """Downloaded archives and wheels, kept for the next install."""
        return self.home / "downloads"

    @property
    def conf(self) -> Path:
        """Rendered configuration files."""
        return self.home / "conf"

    @property
    def data(self) -> Path:
        """Persistent data of the servers (Kafka log dirs, Badger, Redis dump)."""
        return self.home / "data"

    @property
    def opt(self) -> Path:
        """Installed third-party software (Kafka jars, Triton, Jaeger), one folder per version."""
        return self.home / "opt"

    @property
    def venv(self) -> Path:
        """The virtualenv that ``deploy/native/bootstrap.sh`` creates."""
        return self.home / "venv"

    @property
    def deploy(self) -> Path:
        """Configuration templates shipped in the clone."""
        return repo_root() / "deploy" / "native"


def site_packages() -> Path:
    """The running interpreter's site-packages (the venv's): what Triton's Python stub imports."""
    return Path(sysconfig.get_paths()["purelib"])
