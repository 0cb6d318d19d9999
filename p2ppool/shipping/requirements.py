"""Per-job requirements: what a job needs installed, and whether an environment has it (pure).

``Pool(requirements=["numpy>=2", "scipy"])`` states what a job needs.  A worker whose own
environment satisfies every requirement offers for the job as usual; one started with
``--allow-install`` installs them into a cached directory first (see
:mod:`p2ppool.shipping.environments`); any other worker does not offer.

Requirements are PEP 508 strings naming packages of an index (``name[extras] specifier ;
marker``); direct URLs (``name @ https://...``) are refused: a volunteer allows installs
from the index its own pip is configured for, not from addresses a member chooses.
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable, Iterable, List, Sequence, Tuple

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

__all__ = ["MAX_REQUIREMENTS", "environment_key", "normalize", "parse_requirements", "unmet"]

#: Most requirements one job may state (they travel in its board Want, a line of 4 kB).
MAX_REQUIREMENTS = 32
_MAX_LENGTH = 200


def parse_requirements(value: str | Iterable[str]) -> Tuple[str, ...]:
    """Requirements from ``"numpy>=2 scipy"`` (whitespace-separated) or a list of strings.

    Raises:
        ValueError: a string that is no PEP 508 requirement, a direct URL, or too many.
    """
    items = value.split() if isinstance(value, str) else list(value)
    parsed = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"expected requirement strings, got {item!r}")
        text = item.strip()
        if not text:
            continue
        parsed.append(str(_parse(text)))
    if len(parsed) > MAX_REQUIREMENTS:
        raise ValueError(f"at most {MAX_REQUIREMENTS} requirements, got {len(parsed)}")
    return tuple(parsed)


def _parse(text: str) -> Requirement:
    if len(text) > _MAX_LENGTH or not text.isprintable():
        raise ValueError(f"{text[:60]!r} is not a requirement of at most {_MAX_LENGTH} "
                         "printable characters")
    try:
        requirement = Requirement(text)
    except InvalidRequirement as exc:
        raise ValueError(f"{text!r} is not a requirement such as 'numpy>=2': {exc}") from None
    if requirement.url:
        raise ValueError(f"{text!r}: direct URLs are not allowed; name a package of the "
                         "index instead")
    return requirement


def normalize(requirements: Sequence[str]) -> Tuple[str, ...]:
    """A canonical, sorted form: the same set in another order or spelling is equal."""
    out = []
    for text in requirements:
        req = _parse(text)
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        marker = f"; {req.marker}" if req.marker else ""
        out.append(f"{canonicalize_name(req.name)}{extras}{req.specifier}{marker}")
    return tuple(sorted(set(out)))


def environment_key(requirements: Sequence[str], python: str, platform: str,
                    index_settings: Sequence[str] = ()) -> str:
    """The cache key of an environment: what makes two installs interchangeable."""
    material = {"requirements": list(normalize(requirements)), "python": python,
                "platform": platform, "index": list(index_settings)}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


def unmet(requirements: Sequence[str], version_of: Callable[[str], str | None],
          marker_env: dict[str, str] | None = None) -> List[str]:
    """The requirements that an environment does not satisfy.

    ``version_of(name)`` gives the installed version of a distribution, or None when it is
    not installed (``importlib.metadata.version`` with the exception caught).  A requirement
    whose marker does not apply here is met.
    """
    missing = []
    for text in requirements:
        req = _parse(text)
        if req.marker is not None and not req.marker.evaluate(marker_env):
            continue
        version = version_of(req.name)
        if version is None or not req.specifier.contains(version, prereleases=True):
            missing.append(text)
    return missing
