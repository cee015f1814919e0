"""Named sets of framework pins, each made once into a cached virtual environment.

A cell's worker imports numpy, bench.core, the runner and one backend, and nothing else, so an
environment holds the pins and numpy only; the harness reaches it through PYTHONPATH. A folder
under the root is only ever a finished environment: it is made beside the others under a
`.building-` name and renamed into place once pip succeeded and its python imports numpy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from bench.core.errors import BenchError, one_line

ENV_DIR_ENV = "MLP_BENCH_ENV_DIR"
DEFAULT_ENV_ROOT = Path("~/.cache/mlp-bench/envs")
RECORD_NAME = "environment.json"
# Part of every key: a change to how environments are made (or what they hold) makes new ones
# instead of reusing folders made the old way.
FORMAT_VERSION = 1
KEY_LENGTH = 12
_BUILDING_PREFIX = ".building-"
_SLUG_LENGTH = 48

# The distributions (PEP 503 names) that install each backend.
_FRAMEWORK_OF = {
    "tensorflow": "tensorflow",
    "tensorflow-cpu": "tensorflow",
    "tf-nightly": "tensorflow",
    "torch": "torch",
    "jax": "jax",
    "jaxlib": "jax",
}
# A pin goes on from a comma when the next piece starts with a version operator: in
# "jax>=0.9,<0.11,jaxlib==0.10.2" the "<0.11" belongs to jax.
_SPECIFIER_START = re.compile(r"\s*(==|!=|<=|>=|~=|<|>)")
_NO_MATCH = re.compile(r"No matching distribution found for (\S+)")
_NO_RELEASES = re.compile(r"satisfies the requirement (\S+) \(from versions: none\)")
# The harness's own PYTHONPATH would put its site-packages before the environment's.
_NOT_PASSED = ("PYTHONPATH", "PYTHONHOME")
_CONFLICT = "The conflict is caused by:"
_PIP_ERROR_LENGTH = 300

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Environment:
    """A made environment: its pins, its folder and what making it cost."""

    name: str  # the user's name, or the pins joined with " " (e.g. "jax==0.10.2")
    pins: tuple[str, ...]  # normalised requirement strings, sorted
    path: Path  # the venv's folder
    made_s: float  # seconds it took to make, once (read back from its environment.json)
    size_bytes: int  # disk use (measured when made)

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def key(self) -> str:
        """The 12 hex digits that end the folder's name (pins, Python version, format)."""
        return self.path.name[-KEY_LENGTH:]

    def tags(self) -> dict[str, str]:
        return {"env.name": self.name, "env.pins": "; ".join(self.pins), "env.key": self.key}


def env_root(root: Path | None = None) -> Path:
    """The folder of the environments: the argument, else $MLP_BENCH_ENV_DIR, else
    ~/.cache/mlp-bench/envs."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(ENV_DIR_ENV)
    return Path(env).expanduser() if env else DEFAULT_ENV_ROOT.expanduser()


def parse_pins(text: str) -> tuple[str, ...]:
    """Pins as typed (PIN[,PIN...]), or the path of a requirements or constraints file (one pin
    a line, `#` comments), as normalised, sorted requirement strings."""
    path = Path(text).expanduser()
    if text.strip() and path.is_file():
        return _normalise_all(_file_pins(path), source=str(path))
    return _normalise_all(_split_pins(text), source=text)


def frameworks_of(pins: Iterable[str]) -> set[str]:
    """The backends the pins install (tensorflow, torch, jax); empty for, say, numpy alone."""
    names = {canonicalize_name(_requirement(pin).name) for pin in pins}
    return {_FRAMEWORK_OF[name] for name in names if name in _FRAMEWORK_OF}


def environment_record(environment: Environment) -> dict[str, object]:
    """What an invocation's plan records of its environment, so a resume runs in it again."""
    return {"name": environment.name, "pins": list(environment.pins)}


def recorded_environment(record: object) -> Environment | None:
    """The environment a recorded plan names (made again if no longer cached); None: none."""
    if not isinstance(record, dict):
        return None
    return ensure(tuple(record["pins"]), name=str(record["name"]))


def ensure(pins: tuple[str, ...], name: str | None = None, root: Path | None = None) -> Environment:
    """The environment of these pins, made now unless a folder under the root already holds it
    (then returned at once, without pip)."""
    pins = _normalise_all(pins, source=" ".join(pins))
    name = name or " ".join(pins)
    folder = env_root(root)
    key = environment_key(pins)
    found = _find(folder, key)
    if found is not None:
        return _read(found, name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(
            f"cannot make the environments folder {folder} ({exc.strerror}); "
            f"name a writable one with {ENV_DIR_ENV}"
        ) from None
    _remove_abandoned(folder)
    return _make(pins, name, folder / f"{_slug(name)}-{key}")


def environment_key(pins: tuple[str, ...]) -> str:
    """sha256 over the sorted pins, this Python's version and the format, 12 hex digits."""
    python = ".".join(str(part) for part in sys.version_info[:3])
    text = json.dumps({"format": FORMAT_VERSION, "python": python, "pins": sorted(pins)})
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


def list_environments(root: Path | None = None) -> list[Environment]:
    """Every finished environment under the root, by name."""
    folder = env_root(root)
    if not folder.is_dir():
        return []
    found = [
        _read(path)
        for path in sorted(folder.iterdir())
        if not path.name.startswith(".") and (path / RECORD_NAME).is_file()
    ]
    return sorted(found, key=lambda environment: environment.name)


# --- pins -------------------------------------------------------------------------------------


def _split_pins(text: str) -> list[str]:
    pins: list[str] = []
    for piece in text.split(","):
        if pins and pins[-1].strip() and _SPECIFIER_START.match(piece):
            pins[-1] += "," + piece
        else:
            pins.append(piece)
    return pins


def _file_pins(path: Path) -> list[str]:
    """The pins of a requirements file: pip's options (-r, --index-url, ...) are refused, since
    an environment is made with this machine's pip configuration only."""
    pins = []
    for line in path.read_text().splitlines():
        pin = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if pin.startswith("-"):
            raise BenchError(
                f"{path}: {pin!r} is a pip option; list only pins (NAME==VERSION), one a line"
            )
        if pin:
            pins.append(pin)
    return pins


def _normalise_all(pins: Iterable[str], source: str) -> tuple[str, ...]:
    pins = list(pins)
    if not pins or all(not pin.strip() for pin in pins):
        raise BenchError("no pins given; name at least one, e.g. jax==0.10.2")
    normalised = [_normalise(pin, source) for pin in pins]
    names = [canonicalize_name(_requirement(pin).name) for pin in normalised]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise BenchError(
            f"{', '.join(twice)} pinned more than once in {source!r}; keep one pin per package"
        )
    return tuple(sorted(normalised))


def _normalise(pin: str, source: str) -> str:
    if not pin.strip():
        raise BenchError(
            f"an empty pin in {source!r}; separate pins with single commas, e.g. "
            "jax==0.10.2,jaxlib==0.10.2"
        )
    try:
        requirement = Requirement(pin.strip())
    except InvalidRequirement as exc:
        reason = str(exc).splitlines()[0]
        raise BenchError(
            f"pin {pin.strip()!r} is not a requirement ({reason}); write NAME==VERSION, "
            "e.g. jax==0.10.2"
        ) from None
    text: str = canonicalize_name(requirement.name)
    if requirement.extras:
        text += "[" + ",".join(sorted(requirement.extras)) + "]"
    if requirement.url:
        text += f" @ {requirement.url}"
    text += str(requirement.specifier)
    if requirement.marker is not None:
        text += f"; {requirement.marker}"
    return text


def _requirement(pin: str) -> Requirement:
    try:
        return Requirement(pin)
    except InvalidRequirement as exc:
        raise BenchError(
            f"pin {pin!r} is not a requirement; write NAME==VERSION ({one_line(exc)})"
        ) from None


# --- folders ----------------------------------------------------------------------------------


def _slug(name: str) -> str:
    """A short, filesystem-safe form of the name ("jax==0.10.2 jaxlib==0.10.2" ->
    "jax-0.10.2-jaxlib-0.10.2")."""
    slug = re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-.")
    return slug[:_SLUG_LENGTH].rstrip("-.") or "env"


def _find(folder: Path, key: str) -> Path | None:
    """The finished folder of this key, whatever name it was made under."""
    if not folder.is_dir():
        return None
    for path in folder.glob(f"*-{key}"):
        if not path.name.startswith(".") and (path / RECORD_NAME).is_file():
            return path
    return None


def _read(path: Path, name: str | None = None) -> Environment:
    try:
        record = json.loads((path / RECORD_NAME).read_text())
        return Environment(
            name=name or record["name"],
            pins=tuple(record["pins"]),
            path=path,
            made_s=float(record["made_s"]),
            size_bytes=int(record["size_bytes"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BenchError(
            f"environment {path} is damaged ({one_line(exc)}); delete that folder and it is "
            "made again"
        ) from None


def _remove_abandoned(folder: Path) -> None:
    """Building folders whose process is gone (killed with SIGKILL, or the machine stopped)."""
    for path in folder.glob(f"{_BUILDING_PREFIX}*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _disk_use(path: Path) -> int:
    """Bytes of disk the folder's files take (hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for file in _walk(path):
        stat = file.lstat()
        if (stat.st_dev, stat.st_ino) not in seen:
            seen.add((stat.st_dev, stat.st_ino))
            total += stat.st_blocks * 512
    return total


def _walk(path: Path) -> Iterator[Path]:
    for directory, _subdirs, files in os.walk(path):
        for file in files:
            yield Path(directory, file)


# --- making -----------------------------------------------------------------------------------


def _make(pins: tuple[str, ...], name: str, final: Path) -> Environment:
    """Make the environment in a building folder and rename it into place; whatever fails (an
    interrupt included) removes the building folder."""
    building = final.parent / f"{_BUILDING_PREFIX}{final.name[-KEY_LENGTH:]}-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    logger.info("making environment %s in %s", " ".join(pins), final)
    started = time.monotonic()
    try:
        _create_venv(building)
        _pip_install(building, pins)
        _check_numpy(building, pins)
        freeze = _pip(building, "freeze").stdout.splitlines()
        _point_scripts_at(building, final)
        record = {
            "name": name,
            "pins": list(pins),
            "python": ".".join(str(part) for part in sys.version_info[:3]),
            "made_s": round(time.monotonic() - started, 3),
            "size_bytes": _disk_use(building),
            "freeze": freeze,
        }
        (building / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")
        _move_into_place(building, final)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    environment = _read(final, name)
    logger.info(
        "made environment %s in %.0f s, %.0f MB",
        environment.name,
        environment.made_s,
        environment.size_bytes / 1e6,
    )
    return environment


def _move_into_place(building: Path, final: Path) -> None:
    """Rename the finished folder into place; a process that made the same environment at the
    same time and renamed first wins, and this one's copy is discarded."""
    try:
        os.rename(building, final)
    except OSError:
        if not (final / RECORD_NAME).is_file():
            raise
        shutil.rmtree(building, ignore_errors=True)


def _create_venv(building: Path) -> None:
    # The interpreter running the harness: its version is part of the key.
    _run([sys.executable, "-m", "venv", str(building)], what="python -m venv")


def _pip_install(building: Path, pins: tuple[str, ...]) -> None:
    """pip, with this machine's own configuration (indexes, mirrors, constraints), installs
    numpy and the pins."""
    result = _pip(building, "install", "--no-input", "numpy", *pins, check=False)
    if result.returncode != 0:
        raise BenchError(_pip_refusal(pins, result.stdout + result.stderr))


def _check_numpy(building: Path, pins: tuple[str, ...]) -> None:
    result = _run([str(building / "bin" / "python"), "-c", "import numpy"], check=False)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(
            f"{' '.join(pins)} installs, but its python cannot import numpy ({last}); "
            "pin a numpy the other pins accept, e.g. numpy<2"
        )


def _pip(building: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(
        [str(building / "bin" / "python"), "-m", "pip", *args], what=f"pip {args[0]}", check=check
    )


def _run(
    command: list[str], what: str = "", check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in _NOT_PASSED}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if check and result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"{what} failed making an environment ({one_line(last)})")
    return result


def _pip_refusal(pins: tuple[str, ...], output: str) -> str:
    """pip's reason, on one line: a version that does not exist is named as such; otherwise
    pip's own first ERROR line, shortened."""
    missing = _NO_MATCH.search(output)
    if missing:
        wanted = missing.group(1)
        package = _package_of(wanted)
        if _NO_RELEASES.search(output):
            return (
                f"{wanted} cannot be installed here: no package {package} is found on the "
                "indexes pip is configured with; check the name's spelling"
            )
        return (
            f"{wanted} cannot be installed here: no release of {package} matches; "
            f"pick a released version (`pip index versions {package}`)"
        )
    errors = [
        line.removeprefix("ERROR:").strip()
        for line in output.splitlines()
        if line.startswith("ERROR:") and "require a different python version" not in line
    ]
    reason = errors[0] if errors else (output.strip().splitlines() or ["no output"])[-1]
    reason = one_line(" ".join([reason, *_conflict_causes(output)]))
    if len(reason) > _PIP_ERROR_LENGTH:
        reason = reason[: _PIP_ERROR_LENGTH - 3] + "..."
    return f"{' '.join(pins)} cannot be installed here: pip says: {reason}; change the pins"


def _conflict_causes(output: str) -> list[str]:
    """The lines under pip's "The conflict is caused by:" (which pin wants what)."""
    lines = output.splitlines()
    if _CONFLICT not in lines:
        return []
    causes = []
    for line in lines[lines.index(_CONFLICT) + 1 :]:
        if not line.startswith(" "):
            break
        causes.append(line.strip() + ";")
    return ["(" + " ".join(causes).rstrip(";") + ")"] if causes else []


def _package_of(requirement: str) -> str:
    try:
        return canonicalize_name(Requirement(requirement).name)
    except InvalidRequirement:
        return requirement


def _point_scripts_at(building: Path, final: Path) -> None:
    """The venv's scripts (pip, activate) name the folder they were made in; name the final
    one, so that they work once renamed. Its python is a link and finds its venv wherever."""
    old, new = str(building).encode(), str(final).encode()
    for script in (building / "bin").iterdir():
        if script.is_symlink() or not script.is_file():
            continue
        content = script.read_bytes()
        if old in content:
            script.write_bytes(content.replace(old, new))
